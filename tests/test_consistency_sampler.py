"""The consistency sampler: diffusers' CMStochasticIterativeScheduler replayed with its noise,
Algorithm 1 of Song et al. 2023 in float64, the σ defaults, the table entry and its config checks,
guidance, and a consistency run's generation path."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error

from jaxdiff import config as config_lib
from jaxdiff import generate, guidance, parallel, preconditioning, samplers, schedules
from jaxdiff import run as run_lib
from jaxdiff.samplers import table
from jaxdiff.samplers.consistency import consistency, default_sigmas, snap_to_grid

ROOT = pathlib.Path(__file__).resolve().parent.parent
REF = np.load(ROOT / "tests" / "data" / "consistency_reference.npz")
CASES = [str(c) for c in REF["cases"]]


def reference_network(calls=None):
  """tests/make_consistency_reference.py's network, F(u, t) = 2.5·tanh(u) + 0.3·sin(t / 300);
  `calls` collects its time inputs."""

  def net(u, t):
    if calls is not None:
      jax.debug.callback(lambda t: calls.append(float(np.asarray(t)[0])), t, ordered=True)
    return 2.5 * jnp.tanh(u) + 0.3 * jnp.sin(t / 300.0)[:, None, None, None]

  return net


@pytest.mark.parametrize("case", CASES)
def test_diffusers_parity(case):
  # The defaults are diffusers' runs: one step at σ_max, and the ImageNet-64 CD pipeline's
  # timesteps [22, 0]; three steps take diffusers' σ's explicitly. float32 against float32: the
  # runs differ by rounding (~1e-7), by the network's time input, which diffusers computes from
  # float64 σ and jaxdiff from the float32 σ of its scan, and by diffusers' last re-noising,
  # √(σ_min² − σ_min²) with one σ_min in float32 and one in float64, 6.7e-7 rather than 0;
  # 1e-5 leaves an order of margin over all three.
  stored = REF[f"{case}/sigmas"]
  clip = json.loads(str(REF[f"config/{case}"]))["clip_denoised"]
  sigmas = tuple(stored) if case == "three_step" else None
  noise = REF.get(f"{case}/noise")
  calls = []
  f = preconditioning.consistency_function(reference_network(calls))
  got = consistency(
    f,
    jnp.asarray(REF["x_T"]),
    num_steps=len(stored),
    sigmas=sigmas,
    clip_denoised=clip,
    noise=None if noise is None else jnp.asarray(noise),
  )
  jax.effects_barrier()
  want = REF[f"{case}/final"]
  assert got.dtype == jnp.float32
  assert relative_error(got, want) <= 1e-5
  np.testing.assert_allclose(calls, REF[f"{case}/calls"], rtol=1e-6)
  if clip:  # clipping bites on part of the image
    assert 0.05 < np.mean(np.abs(np.abs(want) - 1) < 1e-5) < 0.9


def test_default_sigmas():
  np.testing.assert_array_equal(default_sigmas(1), [80.0])
  # timestep 22 of openai's 40-point Karras grid (diffusers: set_timesteps(timesteps=[22, 0]))
  two = (80 ** (1 / 7) + 22 / 39 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(default_sigmas(2), [80.0, two], rtol=1e-14)
  assert default_sigmas(2)[1] == pytest.approx(1.3823679566, rel=1e-9)
  np.testing.assert_allclose(default_sigmas(4), preconditioning.karras_sigmas(80, 0.002, 5)[:4])
  with pytest.raises(ValueError, match="num_steps must be a positive integer"):
    default_sigmas(0)


def test_default_sigmas_move_to_the_nearest_trained_sigma_in_log():
  grid = [0.01, 0.1, 1.0, 10.0, 100.0]
  # 3.5 is nearer 1 than 10 on a line but nearer 10 in log σ (log10 3.5 = 0.544 > 0.5)
  np.testing.assert_array_equal(snap_to_grid([80.0, 3.5, 0.2], grid), [100.0, 10.0, 0.1])
  np.testing.assert_array_equal(snap_to_grid([2.9], grid), [1.0])
  # CD ImageNet-64's (80, 1.3824) onto a 21-point Karras grid: its points 20 and 9 (from σ_min)
  karras = preconditioning.karras_sigmas(80, 0.002, 21)[::-1]
  np.testing.assert_array_equal(default_sigmas(2, trained_sigmas=karras), karras[[20, 9]])
  assert karras[8] < 1.3824 < karras[9]
  assert np.log(karras[9] / 1.3824) < np.log(1.3824 / karras[8])
  with pytest.raises(ValueError, match="fall on only 1 points of the network's 5-point"):
    snap_to_grid([2.0, 0.5], grid)


def _f_np(x, s):
  """A denoiser of both x and σ, in NumPy (`_f` in JAX)."""
  return np.tanh(x / (1 + s)) * (1 - np.exp(-s))


def _f(x, s):
  return jnp.tanh(x / (1 + s)) * (1 - jnp.exp(-s))


def _numpy_trajectory(x_T, sigmas, noise, gamma=1.0):
  """Every x̂_0 of the consistency sampler, written out in float64 NumPy with `_f_np`: x = σ_0·z_T,
  x̂_0 = f(x, σ_0); then x = x̂_0 + √(σ_i² − σ_min²)·(γ·z_i + √(1 − γ²)·ε̂), ε̂ = (x − x̂_0)/σ_{i−1}
  (CTM's γ-sampling: the DDIM jump along ε̂, then fresh noise; γ = 1 is Algorithm 1),
  x̂_0 = clip(f(x, σ_i))."""
  x, want = sigmas[0] * x_T, []
  for i, s in enumerate(sigmas):
    if i:
      eps = (x - want[-1]) / sigmas[i - 1]
      scale = np.sqrt(s**2 - 0.002**2)
      x = want[-1] + scale * np.sqrt(1 - gamma**2) * eps + scale * gamma * noise[i - 1]
    want.append(np.clip(_f_np(x, s), -1, 1))
  return np.stack(want)


def test_algorithm_1_in_float64():
  # Algorithm 1 (γ = 1) against NumPy; the trajectory holds every x̂_0.
  sigmas = (40.0, 5.0, 0.7, 0.05)
  rng = np.random.default_rng(3)
  x_T = rng.standard_normal((2, 3, 3, 2))
  noise = rng.standard_normal((4,) + x_T.shape)
  want = _numpy_trajectory(x_T, sigmas, noise)
  with jax.enable_x64(True):
    got = consistency(
      _f, jnp.asarray(x_T), num_steps=4, sigmas=sigmas, noise=noise, return_trajectory=True
    )
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_given_sigmas_set_the_number_of_steps():
  # σ's alone, without num_steps: one step per σ (two here), not the one-step default.
  sigmas = (80.0, 1.38)
  rng = np.random.default_rng(11)
  x_T = rng.standard_normal((2, 3, 3, 2))
  noise = rng.standard_normal((2,) + x_T.shape)
  want = _numpy_trajectory(x_T, sigmas, noise)
  with jax.enable_x64(True):
    got = samplers.consistency(_f, jnp.asarray(x_T), sigmas=sigmas, noise=noise)
    np.testing.assert_allclose(got, want[-1], rtol=1e-12, atol=1e-14)
    assert not np.allclose(got, want[0])  # the second step ran
    drawn = samplers.consistency(_f, jnp.asarray(x_T), sigmas=sigmas, key=jax.random.key(0))
    assert drawn.shape == x_T.shape


@pytest.mark.parametrize("gamma", [0.0, 0.6])
def test_gamma_sampling_in_float64(gamma):
  # CTM's γ-sampling with a consistency function against NumPy; γ = 0 draws nothing that
  # matters: any noise gives the same images.
  sigmas = (40.0, 5.0, 0.7)
  rng = np.random.default_rng(5)
  x_T = rng.standard_normal((2, 3, 3, 2))
  noise = rng.standard_normal((3,) + x_T.shape)
  want = _numpy_trajectory(x_T, sigmas, noise, gamma)
  with jax.enable_x64(True):
    run = lambda noise: consistency(
      _f,
      jnp.asarray(x_T),
      num_steps=3,
      sigmas=sigmas,
      noise=noise,
      gamma=gamma,
      return_trajectory=True,
    )
    got = run(noise)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    plain = consistency(_f, jnp.asarray(x_T), num_steps=3, sigmas=sigmas, noise=noise)
    assert not np.allclose(got[-1], plain)  # not Algorithm 1's draws
    if gamma == 0.0:
      np.testing.assert_array_equal(got, run(rng.standard_normal(noise.shape)))
  with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
    consistency(_f, jnp.asarray(x_T), num_steps=3, sigmas=sigmas, noise=noise, gamma=1.5)


def test_key_draws_are_the_replayed_noise_of_fold_in():
  f = lambda x, s: jnp.tanh(x) * s / (1 + s)
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  key = jax.random.key(7)
  noise = jnp.stack([jax.random.normal(jax.random.fold_in(key, i), x_T.shape) for i in range(3)])
  drawn = consistency(f, x_T, num_steps=3, key=key)
  # the same draws; the two programs fuse differently, hence a rounding tolerance
  replayed = consistency(f, x_T, num_steps=3, noise=noise)
  np.testing.assert_allclose(drawn, replayed, rtol=1e-6, atol=1e-7)
  assert not np.array_equal(drawn, consistency(f, x_T, num_steps=3, key=jax.random.key(8)))
  # one step draws nothing: no key needed
  np.testing.assert_array_equal(consistency(f, x_T), jnp.clip(f(80.0 * x_T, 80.0), -1, 1))
  with pytest.raises(ValueError, match="pass key="):
    consistency(f, x_T, num_steps=2)


def test_the_sampler_refuses_bad_sigmas():
  f = lambda x, s: x
  x_T = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="make 2 steps, not num_steps=3"):
    consistency(f, x_T, num_steps=3, sigmas=(80.0, 1.0))
  with pytest.raises(ValueError, match="must decrease strictly"):
    consistency(f, x_T, num_steps=2, sigmas=(1.0, 80.0), key=jax.random.key(0))
  with pytest.raises(ValueError, match="at or above σ_min"):
    consistency(f, x_T, num_steps=2, sigmas=(80.0, 0.001), key=jax.random.key(0))


def _conditional_network(u, t, y):
  return (
    2.5 * jnp.tanh(u) + 0.1 * (y[:, None, None, None] + 1) * jnp.sin(t / 300.0)[:, None, None, None]
  )


def test_the_table_builds_f_from_a_guided_student_network():
  # The table hands the consistency parameterisation the (guided) raw network; since f is affine
  # in F, guiding F is guiding f: f_∅ + s·(f_y − f_∅) built from two separate students.
  config = config_lib.default_config()
  config.sample.sampler, config.sample.num_steps = "consistency", 2
  config.diffusion.loss, config.diffusion.prediction = (
    "improved_consistency_training",
    "consistency",
  )
  config_lib.validate(config)
  labels, scale, null = jnp.array([3, 5]), 2.0, 10
  guided = guidance.classifier_free(
    _conditional_network, labels, guidance_scale=scale, null_label=null
  )
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  key = jax.random.key(1)
  schedule = schedules.make("cosine", 1000)  # unused by a raw consistency network
  got = table.run(
    "consistency", guided, schedule, x_T, key=key, prediction="consistency", options=config.sample
  )
  f_y = preconditioning.consistency_function(lambda u, t: _conditional_network(u, t, labels))
  f_null = preconditioning.consistency_function(
    lambda u, t: _conditional_network(u, t, jnp.full((2,), null))
  )
  mixed = lambda x, s: f_null(x, s) + scale * (f_y(x, s) - f_null(x, s))
  want = samplers.consistency(mixed, x_T, num_steps=2, key=key)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_config_checks_sigmas_against_the_sampler_and_num_steps():
  config = config_lib.default_config()
  config.sample.sigmas = (80.0, 1.0)  # DDIM reads no σ's
  with pytest.raises(ValueError, match="sample.sigmas=.* has no effect with sample.sampler='ddim'"):
    config_lib.validate(config)
  config.sample.sampler = "consistency"
  with pytest.raises(ValueError, match="sample.sigmas has 2 σ's but sample.num_steps=50"):
    config_lib.validate(config)
  config.sample.num_steps = 2
  config_lib.validate(config)
  config.sample.sigmas = (1.0, 80.0)
  with pytest.raises(ValueError, match="sample.sigmas must decrease strictly"):
    config_lib.validate(config)
  config.sample.sigmas, config.sample.gamma = (80.0, 3.1), 0.7
  config_lib.validate(config)
  config.sample.gamma = 1.2
  with pytest.raises(ValueError, match=r"sample.gamma must lie in \[0, 1\]"):
    config_lib.validate(config)
  config.sample.sampler, config.sample.sigmas, config.sample.gamma = "ddim", (), 0.7
  with pytest.raises(ValueError, match="sample.gamma=0.7 has no effect with sample.sampler='ddim'"):
    config_lib.validate(config)


def _digits_config():
  return config_lib.load_file(ROOT / "configs" / "digits.py")


def test_a_consistency_run_generates_through_the_one_generation_path():
  # The digits network (class-conditional, guided) as a consistency student trained from scratch:
  # generate.py runs it unchanged through the table; x̂_0 is clipped, so the images lie in [-1, 1].
  config = _digits_config()
  config.diffusion.loss, config.diffusion.prediction = (
    "improved_consistency_training",
    "consistency",
  )
  config.sample.sampler, config.sample.num_steps = "consistency", 2
  config.sample.sigmas = (80.0, 0.821)
  for name in ("spacing", "eta", "variance", "order", "use_karras_sigmas", "unipc_solver_type"):
    config.sample[name] = table.OPTIONS[name].default
  config_lib.validate(config)
  parts = run_lib.build(config)
  fn = generate.make_sample_fn(
    parts.model_def,
    parts.schedule,
    config,
    parallel.make_mesh(1),
    4,
    codec=parts.codec,
    spec=parts.spec,
  )
  key = jax.random.key(3)
  images = fn(parts.state.ema_params, None, key, np.arange(4))
  assert images.shape == (4, 16, 16, 1)
  assert np.all(np.isfinite(images)) and np.abs(np.asarray(images)).max() <= 1.0
  np.testing.assert_array_equal(images, fn(parts.state.ema_params, None, key, np.arange(4)))
