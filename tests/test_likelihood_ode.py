"""Likelihood through the probability-flow ODE (jaxdiff/likelihood_ode.py): the log-density of
Gaussian data under its exact flow and its exact VP probability-flow ODE against the Gaussian's
closed form, the exact divergence against the Jacobian's trace, Hutchinson's estimator against its
mean and variance, dequantisation and bits/dim; then --mode=eval through the front door."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cluster import configured, flags
from test_train import data_dir  # noqa: F401 — a fixture

from jaxdiff import codecs, evaluation, flow, preconditioning, schedules
from jaxdiff import config as config_lib
from jaxdiff import likelihood_ode as lo
from jaxdiff import run as run_lib
from jaxdiff.models import unet
from jaxdiff.run import RunError

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Gaussian data N(m, s²·I) on 4×4×2 images: m varies per dimension, s is well below 1, so neither
# the ODE's start nor its prior is the standard normal.
SHAPE = (4, 4, 2)
DIMS = math.prod(SHAPE)
S = 0.3


def _gaussian_data(batch=3):
  rng = np.random.default_rng(0)
  m = rng.uniform(-0.5, 0.5, SHAPE).astype(np.float32)
  x0 = m + S * rng.standard_normal((batch, *SHAPE)).astype(np.float32)
  return jnp.asarray(m), jnp.asarray(x0)


def _gaussian_log_density(x, m, variance):
  return np.sum(-0.5 * (x - m) ** 2 / variance - 0.5 * np.log(2 * np.pi * variance), axis=(1, 2, 3))


def _relative(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _exact_flow_network(m):
  """The velocity network of Gaussian data, called as a flow model is (t = σ·1000).

  x_σ = (1 − σ)x_0 + σε ~ N((1 − σ)m, V_σ·I) with V_σ = (1 − σ)²s² + σ², and (x_σ, v = ε − x_0) are
  jointly Gaussian with E v = −m, Cov(v, x_σ) = σ − (1 − σ)s², so
  E[v | x_σ = x] = −m + (σ − (1 − σ)s²)/V_σ · (x − (1 − σ)m)."""

  def network(x, t):
    sigma = (t / flow.TIME_SCALE)[:, None, None, None]
    variance = (1 - sigma) ** 2 * S**2 + sigma**2
    return -m + (sigma - (1 - sigma) * S**2) / variance * (x - (1 - sigma) * m)

  return network


def test_flow_ode_gives_the_gaussian_log_density():
  m, x0 = _gaussian_data()
  ode = lo.flow_ode(lo.flow_velocity(_exact_flow_network(m)))
  solution = jax.jit(lambda x: lo.log_likelihood(ode, x, rtol=1e-5, atol=1e-5))(x0)
  assert bool(solution.success) and solution.log_density.shape == (3, 1)
  # The exact flow carries N(m, s²) onto N(0, I): log p = log N(x0; m, s²·I). 1e-3 is the issue's
  # target; dopri5 at rtol = atol = 1e-5 in float32 lands near 1e-6 here.
  expected = _gaussian_log_density(x0, m, S**2)
  assert _relative(solution.log_density[:, 0], expected) < 1e-3
  # and the state ends at the noise the flow maps x0 to, (x0 − m)/s
  assert _relative(solution.x_end, (x0 - m) / S) < 1e-3


def _exact_discrete_network(m, schedule, prediction):
  """A jaxdiff network of Gaussian data on `schedule`, exact: at the fractional timestep t it sees
  x_t = √ᾱ·x_0 + √(1 − ᾱ)·ε with ᾱ = 1/(1 + σ(t)²) (σ(t) as discrete_denoiser maps σ to t), and
  E[x_0 | x_t] = m + s²√ᾱ/(ᾱs² + 1 − ᾱ)·(x_t − √ᾱ·m); it returns ε̂, or
  v̂ = √ᾱ·ε̂ − √(1 − ᾱ)·x̂_0."""

  def network(x, t):
    sigma = preconditioning.sigma_of_timestep(t, schedule=schedule)[:, None, None, None]
    a = 1 / (1 + sigma**2)
    x0 = m + S**2 * jnp.sqrt(a) / (a * S**2 + 1 - a) * (x - jnp.sqrt(a) * m)
    eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    return eps if prediction == "epsilon" else jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0

  return network


@pytest.mark.parametrize("name, prediction", [("linear", "epsilon"), ("cosine", "v")])
def test_diffusion_ode_gives_the_gaussian_log_density(name, prediction):
  m, x0 = _gaussian_data()
  schedule = schedules.make(name, 1000)
  network = _exact_discrete_network(m, schedule, prediction)
  ode = lo.model_ode(network, prediction=prediction, schedule=schedule)
  sigmas = preconditioning.train_sigmas(schedule)
  np.testing.assert_allclose(np.exp([ode.start, ode.end]), sigmas[[0, -1]], rtol=1e-6)
  solution = jax.jit(lambda x: lo.log_likelihood(ode, x, rtol=1e-5, atol=1e-5))(x0)
  assert bool(solution.success)
  # The exact ODE carries N(m, (s² + σ_min²)·I) at σ_min onto N(m, (s² + σ_max²)·I), linearly:
  # x_T = m + r·(x0 − m) with r = √((s² + σ_max²)/(s² + σ_min²)), so ∫div = D·ln r; the model's
  # prior there is the DDPM's N(0, (1 + σ_max²)·I), not the data's marginal, and on the linear
  # schedule (σ_max = 157) that mismatch, ~2m(x0 − m)/(s·σ_max) per dimension, is 2e-3 relative:
  # it belongs in the closed form.
  sigma_min, sigma_max = sigmas[0], sigmas[-1]
  r = np.sqrt((S**2 + sigma_max**2) / (S**2 + sigma_min**2))
  x_end = m + r * (x0 - m)
  expected = np.asarray(lo.standard_normal_log_density(x_end, 1 + sigma_max**2)) + DIMS * np.log(r)
  # 1e-3: the target. The prior term and ∫div are each ~340 nats and cancel to ~−7, so
  # rtol = 1e-5 on the integral leaves ~2e-4 relative in float32.
  assert _relative(solution.log_density[:, 0], expected) < 1e-3
  # the data's own density at σ_min is that up to the prior mismatch, within 5e-3 on either schedule
  data_density = _gaussian_log_density(x0, m, S**2 + sigma_min**2)
  assert _relative(solution.log_density[:, 0], data_density) < 5e-3


def test_rk4_reaches_the_closed_form_too():
  m, x0 = _gaussian_data()
  ode = lo.flow_ode(lo.flow_velocity(_exact_flow_network(m)))
  solution = jax.jit(lambda x: lo.log_likelihood(ode, x, solver="rk4", num_steps=20))(x0)
  assert int(solution.num_evaluations) == 80
  # RK4's global error is O(h⁴): at h = 1/20 on this smooth field it is ~1e-5 relative
  assert _relative(solution.log_density[:, 0], _gaussian_log_density(x0, m, S**2)) < 1e-4


def test_probes_are_drawn_once_per_integration():
  # The exact flow's Jacobian is c(σ)·I, so a probe z held fixed along the whole path estimates
  # ∫div as (‖z‖²/D)·∫div exactly: Rademacher probes (‖z‖² = D) give the exact value, Gaussian
  # ones that value scaled by each probe's own ‖z‖²/D — a probe redrawn per step would not.
  m, x0 = _gaussian_data()
  ode = lo.flow_ode(lo.flow_velocity(_exact_flow_network(m)))
  probes = lo.draw_probes(jax.random.key(1), x0.shape, "gaussian", 3)
  solve = jax.jit(lambda x, z: lo.log_likelihood(ode, x, probes=z))
  solution = solve(x0, probes)
  assert solution.log_density.shape == (3, 3)
  prior = np.asarray(lo.standard_normal_log_density(solution.x_end))[:, None]
  exact_integral = DIMS * np.log(1 / S)  # D/2·ln(V_1/V_0) = D/2·ln(1/s²)
  scale = np.sum(np.asarray(probes).reshape(3, 3, -1) ** 2, -1).T / DIMS  # (example, probe)
  # 1e-4: the solver's tolerance on an integral of ~38 nats
  assert _relative(solution.log_density - prior, scale * exact_integral) < 1e-4
  rademacher = lo.draw_probes(jax.random.key(2), x0.shape, "rademacher", 2)
  flat = solve(x0, rademacher).log_density
  assert _relative(flat - prior, np.full((3, 2), exact_integral)) < 1e-4


def _small_network():
  """A random two-layer tanh network per example on 2×2×3 inputs (12 dimensions)."""
  keys = jax.random.split(jax.random.key(0), 2)
  w1 = jax.random.normal(keys[0], (12, 16)) / 3
  w2 = jax.random.normal(keys[1], (16, 12)) / 4

  def fn(x):
    flat = x.reshape(x.shape[0], -1)
    return (jnp.tanh(flat @ w1) @ w2 + 0.5 * flat).reshape(x.shape)

  return fn


def _jacobians(fn, x):
  """(B, D, D): each example's Jacobian by jax.jacfwd, an independent reference."""
  one = lambda v: fn(v[None])[0].reshape(-1)
  return jax.vmap(lambda v: jax.jacfwd(one)(v).reshape(12, 12))(x)


