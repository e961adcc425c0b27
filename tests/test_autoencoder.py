"""The KL-autoencoder and its diffusers import against diffusers' AutoencoderKL (tests/data, made
by tests/make_diffusers_vae_reference.py), plus the posterior's closed forms and the shapes."""

import json
import os
import re
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import relative_error
from safetensors.numpy import load_file, save_file

from jaxdiff import config as config_lib
from jaxdiff import models
from jaxdiff.convert import load_converted, load_diffusers_vae, vae_kwargs_from_diffusers_config
from jaxdiff.convert.__main__ import main
from jaxdiff.models import AutoencoderConfig, AutoencoderKL, NetworkSpec

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
VAE = os.path.join(DATA, "vae_kl")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# Both sides compute in float32 from identical (float16-rounded) weights, so only the summation
# order of convs, matmuls and norms differs (~6e-7 measured); a mis-mapped tensor gives errors of
# order 1, a wrong epsilon or padding ~1e-3.
TOLERANCE = 1e-5

_encode = nnx.jit(lambda model, x: model.encode(x))
_decode = nnx.jit(lambda model, z: model.decode(z))


@pytest.fixture(scope="module")
def reference():
  with np.load(os.path.join(DATA, "diffusers_vae_reference.npz")) as f:
    return dict(f)


def _assert_matches(model, ref):
  mean, logvar = _encode(model, jnp.asarray(ref["x"]))
  decoded = _decode(model, jnp.asarray(ref["z"]))
  for ours, theirs in [(mean, "mean"), (logvar, "logvar"), (decoded, "decoded")]:
    chex.assert_shape(ours, ref[theirs].shape)
    assert relative_error(ours, ref[theirs]) <= TOLERANCE, theirs


def test_matches_diffusers(reference):
  model = load_diffusers_vae(VAE)
  _assert_matches(model, reference)
  assert model.scaling_factor == 0.13025 and model.shift_factor == 0.0


def test_legacy_attention_names(tmp_path, reference):
  legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  pattern = re.compile(r"(.*\.attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)")
  renamed = {}
  for name, value in load_file(os.path.join(VAE, WEIGHTS)).items():
    m = pattern.fullmatch(name)
    renamed[f"{m[1]}.{legacy[m[2]]}.{m[3]}" if m else name] = value
  assert sum(n.endswith(".proj_attn.weight") for n in renamed) == 2  # encoder and decoder
  shutil.copy(os.path.join(VAE, "config.json"), tmp_path)
  save_file(renamed, str(tmp_path / WEIGHTS))
  _assert_matches(load_diffusers_vae(tmp_path), reference)


