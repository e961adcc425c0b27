"""The GAN (models/gan.py, objectives/gan.py): its losses and R1 against closed forms, each loss
training only its own network, the discriminator's learning rate, and a run through the CLI —
train with FSDP, SIGKILL, resume bit-identically, sample, eval — and the errors a user can cause."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cluster import configured, flags
from flax import nnx
from test_train import data_dir, kill_at_checkpoint_4, read_params  # noqa: F401 — a fixture

from jaxdiff import models
from jaxdiff import state as state_lib
from jaxdiff.objectives import gan as gan_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# configs/digits_gan.py at test size: 8 steps in calls of 2, a checkpoint every 2, FSDP over 2
TINY_GAN = {
  "data.batch_size": 16,
  "model.latent_dim": 8,
  "model.generator_channels": 16,
  "model.discriminator_channels": 8,
  "train.num_steps": 8,
  "train.steps_per_call": 2,
  "train.checkpoint_every": 2,
  "train.log_every": 2,
  "train.keep_checkpoints": 10,
  "train.num_devices": 2,
  "train.fsdp": 2,
  "sample.num_samples": 8,
  "sample.batch_size": 8,
  "eval.num_samples": 8,
}


def _cli(workdir, data_dir, mode="train", **overrides):  # noqa: F811
  wanted = {**TINY_GAN, "data.data_dir": str(data_dir), **overrides}
  return [
    sys.executable, "-m", "jaxdiff.main", f"--config={ROOT / 'configs' / 'digits_gan.py'}",
    f"--workdir={workdir}", f"--mode={mode}", *flags(wanted),
  ]  # fmt: skip


# --- the pure parts ---------------------------------------------------------------------------


def test_losses_are_the_non_saturating_and_hinge_formulas():
  real, fake = np.array([-2.0, 0.3, 1.5]), np.array([0.7, -1.2, 4.0])
  softplus = lambda v: np.log1p(np.exp(v))
  np.testing.assert_allclose(
    gan_lib.discriminator_terms(real, fake, "non_saturating"),
    -np.log(1 / (1 + np.exp(-real))) - np.log(1 - 1 / (1 + np.exp(-fake))),  # −log σ(r) − log(1−σ(f))
    rtol=1e-6,
  )
  np.testing.assert_allclose(gan_lib.generator_terms(fake, "non_saturating"), softplus(-fake), rtol=1e-6)
  np.testing.assert_allclose(
    gan_lib.discriminator_terms(real, fake, "hinge"),
    np.maximum(0, 1 - real) + np.maximum(0, 1 + fake),
    rtol=1e-6,
  )
  np.testing.assert_allclose(gan_lib.generator_terms(fake, "hinge"), -fake, rtol=1e-6)


def test_r1_is_the_squared_input_gradient_of_the_critic():
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  a = jax.random.normal(jax.random.key(1), (4, 4, 2))
  # D(x) = Σ a·x² → ∇_x D = 2a·x, per example
  critic = lambda v: jnp.sum(a * v**2, axis=(1, 2, 3))
  penalty, logits = gan_lib.r1_penalty(critic, x)
  expected = np.sum((2 * np.asarray(a) * np.asarray(x)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(penalty, expected, rtol=1e-5)  # float32 sums of 32 terms
  np.testing.assert_allclose(logits, critic(x), rtol=1e-6)


def _tiny_gan(conditional=False):
  cfg = models.table.typed_config(
    {**configured(ROOT / "configs" / "digits_gan.py", {}).model.to_dict(),
     "latent_dim": 8, "generator_channels": 16, "discriminator_channels": 8,
     "class_conditional": conditional}  # fmt: skip
  )
  spec = models.NetworkSpec(in_channels=1, image_size=16, num_classes=10 if conditional else None)
  return models.ARCHITECTURES["gan"].build(cfg, spec, nnx.Rngs(0))


def test_each_loss_trains_only_its_own_network():
  model = _tiny_gan(conditional=True)
  graphdef, params = nnx.split(model, nnx.Param)
  x0 = jax.random.uniform(jax.random.key(2), (4, 16, 16, 1), minval=-1, maxval=1)
  labels = jnp.array([0, 3, 7, 9])
  config = configured(ROOT / "configs" / "digits_gan.py", {"model.latent_dim": 8})
  objective = gan_lib.gan(config, None)
  key = jax.random.key(3)

  def call(p):
    m = nnx.merge(graphdef, p)
    return lambda x, t, y=labels, **kw: m(x, t, y, **kw)

  def total(p):
    return objective.loss(key, {"model": call(p)}, x0, labels=labels)[0]

  # the same terms written out without the stop_gradient split: L_G with D's parameters held at
  # their values, L_D with G's
  def separate(p, which):
    m = nnx.merge(graphdef, p)
    z = jax.random.normal(key, (4, 8))
    fake = m.generator(z, labels)
    if which == "generator":
      return jnp.mean(jax.nn.softplus(-m.discriminator(fake, labels)))
    d = lambda v: m.discriminator(v, labels)
    grads = jax.grad(lambda v: jnp.sum(d(v)))(x0)
    r1 = jnp.sum(grads**2, axis=(1, 2, 3))
    logits = jax.nn.softplus(-d(x0)) + jax.nn.softplus(d(fake))
    return jnp.mean(logits + 0.5 * config.gan.r1_gamma * r1)

  g_total = jax.grad(total)(params)
  g_gen = jax.grad(lambda p: separate(p, "generator"))(params)
  g_disc = jax.grad(lambda p: separate(p, "discriminator"))(params)
  for name, expected in (("generator", g_gen), ("discriminator", g_disc)):
    got, want = jax.tree.leaves(g_total[name]), jax.tree.leaves(expected[name])
    for a, b in zip(got, want):
      # the same float32 computations in another order
      assert float(jnp.linalg.norm(a - b)) <= 1e-5 * float(jnp.linalg.norm(b)) + 1e-9


def test_the_discriminator_trains_at_its_own_learning_rate():
  config = configured(
    ROOT / "configs" / "digits_gan.py",
    {"model.latent_dim": 8, "gan.discriminator_lr_ratio": 4.0, "optim.grad_clip_norm": 0.0},
  )
  params = nnx.state(_tiny_gan(), nnx.Param)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3 + 0.01 * p, params)
  tx = state_lib.make_optimizer(config, {"discriminator": 4.0})
  updates, _ = tx.update(grads, tx.init(params), params)
  o = config.optim
  adam = lambda lr: optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  for name, lr in (("generator", o.learning_rate), ("discriminator", 4.0 * o.learning_rate)):
    plain = adam(lr)
    want, _ = plain.update(grads[name], plain.init(params[name]), params[name])
    # float32: Adam's step times the factor against Adam at the factor's rate, a rounding apart
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), updates[name], want)


# --- through the CLI --------------------------------------------------------------------------


def test_a_gan_run_resumes_bit_identically_after_sigkill_samples_and_evaluates(tmp_path, data_dir):  # noqa: F811
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_cli(straight, data_dir), env=env, check=True, capture_output=True)
  kill_at_checkpoint_4(_cli(killed, data_dir), killed, env)
  subprocess.run(_cli(killed, data_dir), env=env, check=True, capture_output=True)
  a, b = read_params(straight, 8), read_params(killed, 8)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(x["d_loss"]) and x["r1"] >= 0 for x in lines if "d_loss" in x)
  # G(z) from the EMA generator, one network evaluation per image
  subprocess.run(_cli(killed, data_dir, "sample"), env=env, check=True, capture_output=True)
  (npz,) = killed.glob("samples/step8_*/samples_8x16x16x1.npz")
  images = np.load(npz)
  assert images["arr_0"].dtype == np.uint8 and images["arr_0"].std() > 0
  np.testing.assert_array_equal(images["arr_1"], np.arange(8) % 10)  # the labels it was given
  done = subprocess.run(_cli(killed, data_dir, "eval"), env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["eval_samples"] == 8 and "eval_bpd" not in result


@pytest.mark.parametrize(
  "extra, message",
  [
    ({"sample.num_steps": 20}, "sample.num_steps=20 has no effect on model.arch='gan'"),
    ({"gan.loss": "wasserstein"}, "gan.loss must be one of ['non_saturating', 'hinge']"),
    ({"data.image_size": 12}, "makes images of 4·2^k pixels"),
  ],
)
def test_gan_config_errors_are_one_sentence(tmp_path, data_dir, extra, message):  # noqa: F811
  done = subprocess.run(
    _cli(tmp_path / "run", data_dir, **extra), capture_output=True, text=True
  )
  assert done.returncode == 1 and "Traceback" not in done.stderr
  (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
  assert message in line
  assert not (tmp_path / "run" / "checkpoints").exists() or not list(
    (tmp_path / "run" / "checkpoints").iterdir()
  )


def test_a_vae_workdir_given_to_a_gan_config_is_refused(tmp_path, data_dir):  # noqa: F811
  # the config.json a digits VAE run writes into its workdir
  vae = tmp_path / "vae"
  vae.mkdir()
  (vae / "config.json").write_text(configured(ROOT / "configs" / "digits_vae.py", {}).to_json())
  before = sorted(p.name for p in vae.iterdir())
  done = subprocess.run(_cli(vae, data_dir), capture_output=True, text=True)
  assert done.returncode == 1 and "Traceback" not in done.stderr
  (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
  assert "differs from the run already in" in line
  assert sorted(p.name for p in vae.iterdir()) == before  # nothing written into it