def test_exact_divergence_is_the_jacobian_trace():
  fn = _small_network()
  x = jax.random.normal(jax.random.key(3), (4, 2, 2, 3))
  out, div = lo.divergence(fn, x)
  np.testing.assert_array_equal(out, fn(x))
  trace = jnp.trace(_jacobians(fn, x), axis1=1, axis2=2)
  # float32 sums of 12 terms of size ~1
  assert _relative(div[:, 0], trace) < 1e-6


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_its_closed_form_variance(kind):
  fn = _small_network()
  x = jax.random.normal(jax.random.key(3), (4, 2, 2, 3))
  jacobian = np.asarray(_jacobians(fn, x), np.float64)
  trace = np.trace(jacobian, axis1=1, axis2=2)
  count = 20000
  _, estimates = lo.divergence(fn, x, lo.draw_probes(jax.random.key(4), x.shape, kind, count))
  estimates = np.asarray(estimates, np.float64)  # (B, count)
  stderr = estimates.std(axis=1) / np.sqrt(count)
  # unbiased: the mean over probes within 4 standard errors of the trace, for every example
  assert np.all(np.abs(estimates.mean(axis=1) - trace) < 4 * stderr)
  # Var zᵀAz = 2‖A_s‖²_F for Gaussian z and 2(‖A_s‖²_F − Σ A_ii²) for Rademacher z (A_s the
  # symmetric part); the sample variance of 20,000 draws is within ~3% of it (its own s.e. ~1-2%).
  sym = (jacobian + np.swapaxes(jacobian, 1, 2)) / 2
  variance = 2 * np.sum(sym**2, axis=(1, 2))
  if kind == "rademacher":
    variance -= 2 * np.sum(np.diagonal(jacobian, axis1=1, axis2=2) ** 2, axis=1)
  np.testing.assert_allclose(estimates.var(axis=1), variance, rtol=0.08)