def test_posterior_is_clamped_and_sampled_in_closed_form(reference):
  model = load_diffusers_vae(VAE)
  # A zero quant_conv makes the posterior its bias: mean, then log-variance, per latent channel.
  bias = np.array([0.5, -1.0, 2.0, 0.0, -100.0, -30.5, 1.0, 25.0], np.float32)
  model.quant_conv.kernel[...] = jnp.zeros_like(model.quant_conv.kernel[...])
  model.quant_conv.bias[...] = jnp.asarray(bias)
  x = jnp.asarray(reference["x"])
  mean, logvar = model.encode(x)
  np.testing.assert_array_equal(mean, np.broadcast_to(bias[:4], mean.shape))
  np.testing.assert_array_equal(logvar, np.broadcast_to([-30.0, -30.0, 1.0, 20.0], logvar.shape))

  key = jax.random.key(3)
  noise = jax.random.normal(key, mean.shape)
  expected_z = bias[:4] + np.exp(0.5 * np.array([-30.0, -30.0, 1.0, 20.0])) * np.asarray(noise)
  out, _, _ = model(x, noise=noise)
  # exp in float64 here, float32 there: z agrees to float32 rounding, which the decoder keeps.
  assert relative_error(out, model.decode(jnp.asarray(expected_z, jnp.float32))) <= 1e-6
  np.testing.assert_array_equal(model(x, key=key)[0], out)  # key= draws exactly that noise
  np.testing.assert_array_equal(model(x)[0], model.decode(mean))  # no draw: the mode
  with pytest.raises(ValueError, match="key or noise"):
    model(x, key=key, noise=noise)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_downsampling_factor(levels):
  model = nnx.eval_shape(
    lambda: AutoencoderKL(
      in_channels=1,
      block_out_channels=(8,) * levels,
      latent_channels=3,
      norm_num_groups=4,
      use_quant_conv=levels % 2 == 0,
      rngs=nnx.Rngs(0),
    )
  )
  f = 2 ** (levels - 1)
  assert model.downsampling_factor == f
  x = jax.ShapeDtypeStruct((2, 16, 24, 1), jnp.float32)
  mean, logvar = nnx.eval_shape(lambda m, x: m.encode(x), model, x)
  assert mean.shape == logvar.shape == (2, 16 // f, 24 // f, 3)
  decoded = nnx.eval_shape(lambda m, z: m.decode(z), model, mean)
  assert decoded.shape == (2, 16, 24, 1) and decoded.dtype == jnp.float32
  if levels > 1:
    with pytest.raises(ValueError, match=f"multiples of {f}"):
      model.encode(jnp.zeros((1, 16 + f // 2, 16, 1)))


def test_network_table_builds_it_from_a_run_config():
  config = config_lib.default_config(arch="autoencoder")
  spec = NetworkSpec(in_channels=1, image_size=32)
  model = models.abstract(config.model, spec)
  assert isinstance(model, AutoencoderKL) and model.downsampling_factor == 4
  with pytest.raises(ValueError, match="downsampling factor 4"):
    models.abstract(config.model, NetworkSpec(in_channels=1, image_size=30))
  with pytest.raises(ValueError, match="learn_sigma"):
    models.abstract(config.model, NetworkSpec(in_channels=1, image_size=32, learn_sigma=True))
  with pytest.raises(ValueError, match="norm_num_groups=8 must divide"):
    AutoencoderConfig(block_out_channels=(16, 20))


def test_cli_round_trip(tmp_path):
  dst = tmp_path / "converted"
  done = subprocess.run(
    [sys.executable, "-m", "jaxdiff.convert", "diffusers-vae", VAE, str(dst)],
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode == 0, done.stderr
  converted, direct = load_converted(dst), load_diffusers_vae(VAE)
  assert isinstance(converted, AutoencoderKL) and converted.scaling_factor == 0.13025
  chex.assert_trees_all_equal(nnx.state(converted, nnx.Param), nnx.state(direct, nnx.Param))


def _missing_weights(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  shutil.copy(os.path.join(VAE, "config.json"), src)
  return str(src), str(tmp_path / "dst"), "does not exist"


def _existing_dst(tmp_path):
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  return VAE, str(dst), "already exists"


def _unet_folder(tmp_path):
  return os.path.join(DATA, "unet_ddpm"), str(tmp_path / "dst"), "This is a UNet2DModel folder"


@pytest.mark.parametrize("case", [_unet_folder, _missing_weights, _existing_dst])
def test_cli_refuses_bad_input_in_one_sentence(case, tmp_path, capsys):
  src, dst, message = case(tmp_path)
  before = sorted(os.listdir(dst)) if os.path.exists(dst) else None
  assert main(["diffusers-vae", src, dst]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1
  assert (sorted(os.listdir(dst)) if os.path.exists(dst) else None) == before


@pytest.mark.parametrize(
  "change, match",
  [
    ({"act_fn": "gelu"}, "act_fn"),
    ({"mid_block_add_attention": False}, "mid_block_add_attention"),
    ({"latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}, "latents_mean"),
    ({"down_block_types": ["AttnDownEncoderBlock2D"] * 3}, "block types"),
    ({"norm_type": "spatial"}, "norm_type"),
  ],
)
def test_unsupported_config_is_one_clear_error(change, match):
  with open(os.path.join(VAE, "config.json")) as f:
    cfg = json.load(f)
  with pytest.raises(ValueError, match=match):
    vae_kwargs_from_diffusers_config({**cfg, **change})
