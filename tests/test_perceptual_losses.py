"""The LDM autoencoder recipe's extras and LPIPS as a training distance: the patch discriminator
(pix2pix's 70×70 PatchGAN), the hinge loss and adaptive weight in closed form, the perceptual term,
a VAE trained through the trainer with both, consistency training with the LPIPS distance, and the
errors a user can cause."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import relative_error
from safetensors.numpy import save_file
from test_latent import ROOT, tiny_vae_config
from test_train import data_dir  # noqa: F401 — data_dir is a fixture

from jaxdiff import codecs
from jaxdiff import config as config_lib
from jaxdiff import models, parallel
from jaxdiff import run as run_lib
from jaxdiff.models.discriminator import PatchDiscriminator
from jaxdiff.objectives import autoencoder as vae_objective
from jaxdiff.train import loop
from jaxdiff.train.step import make_train_fn

DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
  """A narrow LPIPS-VGG16 of random weights in the converter's format (tests/test_lpips.py checks
  the same weights against the lpips package)."""
  with np.load(DATA / "lpips_reference.npz") as f:
    tensors = {k: np.ascontiguousarray(f[k]) for k in f if k.startswith(("features.", "lin"))}
  path = tmp_path_factory.mktemp("lpips") / "lpips_tiny.safetensors"
  save_file(tensors, str(path))
  return path


# --- the discriminator, the hinge loss, the adaptive weight -------------------------------------


def test_patch_discriminator_is_pix2pix_70x70():
  d = PatchDiscriminator(3, channels=64, layers=3, rngs=nnx.Rngs(0))
  # 4×4 convs 3→64 (+bias), 64→128, 128→256, 256→512 (no bias, batch norm: scale and bias), 512→1
  # (+bias): 3·64·16 + 64 + 64·128·16 + 256 + 128·256·16 + 512 + 256·512·16 + 1024 + 512·16 + 1
  expected = 3136 + 131072 + 256 + 524288 + 512 + 2097152 + 1024 + 8193
  assert models.parameter_count(nnx.state(d, nnx.Param)) == expected == 2_765_633
  # a 256² image gives the 30×30 map of 70×70 patches of the pix2pix paper
  assert d(jnp.zeros((1, 256, 256, 3))).shape == (1, 30, 30, 1)


def test_a_frozen_discriminator_passes_gradient_to_its_input_only():
  d = PatchDiscriminator(1, channels=4, layers=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))

  def loss(d, x, frozen):
    return jnp.sum(d(x, frozen=frozen) ** 2)

  live = nnx.grad(loss, argnums=(0, 1))(d, x, False)
  frozen = nnx.grad(loss, argnums=(0, 1))(d, x, True)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(live[0]))
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(frozen[0]))
  np.testing.assert_array_equal(frozen[1], live[1])  # the same gradient reaches the images


def test_hinge_loss_and_adaptive_weight_in_closed_form():
  real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.25, 1.0])
  # ½(mean(relu(1 − real)) + mean(relu(1 + fake))) = ½((0 + .5 + 2)/3 + (0 + 1.25 + 2)/3)
  assert float(vae_objective.hinge_discriminator_loss(real, fake)) == pytest.approx(
    0.5 * (2.5 / 3 + 3.25 / 3)
  )
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  r = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
  a = jax.random.normal(jax.random.key(2), (2, 4, 4, 1))
  n = x.size
  # ∇ mean((r − x)²) = 2(r − x)/n and ∇ −mean(a·r) = −a/n
  weight = vae_objective.adaptive_weight(
    lambda r: jnp.mean((r - x) ** 2), lambda r: -jnp.mean(a * r), r
  )
  expected = np.linalg.norm(2 * (r - x) / n) / (np.linalg.norm(a / n) + 1e-4)
  assert float(weight) == pytest.approx(expected, rel=1e-5)


def test_the_perceptual_term_is_added_to_the_per_pixel_error():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
  recon = (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
  mean = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
  logvar = rng.uniform(-2, 1, mean.shape).astype(np.float32)
  model = lambda images, t, key: (jnp.asarray(recon), jnp.asarray(mean), jnp.asarray(logvar))
  p = np.array([0.3, 0.1, 0.2], np.float32)
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3)) / 16
  for name, error, scale in (
    ("l2", np.mean((x - recon) ** 2, axis=(1, 2, 3)), 2 * 0.1**2),
    ("l1", np.mean(np.abs(x - recon), axis=(1, 2, 3)), 0.1),
  ):
    _, per_example, _ = vae_objective.autoencoder_loss(
      None, model, jnp.asarray(x), reconstruction=name, decoder_std=0.1, kl_weight=0.5,
      perceptual=lambda a, b: jnp.asarray(p),
    )  # fmt: skip
    # float32 means of 16 terms
    assert relative_error(per_example, (error + p) / scale + 0.5 * kl) < 1e-5


# --- through the trainer ------------------------------------------------------------------------


def _lines(workdir):
  return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_vae_with_lpips_and_a_discriminator_trains_through_the_trainer(
  data_dir, lpips_file, tmp_path
):  # noqa: F811
  config = tiny_vae_config(data_dir)
  config.train.steps_per_call = config.train.log_every = 1
  config.model.update(discriminator_layers=1, discriminator_channels=8)
  config.vae.update(perceptual_weight=1.0, discriminator_weight=0.5, discriminator_start=2)
  config.lpips.path = str(lpips_file)
  workdir = tmp_path / "vae_gan"
  loop.train(config, workdir)
  steps = [x for x in _lines(workdir) if "d_loss" in x]
  assert [x["step"] for x in steps] == [1, 2, 3, 4]
  for x in steps:
    assert all(np.isfinite(x[k]) for k in ("loss", "vae_loss", "d_loss", "g_loss", "lpips"))
    assert x["lpips"] > 0 and x["d_weight"] >= 0
  # the adversarial terms join the loss from discriminator_start (updates 0 and 1 are without)
  assert [x["loss"] == x["vae_loss"] for x in steps] == [True, True, False, False]
  # the autoencoder it trained serves as a codec: its discriminator is not part of encode/decode
  from jaxdiff.codecs.autoencoder import load_autoencoder

  vae = load_autoencoder(workdir)
  assert vae.discriminator is not None
  assert vae.decode(vae.encode(jnp.zeros((1, 32, 32, 1)))[0]).shape == (1, 32, 32, 1)


def test_consistency_training_with_the_lpips_distance(data_dir, lpips_file, tmp_path):  # noqa: F811
  config = config_lib.default_config()
  config.data.update(data_dir=str(data_dir), batch_size=4, image_size=16)
  config.model.update(channel_mult=(1,))
  config.diffusion.update(loss="improved_consistency_training", prediction="consistency")
  config.consistency.distance = "lpips"
  config.sample.update(sampler="consistency", num_steps=1)
  config.train.num_devices = 1
  config.lpips.path = str(lpips_file)
  config_lib.validate(config)
  parts = run_lib.build(config)
  assert parts.objective.frozen_params is not None and "frozen" in parts.objective.context
  fn = make_train_fn(parallel.make_mesh(1), parts.state, steps_per_call=1, **parts.step_kwargs())
  images = np.random.default_rng(0).uniform(-1, 1, (1, 4, 16, 16, 1)).astype(np.float32)
  state, metrics = fn(parts.state, jax.device_put({"image": images}), None)
  assert np.isfinite(float(metrics["loss"][0])) and float(metrics["grad_norm"][0]) > 0


# --- errors -------------------------------------------------------------------------------------


def test_lpips_settings_the_objectives_refuse(data_dir, monkeypatch):  # noqa: F811
  config = tiny_vae_config(data_dir)
  config.vae.discriminator_weight = 0.5  # without model.discriminator_layers
  with pytest.raises(ValueError, match="set both .* or neither"):
    config_lib.validate(config)
  latent = config_lib.default_config()
  latent.codec.name = "autoencoder"
  latent.autoencoder.path = str(DATA / "vae_kl")  # a diffusers folder: load_autoencoder refuses
  latent.diffusion.update(loss="improved_consistency_training", prediction="consistency")
  latent.consistency.distance = "lpips"
  monkeypatch.setattr(
    run_lib.codecs,
    "build",
    lambda config: dataclasses.replace(codecs.identity(), pixel_space=False),
  )
  with pytest.raises(run_lib.RunError, match="works on latents"):
    run_lib.build(latent)


def test_a_missing_lpips_file_is_one_sentence(data_dir, tmp_path):  # noqa: F811
  for path, message in (("", "does not bundle"), (str(tmp_path / "none.safetensors"), "")):
    done = subprocess.run(
      [
        sys.executable, "-m", "jaxdiff.main", "--config=configs/digits_vae.py",
        f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={data_dir}",
        "--config.vae.perceptual_weight=1.0", f"--config.lpips.path={path}",
      ],
      capture_output=True, text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert message in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