def test_dequantisation_fills_each_bin_and_bits_of_the_uniform_density_are_8():
  k = np.arange(256, dtype=np.float32)
  images = jnp.asarray(np.tile(k / 127.5 - 1, (64, 1))[..., None, None])  # (64, 256, 1, 1)
  x = np.asarray(lo.dequantize(jax.random.key(5), images))
  low, high = 2 * k / 256 - 1, 2 * (k + 1) / 256 - 1
  assert np.all((x[:, :, 0, 0] >= low) & (x[:, :, 0, 0] < high))
  # u ~ U[0, 1): the mean position in the bin is ½ (4096 draws per position of 256)
  u = (x[:, :, 0, 0] + 1) * 128 - k
  assert abs(u.mean() - 0.5) < 0.02
  # the uniform density on [−1, 1]^D is 2^−D: 8 bits/dim on [0, 256)^D, a uniform 8-bit model
  assert float(lo.bits_per_dim(jnp.asarray(-DIMS * math.log(2.0)), DIMS)) == pytest.approx(8.0)


# --- --mode=eval through the front door ----------------------------------------------------------

TINY = {
  "model.channel_mult": (1,),
  "train.num_devices": 1,
  "eval.num_samples": 0,
  "eval.num_examples": 8,
  "eval.batch_size": 8,
  "eval.ode_rtol": 1e-3,  # loose: ~1e-3 relative on the closed forms below is plenty
  "eval.ode_atol": 1e-3,
}


def _fresh_workdir(config_file, workdir, data_dir):  # noqa: F811
  """A workdir whose checkpoint 0 is the network as initialised (what `init_from` saves too): the
  digits U-Net zero-initialises its output layer, so it predicts exactly 0 — v = 0 of a flow, v = 0
  of a v-prediction model — whose ODE densities are known in closed form (below)."""
  config = configured(config_file, {**TINY, "data.data_dir": str(data_dir)})
  run = run_lib.setup(config, workdir)
  run.checkpointer.save(0, run.state, force=True)
  run.checkpointer.close()


def _eval(config_file, workdir, data_dir, **overrides):  # noqa: F811
  wanted = {**TINY, "data.data_dir": str(data_dir), **overrides}
  command = [
    sys.executable, "-m", "jaxdiff.main", f"--config={config_file}", f"--workdir={workdir}",
    "--mode=eval", *flags(wanted),
  ]  # fmt: skip
  done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


