"""DPM-Solver(++) multistep against diffusers' DPMSolverMultistepScheduler (stored by
tests/make_dpm_solver_reference.py), plus closed forms and argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error
from sampler_reference import (
  MULTISTEP_ARGUMENT_ERRORS,
  assert_argument_error,
  assert_learned_variance_ignored,
  assert_respaced_schedule_refused,
  assert_trajectory_ends_in_sample,
  diffusers_float32_schedule,
  load,
  sample_and_calls,
  sample_float64,
  toy_model,
)

from jaxdiff import schedules
from jaxdiff.samplers.dpm_solver import dpm_solver

REF, CASES = load("dpm_solver")


@pytest.mark.parametrize("name", CASES)
def test_final_sample_matches_diffusers_float32(name):
  # On diffusers' float32 βs, whose cosine ᾱ is off by 1e-5 (`diffusers_float32_schedule`);
  # jaxdiff's own tables measure 6.9e-6 on the cosine cases instead.
  schedule = diffusers_float32_schedule(REF, name)
  got, calls = sample_and_calls(dpm_solver, REF, name, jnp.float32, schedule)
  # jaxdiff picks its grid in float64 whatever the compute dtype: the model-call timesteps are
  # those of diffusers in float64.
  np.testing.assert_array_equal(calls, REF[f"f64/{name}/timesteps"])
  if np.array_equal(REF[f"f32/{name}/timesteps"], REF[f"f64/{name}/timesteps"]):
    reference = REF[f"f32/{name}/final"]
  else:
    # Cosine + Karras: diffusers in float32 interpolates log σ_max in its float32 table, lands on
    # t = 998.99998 and truncates it to 998; in float64 (and jaxdiff) it is 999.
    assert "karras_cosine" in name
    np.testing.assert_array_equal(REF[f"f32/{name}/timesteps"][1:], calls[1:])
    assert REF[f"f32/{name}/timesteps"][0] == 998 and calls[0] == 999
    reference = REF[f"f64/{name}/final"]
  # Coefficients from float64 tables cast once vs diffusers' float32 arithmetic: measured ≤ 3.3e-6
  # (dpmsolver with x̂0 prediction, the worst conditioned), most cases ≤ 5e-7; 5.8e-6 for cosine
  # Karras, whose reference is float64 and whose float32 βs are the 1e-5 ones above.
  assert relative_error(got, reference) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_final_sample_matches_diffusers_float64(name):
  got = sample_float64(dpm_solver, REF, name)
  # Same float64 tables and algebra, up to expm1 for e^h − 1 and reassociation: measured
  # ≤ 1.1e-15.
  assert relative_error(got, REF[f"f64/{name}/final"]) < 1e-9


def test_trajectory_shape_and_last_step():
  assert_trajectory_ends_in_sample(dpm_solver, REF, "pp_o3_cosine_n10_lof1", num_steps=10)


def point_mass_x0(c):
  return lambda x, t: jnp.full_like(x, c)


@pytest.mark.parametrize(
  "options",
  [
    dict(order=3, algorithm="dpmsolver++"),
    dict(order=2, algorithm="dpmsolver++", use_karras_sigmas=True, solver_type="heun"),
  ],
)
def test_exact_data_prediction_returns_the_data_point(options):
  # With x̂0 ≡ c every finite difference is 0 and the last step (to σ = 0) returns x̂0 itself.
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  x0 = dpm_solver(
    point_mass_x0(0.3), schedules.make("cosine"), x_T, num_steps=8, prediction="x0", **options
  )
  np.testing.assert_allclose(x0, 0.3, rtol=1e-6)


def test_learned_variance_channels_are_ignored():
  assert_learned_variance_ignored(dpm_solver, seed=1)


def test_sde_key_draws_are_reproducible_and_jit_compatible():
  schedule = schedules.make("linear")
  x_T = jax.random.normal(jax.random.key(2), (2, 4, 4, 1))
  run = lambda key: dpm_solver(
    toy_model(0.1), schedule, x_T, num_steps=6, algorithm="sde-dpmsolver++", key=key
  )
  a = run(jax.random.key(3))
  np.testing.assert_array_equal(a, run(jax.random.key(3)))
  assert relative_error(run(jax.random.key(4)), a) > 1e-3
  np.testing.assert_allclose(jax.jit(run)(jax.random.key(3)), a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "options, message",
  [
    *MULTISTEP_ARGUMENT_ERRORS,
    (dict(algorithm="deis"), "unknown algorithm"),
    (dict(solver_type="bh2"), "unknown solver_type"),
    (dict(algorithm="sde-dpmsolver++"), "draws noise"),
    (dict(algorithm="dpmsolver", final_sigmas_type="zero"), "cannot step to σ = 0"),
    (dict(thresholding=True, dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio"),
  ],
)
def test_argument_errors(options, message):
  assert_argument_error(dpm_solver, options, message)


def test_respaced_schedule_is_refused():
  assert_respaced_schedule_refused(dpm_solver)
