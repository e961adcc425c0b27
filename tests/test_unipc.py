"""UniPC multistep against diffusers' UniPCMultistepScheduler (stored by
tests/make_unipc_reference.py), plus closed forms and argument checks."""

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
from jaxdiff.samplers.dpm_solver import dpm_solver_grid
from jaxdiff.samplers.unipc import unipc, unipc_grid

REF, CASES = load("unipc")
# Cases where diffusers' own float32 arithmetic is the larger error: compared in float32 with its
# float64 run instead.
DIFFUSERS_FLOAT32_OFF = {"bh2_o3_n10_lof0"}


@pytest.mark.parametrize("name", CASES)
def test_final_sample_matches_diffusers_float32(name):
  schedule = diffusers_float32_schedule(REF, name)
  got, calls = sample_and_calls(unipc, REF, name, jnp.float32, schedule)
  # The grid is picked in float64 whatever the compute dtype; here float32 diffusers agrees.
  np.testing.assert_array_equal(calls, REF[f"f32/{name}/timesteps"])
  np.testing.assert_array_equal(calls, REF[f"f64/{name}/timesteps"])
  reference = REF[f"f32/{name}/final"]
  if name in DIFFUSERS_FLOAT32_OFF:
    # The last step extrapolates at third order over a long λ-step, with weights ρ_k/r_k that
    # diffusers builds from float32 λs: its float32 run lies 9.1e-6 from its float64 one, and
    # jaxdiff's (float64 weights) 1.3e-6; compared with the float32 run it measures 9.3e-6.
    assert relative_error(reference, REF[f"f64/{name}/final"]) > 5e-6
    reference = REF[f"f64/{name}/final"]
  # Coefficients from float64 tables cast once vs diffusers' float32 arithmetic (its φ recursion
  # and linear solves in float32 included): measured ≤ 3.8e-6 (cosine Karras), most ≤ 6e-7.
  assert relative_error(got, reference) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_final_sample_matches_diffusers_float64(name):
  got = sample_float64(unipc, REF, name)
  # Same float64 tables and algebra, up to reassociation: measured ≤ 4e-15.
  assert relative_error(got, REF[f"f64/{name}/final"]) < 1e-9


def test_bh1_limit_cases_are_recorded():
  # The reference holds bh1's limit (x̂0) where diffusers' last step to σ = 0 is NaN.
  limits = {name for name in CASES if bool(REF[f"limit/{name}"])}
  assert limits == {"bh1_o2_cosine", "bh1_o3"}


def test_karras_timesteps_are_rounded_unlike_dpm_solver():
  schedule = schedules.make("cosine")
  ours, sigmas = unipc_grid(schedule, 15, use_karras_sigmas=True)
  theirs, dpm_sigmas = dpm_solver_grid(schedule, 15, use_karras_sigmas=True)
  np.testing.assert_array_equal(sigmas, dpm_sigmas)
  assert np.all(ours >= theirs) and np.any(ours > theirs)


def test_trajectory_shape_and_last_step():
  assert_trajectory_ends_in_sample(unipc, REF, "bh2_o3_n10_lof1_cosine", num_steps=10)


@pytest.mark.parametrize(
  "options",
  [dict(order=3), dict(order=2, solver_type="bh1", use_karras_sigmas=True)],
)
def test_exact_data_prediction_returns_the_data_point(options):
  # With x̂0 ≡ c every difference is 0, every corrector keeps the predictor's x, and the last
  # step (to σ = 0) returns x̂0 itself — bh1 included, where diffusers' last step is NaN.
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  x0 = unipc(
    lambda x, t: jnp.full_like(x, 0.3),
    schedules.make("cosine"),
    x_T,
    num_steps=8,
    prediction="x0",
    **options,
  )
  np.testing.assert_allclose(x0, 0.3, rtol=1e-6)


def test_default_final_sigma_is_sigma_min_where_zero_is_undefined():
  schedule = schedules.make("linear")
  x_T = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
  for options in (dict(predict_x0=False), dict(lower_order_final=False)):
    np.testing.assert_array_equal(
      unipc(toy_model(0.1), schedule, x_T, num_steps=6, **options),
      unipc(toy_model(0.1), schedule, x_T, num_steps=6, final_sigmas_type="sigma_min", **options),
    )


def test_jit_matches_eager():
  schedule = schedules.make("cosine")
  x_T = jax.random.normal(jax.random.key(3), (2, 4, 4, 1))
  run = lambda x: unipc(toy_model(0.1), schedule, x, num_steps=6, order=3, solver_type="bh1")
  np.testing.assert_allclose(jax.jit(run)(x_T), run(x_T), rtol=1e-5, atol=1e-5)


def test_learned_variance_channels_are_ignored():
  assert_learned_variance_ignored(unipc, seed=2)


@pytest.mark.parametrize(
  "options, message",
  [
    *MULTISTEP_ARGUMENT_ERRORS,
    (dict(order=0), "order must be one of"),
    (dict(solver_type="midpoint"), "unknown solver_type"),
    (dict(predict_x0=False, final_sigmas_type="zero"), "cannot step to σ = 0"),
    (dict(lower_order_final=False, final_sigmas_type="zero"), "diverges"),
    (dict(disable_corrector=(1.5,)), "disable_corrector must list step indices"),
  ],
)
def test_argument_errors(options, message):
  assert_argument_error(unipc, options, message)


def test_respaced_schedule_is_refused():
  assert_respaced_schedule_refused(unipc)