# Bits/dim of N(0, I) at dequantised digits x ∈ [−1, 1]: 7 + (ln 2π + E x²)/(2 ln 2), with
# E x² ∈ [0, 1]: between 8.33 and 9.05 (the digits' background at −1 puts it near the top).
NORMAL_BITS = (
  7 + math.log(2 * math.pi) / (2 * math.log(2)),
  7 + (math.log(2 * math.pi) + 1) / (2 * math.log(2)),
)


def test_eval_reports_the_ode_bits_per_dim_beside_the_bound(tmp_path, data_dir):  # noqa: F811
  config, workdir = ROOT / "configs" / "digits.py", tmp_path / "digits"
  _fresh_workdir(config, workdir, data_dir)
  line = _eval(
    config,
    workdir,
    data_dir,
    **{"eval.num_timesteps": 1, "eval.ode_bits_per_dim": True, "eval.ode_divergence": "gaussian"},
  )
  assert line["eval_bound"] == "diffusion" and line["eval_examples"] == 8
  assert math.isfinite(line["eval_bpd"])
  # v̂ = 0 makes D(x̃, σ) = ᾱ·x̃ and the field dx̃/dλ = σ²/(1 + σ²)·x̃: x̃ grows as √(1 + σ²), and
  # the ODE's density at σ_min is N(0, (1 + σ_min²)·I), σ_min = 0.0064 on the cosine schedule —
  # the standard normal's bits/dim to 1e-4; the solver's tolerance on ∫div (~2,500 nats, below)
  # leaves ~0.02 bits/dim.
  assert NORMAL_BITS[0] - 0.05 < line["eval_ode_bpd"] < NORMAL_BITS[1] + 0.05
  assert line["eval_ode_divergence"] == "gaussian" and line["eval_ode_probes"] == 4
  # Gaussian probes on the isotropic Jacobian estimate ∫div·‖z‖²/D: ∫div ≈ D/2·ln(1 + σ_max²) is
  # ~2,500 nats, so one probe's bits/dim spread ≈ ∫div·√(2/D)/(D ln 2) ≈ 1.2
  assert 0.5 < line["eval_ode_bpd_probe_std"] < 2.5 and line["eval_ode_bpd_probe_stderr"] > 0


def test_a_flow_model_reports_its_ode_bits_per_dim(tmp_path, data_dir):  # noqa: F811
  config, workdir = ROOT / "configs" / "digits_flow.py", tmp_path / "flow"
  _fresh_workdir(config, workdir, data_dir)
  line = _eval(config, workdir, data_dir)  # eval.bits_per_dim (the default) is the ODE's
  assert line["eval_bound"] == "flow_matching" and line["eval_timesteps"] is None
  # v = 0: the ODE does not move x and ∫div = 0 for every probe — log p = log N(x; 0, I) exactly
  # and no spread over the 4 Rademacher probes
  assert NORMAL_BITS[0] < line["eval_bpd"] < NORMAL_BITS[1]
  assert line["eval_bpd_probe_std"] == 0 and line["eval_bpd_probe_stderr"] == 0


@pytest.mark.parametrize(
  "config, overrides, message",
  [
    ("digits.py", {"eval.ode_divergence": "hutch"}, "eval.ode_divergence must be one of"),
    ("digits.py", {"eval.ode_divergence": "exact", "eval.ode_probes": 4}, "has no effect"),
    ("digits_flow.py", {"eval.ode_bits_per_dim": True}, "a flow model's is the ODE's already"),
  ],
)
def test_bad_ode_settings_are_one_sentence(config, overrides, message):
  c = config_lib.load_file(ROOT / "configs" / config)
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(ValueError, match=message) as error:
    config_lib.validate(c)
  assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


def test_bits_per_dim_of_a_latent_flow_run_is_refused_before_work(tmp_path, monkeypatch):
  # an exactly invertible toy latent codec (as tests/test_pipeline.py's): not pixel space
  codec = codecs.Codec(
    encode=lambda params, images, key: unet.space_to_depth(images, 2),
    decode=lambda params, latents: unet.depth_to_space(latents, 2),
    latent_shape=lambda size, channels: (size // 2, channels * 4),
    pixel_space=False,
    params={},
  )
  monkeypatch.setitem(codecs.CODECS, "patches", lambda config: codec)
  c = config_lib.load_file(ROOT / "configs" / "digits_flow.py")
  c.codec.name = "patches"
  c.model.channel_mult, c.model.patch_size = (1,), 1
  with pytest.raises(RunError, match="eval.bits_per_dim is a bound on pixels"):
    evaluation.evaluate(c, tmp_path / "latent")  # refused before any checkpoint is read
