"""DiT import: diffusers' DiTTransformer2DModel against diffusers' own outputs (tests/data, made by
tests/make_diffusers_dit_reference.py), original facebookresearch/DiT state dicts against the
original's outputs (tests/data/dit_reference.npz, tests/make_dit_reference.py), the size inference,
the command line and its refusals."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import types

import fake_torch
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import relative_error
from safetensors.numpy import load_file, save_file

from jaxdiff.convert import (
  dit_from_state_dict,
  dit_kwargs_from_diffusers_config,
  dit_kwargs_from_state_dict,
  load_converted,
  load_diffusers_dit,
  load_dit_checkpoint,
)
from jaxdiff.convert.__main__ import main
from jaxdiff.convert.diffusers_dit import original_state_dict
from jaxdiff.convert.dit import abstract_dit, load_dit_state_dict, original_name
from jaxdiff.models import ARCHITECTURES
from jaxdiff.models.dit import DIT_PRESETS, DiT

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TINY = os.path.join(DATA, "diffusers_dit_tiny")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# Both sides compute in float32 from identical weights: what differs is summation order and the
# float32 rounding of the timestep angles t·ω, largest at t=999 (~3e-6 measured). A mis-mapped
# tensor gives errors of order 1, and each of diffusers' two differences from the original moves the
# output by >= 1e-3 (printed by the reference script; test_each_diffusers_difference_shows).
TOLERANCE = 1e-5


def _reference(name: str) -> dict:
  with np.load(os.path.join(DATA, name)) as f:
    return {k: f[k] for k in f.files}


def _config() -> dict:
  with open(os.path.join(TINY, "config.json")) as f:
    return json.load(f)


def _run(model, ref, labels=True):
  y = jnp.asarray(ref["y"]) if labels else None
  return np.asarray(model(jnp.asarray(ref["x"]), jnp.asarray(ref["t"]), y))


@pytest.fixture(scope="module")
def diffusers_model():
  return load_diffusers_dit(TINY)


def test_diffusers_dit_matches_diffusers(diffusers_model):
  ref = _reference("diffusers_dit_reference.npz")
  assert list(ref["y"]) == [0, 3, 9, 10]  # real labels and the null class in one batch
  assert relative_error(_run(diffusers_model, ref), ref["out"]) <= TOLERANCE
  # no labels: every row takes the null class, as diffusers' label 10
  assert relative_error(_run(diffusers_model, ref, labels=False), ref["out_null"]) <= TOLERANCE


@pytest.mark.parametrize("undo", [{"timestep_freq_shift": 0.0}, {"mlp_norm_eps": 1e-6}])
def test_each_diffusers_difference_shows(undo):
  """The reference data tells each of diffusers' choices from the original's, so the parity test
  above checks that the converter honours both."""
  kwargs = {**dit_kwargs_from_diffusers_config(_config()), **undo}
  model = load_dit_state_dict(
    abstract_dit(**kwargs), original_state_dict(load_file(f"{TINY}/{WEIGHTS}"))
  )
  ref = _reference("diffusers_dit_reference.npz")
  assert relative_error(_run(model, ref), ref["out"]) > 50 * TOLERANCE


def test_diffusers_config_gives_the_dit_kwargs():
  expected = dict(
    in_channels=4, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
    mlp_ratio=4.0, num_classes=10, learn_sigma=True, timestep_freq_shift=1.0, mlp_norm_eps=1e-2,
  )  # fmt: skip
  assert dit_kwargs_from_diffusers_config(_config()) == expected
  # facebook/DiT-XL-2-256's class before diffusers renamed it; diffusers ignores its other keys
  old_keys = {
    "cross_attention_dim": None,
    "num_vector_embeds": None,
    "use_linear_projection": False,
  }
  legacy = {**_config(), "_class_name": "Transformer2DModel", **old_keys}
  assert dit_kwargs_from_diffusers_config(legacy) == expected


@pytest.mark.parametrize(
  "change, match",
  [
    ({"_class_name": "UNet2DModel"}, "Only DiTTransformer2DModel"),
    (
      {"_class_name": "Transformer2DModel", "norm_type": "layer_norm"},
      "Only DiTTransformer2DModel",
    ),
    ({"activation_fn": "geglu"}, "activation_fn"),
    ({"norm_elementwise_affine": True}, "norm_elementwise_affine"),
    ({"attention_bias": False}, "attention_bias"),
    ({"out_channels": 5}, "out_channels"),
    ({"caption_channels": 4096}, "caption_channels"),
  ],
)
def test_unsupported_diffusers_config_is_one_clear_error(change, match):
  with pytest.raises(ValueError, match=match):
    dit_kwargs_from_diffusers_config({**_config(), **change})


def _original_tensors() -> dict:
  """dit_reference.npz's tensors as the original's state dict holds them (pos_embed (1, T, D))."""
  ref = _reference("dit_reference.npz")
  tensors = {k.removeprefix("param/"): v for k, v in ref.items() if k.startswith("param/")}
  return {**tensors, "pos_embed": ref["pos_embed"][None]}


def test_original_state_dict_sizes_and_outputs():
  tensors = _original_tensors()
  assert dit_kwargs_from_state_dict(tensors, num_heads=4) == dict(
    in_channels=4, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4,
    mlp_ratio=4.0, num_classes=10, learn_sigma=True,
  )  # fmt: skip
  ref = _reference("dit_reference.npz")
  # the original in float32 from the same weights: summation order only (test_dit.py: ~1e-6)
  assert (
    relative_error(_run(dit_from_state_dict(tensors, num_heads=4), ref), ref["out"]) <= TOLERANCE
  )
  with pytest.raises(ValueError, match="No DiT preset has hidden size 32: pass num_heads"):
    dit_kwargs_from_state_dict(tensors)


def _original_shapes(model: DiT, grid: int) -> dict:
  """The original's state dict of `model` as shapes only: its names, PyTorch layouts, pos_embed."""
  shapes = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape = variable.shape
    if str(path[-1]) == "kernel":  # HWIO -> OIHW, (in, out) -> (out, in)
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    shapes[original_name(path)] = jax.ShapeDtypeStruct(shape, jnp.float32)
  shapes["pos_embed"] = jax.ShapeDtypeStruct((1, grid * grid, model.hidden_size), jnp.float32)
  return shapes


