"""Sampler trajectories against diffusers' (stored by tests/make_sampler_reference.py) and closed forms."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error

from jaxdiff import samplers, schedules
from jaxdiff.samplers.dpm_solver import dpm_solver_grid
from jaxdiff.samplers.karras import sigma_timesteps

REF = np.load(pathlib.Path(__file__).parent / "data" / "sampler_reference.npz")
CASES = [str(c) for c in REF["cases"]]


def fake_model(x, t):
  """The analytic model of the reference script: ε = 0.1 x + 0.05 sin(t / 100)."""
  return 0.1 * x + 0.05 * jnp.sin(t.astype(x.dtype) / 100.0)[:, None, None, None]


def sample_case(name, dtype):
  schedule = schedules.make("scaled_linear" if "scaled_linear" in name else name.split("_")[1])
  x_T = jnp.asarray(REF["x_T"], dtype)
  clip = "_clip1" in name
  if name.startswith("ddpm"):
    variance = "fixed_small" if "fixed_small" in name else "fixed_large"
    return samplers.ddpm(
      fake_model,
      schedule,
      x_T,
      noise=jnp.asarray(REF["noise"], dtype),
      variance=variance,
      clip_denoised=clip,
      return_trajectory=True,
    )
  spacing = next(s for s in ("leading", "trailing", "linspace") if f"_{s}_" in name)
  eta = float(name.split("_eta")[1].split("_")[0])
  n = int(name.split("_n")[-1])
  return samplers.ddim(
    fake_model,
    schedule,
    x_T,
    num_steps=n,
    eta=eta,
    spacing=spacing,
    clip_denoised=clip,
    set_alpha_to_one="_one1" in name,
    noise=jnp.asarray(REF["noise"][:n], dtype),
    return_trajectory=True,
  )


@pytest.mark.parametrize("name", CASES)
def test_trajectory_matches_diffusers_float32(name):
  got = sample_case(name, jnp.float32)
  ref = REF[f"f32/{name}/trajectory"]
  assert got.shape == ref.shape
  # Both sides run float32; they differ by ~1 ulp per table entry and op, which 1000 steps grow
  # to ~1e-5 at most (measured 2.4e-5 for DDPM cosine/fixed_large).
  assert relative_error(got, ref) < 1e-4
  assert relative_error(got[-1], ref[-1]) < 1e-4


@pytest.mark.parametrize("name", CASES)
def test_trajectory_matches_diffusers_float64(name):
  with jax.enable_x64(True):
    got = sample_case(name, jnp.float64)
    assert got.dtype == jnp.float64
    # Same float64 tables and algebra on both sides: only reassociation differs (~1e-15).
    assert relative_error(got, REF[f"f64/{name}/trajectory"]) < 1e-9


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("ddim")])
def test_ddim_visits_diffusers_timesteps(name):
  spacing = next(s for s in ("leading", "trailing", "linspace") if f"_{s}_" in name)
  n = int(name.split("_n")[-1])
  np.testing.assert_array_equal(
    samplers.ddim_timesteps(1000, n, spacing), REF[f"f32/{name}/timesteps"]
  )
  if spacing == "leading":
    assert 999 not in samplers.ddim_timesteps(1000, n, spacing)


@pytest.mark.parametrize("n", [48, 61, 103, 998])
def test_trailing_spacing_has_num_steps_steps(n):
  # diffusers' np.round(np.arange(T, 0, −T/n)) − 1 has n + 1 entries for n = 61, 103, 998 (the last
  # −1, which would index ᾱ[−1]); the first n are its grid, to the tie (n = 48 rounds 937.4999…
  # down, where T − k·T/n would give 937.5 and round up).
  diffusers_grid = (np.round(np.arange(1000, 0, -1000 / n)) - 1)[:n]
  steps = samplers.ddim_timesteps(1000, n, "trailing")
  assert steps.shape == (n,) and steps.min() >= 0 and steps[0] == 999
  np.testing.assert_array_equal(steps, diffusers_grid)
  np.testing.assert_array_equal(sigma_timesteps(1000, n, "trailing"), diffusers_grid)
  dpm_steps, _ = dpm_solver_grid(schedules.make("linear"), n, spacing="trailing")
  np.testing.assert_array_equal(dpm_steps, diffusers_grid)


def point_mass_oracle(schedule, c):
  """The exact ε-predictor for data that is the constant c: ε = (x_t − √ᾱ_t c)/√(1−ᾱ_t)."""
  index = {int(t): i for i, t in enumerate(schedule.timesteps)}
  lookup = np.zeros(schedule.num_train_timesteps, np.float64)
  for t, i in index.items():
    lookup[t] = schedule.alphas_cumprod[i]
  table = jnp.asarray(lookup, jnp.float32)

  def model(x, t):
    ab = table[t][:, None, None, None]
    return (x - jnp.sqrt(ab) * c) / jnp.sqrt(1 - ab)

  return model


@pytest.mark.parametrize("respacing", [None, "ddim25", "100"])
def test_ddpm_with_exact_model_returns_the_data_point(respacing):
  schedule = schedules.make("linear", 1000, respacing=respacing)
  x_T = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  x0 = samplers.ddpm(
    point_mass_oracle(schedule, 0.3), schedule, x_T, key=jax.random.key(1), clip_denoised=False
  )
  # Ends on the exact posterior mean at t = 0, which is x̂0 = c whatever noise came before.
  np.testing.assert_allclose(x0, 0.3, atol=1e-4)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_exact_model_returns_the_data_point(spacing):
  schedule = schedules.make("cosine", 1000)
  x_T = jax.random.normal(jax.random.key(2), (2, 4, 4, 1))
  x0 = samplers.ddim(
    point_mass_oracle(schedule, -0.5),
    schedule,
    x_T,
    num_steps=10,
    spacing=spacing,
    clip_denoised=False,
  )
  np.testing.assert_allclose(x0, -0.5, atol=1e-4)


def test_key_draws_are_reproducible_and_jit_compatible():
  schedule = schedules.make("linear", 100)
  x_T = jax.random.normal(jax.random.key(3), (2, 4, 4, 1))
  run = lambda key: samplers.ddpm(fake_model, schedule, x_T, key=key)
  a, b = run(jax.random.key(4)), run(jax.random.key(4))
  np.testing.assert_array_equal(a, b)
  assert relative_error(run(jax.random.key(5)), np.asarray(a)) > 1e-2
  jitted = jax.jit(
    lambda x, key: samplers.ddim(
      fake_model, schedules.make("linear"), x, num_steps=20, eta=1.0, key=key
    )
  )
  eager = samplers.ddim(
    fake_model, schedules.make("linear"), x_T, num_steps=20, eta=1.0, key=jax.random.key(6)
  )
  np.testing.assert_allclose(jitted(x_T, jax.random.key(6)), eager, rtol=1e-6, atol=1e-6)


def test_sampler_argument_errors():
  schedule = schedules.make("linear", 100)
  x_T = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="pass key"):
    samplers.ddpm(fake_model, schedule, x_T)
  with pytest.raises(ValueError, match="noise must have shape"):
    samplers.ddpm(fake_model, schedule, x_T, noise=jnp.zeros((99, 1, 2, 2, 1)))
  with pytest.raises(ValueError, match="unknown spacing"):
    samplers.ddim(fake_model, schedule, x_T, spacing="quadratic")
  with pytest.raises(ValueError, match="full training schedule"):
    samplers.ddim(fake_model, schedules.respace(schedule, "ddim10"), x_T)
  with pytest.raises(ValueError, match="unknown variance"):
    samplers.ddpm(fake_model, schedule, x_T, key=jax.random.key(0), variance="learned")
