"""jaxdiff.convert against diffusers' own outputs (tests/data, made by tests/make_unet_reference.py)."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import relative_error
from safetensors.numpy import load_file

from jaxdiff.convert import (
  load_converted,
  load_diffusers_unet,
  unet_kwargs_from_diffusers_config,
)
from jaxdiff.convert.__main__ import main
from jaxdiff.convert.diffusers_unet import assign_diffusers_weights
from jaxdiff.models import abstract_unet

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# config.json of google/ddpm-cifar10-32 as first published (diffusers 0.0.4): no attention_head_dim,
# so diffusers' default of 8 applies.
DDPM_CIFAR10_CONFIG = {
  "_class_name": "UNet2DModel",
  "_diffusers_version": "0.0.4",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 256, 256],
  "center_input_sample": False,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": False,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 32,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

_apply = nnx.jit(lambda model, x, t, y: model(x, t, y))


def _reference(name: str) -> dict:
  with np.load(os.path.join(DATA, f"unet_{name}_io.npz")) as f:
    return dict(f)


def _run(model, ref: dict) -> np.ndarray:
  model.eval()
  y = jnp.asarray(ref["y"]) if "y" in ref else None
  return np.asarray(_apply(model, jnp.asarray(ref["x"]), jnp.asarray(ref["t"]), y))


@pytest.mark.parametrize("name", ["ddpm", "adm"])
def test_matches_diffusers(name):
  ref = _reference(name)
  out = _run(load_diffusers_unet(os.path.join(DATA, f"unet_{name}")), ref)
  chex.assert_shape(out, ref["out"].shape)
  # Both sides compute in float32 from identical weights, so only the summation order of convs,
  # matmuls and norms differs (~1e-6 measured); a mis-mapped tensor gives errors of order 1.
  assert relative_error(out, ref["out"]) <= 1e-4


def test_bfloat16_compute_stays_close_to_diffusers():
  ref = _reference("adm")
  out = _run(load_diffusers_unet(os.path.join(DATA, "unet_adm"), dtype=jnp.bfloat16), ref)
  # bfloat16 keeps 8 mantissa bits (~4e-3 per rounding), accumulated over ~20 layers.
  assert relative_error(out, ref["out"]) <= 5e-2


def test_ddpm_reference_uses_the_legacy_attention_names():
  names = load_file(os.path.join(DATA, "unet_ddpm", "diffusion_pytorch_model.safetensors"))
  assert any(n.endswith(".proj_attn.weight") for n in names)
  assert not any(".to_q." in n for n in names)


def test_google_ddpm_cifar10_config_gives_the_published_parameter_count():
  kwargs = unet_kwargs_from_diffusers_config(DDPM_CIFAR10_CONFIG)
  assert kwargs["attention_resolutions"] == [16]
  model = abstract_unet(**kwargs)
  assert (
    sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == 35_746_307
  )


def test_cli_round_trip(tmp_path):
  src, dst = os.path.join(DATA, "unet_adm"), tmp_path / "converted"
  done = subprocess.run(
    [sys.executable, "-m", "jaxdiff.convert", "diffusers-unet", src, str(dst)],
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr
  ref = _reference("adm")
  np.testing.assert_array_equal(_run(load_converted(dst), ref), _run(load_diffusers_unet(src), ref))

  # A second conversion into the same folder is refused and leaves the first intact.
  before = sorted(os.listdir(dst))
  assert main(["diffusers-unet", src, str(dst)]) == 1
  assert sorted(os.listdir(dst)) == before


@pytest.mark.parametrize(
  "change, match",
  [
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"act_fn": "gelu"}, "act_fn"),
    ({"center_input_sample": True}, "center_input_sample"),
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"resnet_time_scale_shift": "scale_shift"}, "attn_norm_num_groups"),
    (
      {
        "down_block_types": [
          "DownBlock2D",
          "CrossAttnDownBlock2D",
          "DownBlock2D",
          "DownBlock2D",
        ]
      },
      "block types",
    ),
    ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}, "mirror"),
    ({"block_out_channels": [128, 192, 256, 256]}, "multiples"),
    ({"sample_size": None}, "sample_size"),
    ({"cross_attention_dim": 768}, "cross_attention_dim"),
  ],
)
def test_unsupported_config_is_one_clear_error(change, match):
  with pytest.raises(ValueError, match=match):
    unet_kwargs_from_diffusers_config({**DDPM_CIFAR10_CONFIG, **change})


def test_cli_reports_an_unsupported_config(tmp_path, capsys):
  src = tmp_path / "src"
  src.mkdir()
  (src / "config.json").write_text(json.dumps({**DDPM_CIFAR10_CONFIG, "act_fn": "gelu"}))
  (src / "diffusion_pytorch_model.safetensors").write_bytes(b"")
  assert main(["diffusers-unet", str(src), str(tmp_path / "dst")]) != 0
  err = capsys.readouterr().err
  assert err.startswith("error: Unsupported act_fn") and err.count("\n") == 1
  assert not (tmp_path / "dst").exists()


def test_every_tensor_must_be_used_and_every_param_assigned():
  with open(os.path.join(DATA, "unet_ddpm", "config.json")) as f:
    model = abstract_unet(**unet_kwargs_from_diffusers_config(json.load(f)))
  tensors = load_file(os.path.join(DATA, "unet_ddpm", "diffusion_pytorch_model.safetensors"))
  tensors["extra.weight"] = tensors.pop("conv_out.bias")
  with pytest.raises(
    ValueError, match=r"missing tensors \[conv_out.bias\], unused tensors \[extra.weight\]"
  ):
    assign_diffusers_weights(model, tensors)

  tensors["conv_out.bias"] = np.zeros(7, np.float32)
  del tensors["extra.weight"]
  with pytest.raises(ValueError, match="conv_out.bias has shape"):
    assign_diffusers_weights(model, tensors)