@pytest.mark.parametrize(
  "size, patch, image", [("S", 2, 32), ("B", 4, 32), ("L", 8, 64), ("XL", 2, 32)]
)
def test_preset_sizes_are_read_from_the_shapes(size, patch, image):
  kwargs = dict(
    in_channels=4, image_size=image, patch_size=patch, num_classes=1000, learn_sigma=True,
    mlp_ratio=4.0, **DIT_PRESETS[size],
  )  # fmt: skip
  model = nnx.eval_shape(lambda: DiT(**kwargs, rngs=nnx.Rngs(0)))
  assert dit_kwargs_from_state_dict(_original_shapes(model, image // patch)) == kwargs


def test_not_a_dit_state_dict_is_one_clear_error():
  with pytest.raises(ValueError, match="x_embedder.proj.weight is missing: this is not a"):
    dit_kwargs_from_state_dict({"conv_in.weight": np.zeros((8, 3, 3, 3))})
  with pytest.raises(ValueError, match="pos_embed has 15 tokens"):
    dit_kwargs_from_state_dict({**_original_tensors(), "pos_embed": np.zeros((1, 15, 32))})


def _fake_torch(checkpoint):
  """A stand-in `torch` module whose `load` returns `checkpoint` (the suite has no PyTorch; the
  real torch.load path was checked against the original with tests/make_dit_reference.py's env)."""
  calls = []

  def load(path, *, map_location, weights_only):
    calls.append(weights_only)
    return checkpoint

  serialization = types.SimpleNamespace(safe_globals=lambda allowed: contextlib.nullcontext())
  return fake_torch.module(load, serialization=serialization), calls


def test_dit_checkpoint_takes_the_ema_weights_and_loads_only_tensors(tmp_path, monkeypatch):
  path = tmp_path / "ckpt.pt"
  path.write_bytes(b"")  # torch.load is faked: only its existence is checked
  tensors = {k: fake_torch.FakeTensor(v) for k, v in _original_tensors().items()}
  # train.py's checkpoint layout: the EMA weights are the ones to take, "model" is the raw one
  raw = {k: fake_torch.FakeTensor(np.zeros_like(v.array)) for k, v in tensors.items()}
  torch, calls = _fake_torch({"model": raw, "ema": tensors, "opt": {}, "args": None})
  monkeypatch.setitem(sys.modules, "torch", torch)
  ref = _reference("dit_reference.npz")
  assert relative_error(_run(load_dit_checkpoint(path, num_heads=4), ref), ref["out"]) <= TOLERANCE
  assert calls == [True]  # weights_only: no pickled code ever runs
  # a checkpoint whose values are not all tensors is refused in one sentence
  torch, _ = _fake_torch({"weight": fake_torch.FakeTensor(np.zeros(3)), "step": 5})
  monkeypatch.setitem(sys.modules, "torch", torch)
  with pytest.raises(ValueError, match="holds no state dict of tensors"):
    load_dit_checkpoint(path)


def test_cli_round_trip(tmp_path, diffusers_model):
  dst = tmp_path / "converted"
  done = subprocess.run(
    [sys.executable, "-m", "jaxdiff.convert", "diffusers-dit", TINY, str(dst)],
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr
  with open(dst / "network_config.json") as f:
    assert json.load(f)["arch"] == "dit"
  model = load_converted(dst)
  assert isinstance(model, ARCHITECTURES["dit"].module)  # rebuilt through the network table
  ref = _reference("diffusers_dit_reference.npz")
  np.testing.assert_array_equal(_run(model, ref), _run(diffusers_model, ref))
  assert relative_error(_run(model, ref), ref["out"]) <= TOLERANCE

  # A second conversion into the same folder is refused and leaves the first intact.
  before = sorted(os.listdir(dst))
  for command, src in [("diffusers-dit", TINY), ("dit-checkpoint", str(tmp_path / "x.pt"))]:
    assert main([command, src, str(dst)]) == 1
  assert sorted(os.listdir(dst)) == before


def _untied_folder(tmp_path) -> str:
  src = tmp_path / "untied"
  shutil.copytree(TINY, src)
  tensors = load_file(src / WEIGHTS)
  tensors["transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"] += 1
  save_file(tensors, src / WEIGHTS)
  return str(src)


def _garbage_pt(tmp_path) -> str:
  (tmp_path / "x.pt").write_bytes(b"not a pickle")
  return str(tmp_path / "x.pt")


@pytest.mark.parametrize(
  "command, make_src, message",
  [
    ("diffusers-dit", lambda tmp: os.path.join(DATA, "unet_ddpm"), "Only DiTTransformer2DModel"),
    ("diffusers-dit", _untied_folder, "differs from block 0's copy"),
    # without torch: "needs PyTorch"; with it: "not a readable PyTorch checkpoint"
    ("dit-checkpoint", _garbage_pt, "PyTorch"),
    ("dit-checkpoint", lambda tmp: str(tmp / "missing.pt"), "does not exist"),
  ],
)
def test_cli_refuses_bad_input_in_one_sentence(tmp_path, capsys, command, make_src, message):
  dst = tmp_path / "dst"
  assert main([command, make_src(tmp_path), str(dst)]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and message in err
  assert not dst.exists()
