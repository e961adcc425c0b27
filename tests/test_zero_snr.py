"""Zero terminal SNR (Lin et al. 2024): rescaled schedules against their closed form and diffusers'
tables, the samplers on them against diffusers' (stored by tests/make_zero_snr_reference.py), and
the refusal of ε-prediction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error
from sampler_reference import config_of, load, toy_model

from jaxdiff import schedules
from jaxdiff.samplers import karras
from jaxdiff.samplers.ddim import ddim
from jaxdiff.samplers.dpm_solver import dpm_solver

REF, CASES = load("zero_snr")
NAMES = ("linear", "cosine", "scaled_linear")
SAMPLERS = {
  "ddim": ddim,
  "euler": karras.euler,
  "heun": karras.heun,
  "euler_ancestral": karras.euler_ancestral,
  "dpm_solver": dpm_solver,
}


def zero_snr(name):
  return schedules.make(name, rescale_zero_terminal_snr=True)


@pytest.mark.parametrize("name", NAMES)
def test_rescaled_schedule_is_the_closed_form(name):
  original, rescaled = schedules.make(name), zero_snr(name)
  assert rescaled.betas[-1] == 1.0 and rescaled.alphas_cumprod[-1] == 0.0
  assert rescaled.zero_terminal_snr and not original.zero_terminal_snr
  assert np.all((rescaled.betas[:-1] > 0) & (rescaled.betas[:-1] < 1))
  assert rescaled.alphas_cumprod[0] == pytest.approx(original.alphas_cumprod[0], rel=1e-15)
  # √ᾱ is the original √ᾱ mapped linearly, last to 0 and first to itself. Through βs recomputed
  # from ratios of ᾱ and multiplied back: measured ≤ 2.5e-16 relative per entry.
  root, root0 = np.sqrt(rescaled.alphas_cumprod), np.sqrt(original.alphas_cumprod)
  expected = (root0 - root0[-1]) * (root0[0] / (root0[0] - root0[-1]))
  np.testing.assert_allclose(root, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_rescaled_tables_match_diffusers(name):
  ref = REF[f"tables/{name}/alphas_cumprod"]
  assert ref[-1] == 0.0
  # diffusers rescales and multiplies in float32; its √ᾱ − √ᾱ_T cancels near t = T, so single
  # entries there are off by up to 4e-5 (scaled_linear), the table as a whole by ≤ 4e-7. The same
  # rescaling in float64 (diffusers' function on float64 βs) agrees to 2e-17.
  assert relative_error(zero_snr(name).alphas_cumprod, ref) < 1e-6
  if name == "scaled_linear":
    wide = REF["tables64/scaled_linear/alphas_cumprod"]
    assert relative_error(zero_snr(name).alphas_cumprod, wide) < 1e-14


def test_rescaling_composes_with_respacing_and_needs_two_steps():
  # ADM respacing keeps the kept steps' ᾱ, the last (t = T − 1) included.
  assert schedules.make("linear", respacing="10", rescale_zero_terminal_snr=True).zero_terminal_snr
  with pytest.raises(ValueError, match="at least 2 timesteps"):
    schedules.make("linear", 1, rescale_zero_terminal_snr=True)


def test_sigma_space_alphas_cumprod_is_diffusers_clamp():
  rescaled = zero_snr("scaled_linear")
  clamped = schedules.sigma_alphas_cumprod(rescaled)
  assert clamped[-1] == 2.0**-24 and rescaled.alphas_cumprod[-1] == 0.0
  np.testing.assert_array_equal(clamped[:-1], rescaled.alphas_cumprod[:-1])
  original = schedules.make("scaled_linear")
  np.testing.assert_array_equal(schedules.sigma_alphas_cumprod(original), original.alphas_cumprod)
  _, sigmas = karras.sigma_grid(rescaled, num_steps=10, spacing="trailing")
  assert sigmas[0] == pytest.approx(np.sqrt(2.0**24 - 1), rel=1e-15)


def test_check_sampler_support():
  message = r"ε-prediction cannot be sampled from ᾱ_T = 0 .*diffusion\.prediction=v"
  with pytest.raises(ValueError, match=message):
    schedules.check_sampler_support(zero_snr("linear"), prediction="epsilon")
  for prediction in ("v", "x0"):
    schedules.check_sampler_support(zero_snr("linear"), prediction=prediction)
  schedules.check_sampler_support(schedules.make("linear"), prediction="epsilon")


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_samplers_refuse_epsilon_prediction(sampler):
  x_T = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="ε-prediction cannot be sampled"):
    SAMPLERS[sampler](lambda x, t: x, zero_snr("linear"), x_T, prediction="epsilon")


def sample_case(name, dtype):
  """(trajectory, model-call times) of jaxdiff's sampler on a reference case."""
  c = config_of(REF, name)
  n, calls = c["num_steps"], []
  options = dict(num_steps=n, spacing="trailing", prediction=c["prediction"])
  noise = jnp.asarray(REF["noise"][:n], dtype)
  if c["sampler"] == "ddim":
    options.update(eta=c["eta"], clip_denoised=c["clip_sample"], noise=noise)
  elif c["sampler"] == "euler_ancestral":
    options.update(noise=noise)
  elif c["sampler"] == "dpm_solver":
    options.update(order=c["order"])
  trajectory = SAMPLERS[c["sampler"]](
    toy_model(calls=calls),
    zero_snr(c["schedule"]),
    jnp.asarray(REF["x_T"], dtype),
    return_trajectory=True,
    **options,
  )
  jax.effects_barrier()
  return np.asarray(trajectory), np.array(calls)


@pytest.mark.parametrize("name", CASES)
def test_float32_matches_diffusers(name):
  got, calls = sample_case(name, jnp.float32)
  ref = REF[f"f32/{name}/trajectory"]
  assert got.shape == ref.shape and got.dtype == np.float32
  np.testing.assert_array_equal(calls, REF[f"f32/{name}/calls"])
  # jaxdiff's tables are float64 rounded once, diffusers' rescaled in float32 (single ᾱ near t = T
  # off by up to 4e-5). Measured: DDIM and DPM-Solver ≤ 5e-7; Euler-ancestral 4.3e-6 and Euler
  # 7.5e-6, whose first step from σ_T ≈ 4096 cancels x ≈ 4096·x_T in float32 (diffusers' own
  # float32 run is 8.3e-6 from its float64 one there).
  assert relative_error(got, ref) < 1e-5
  assert relative_error(got[-1], ref[-1]) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_float64_matches_diffusers(name):
  with jax.enable_x64(True):
    got, calls = sample_case(name, jnp.float64)
  assert got.dtype == np.float64
  np.testing.assert_array_equal(calls, REF[f"f64/{name}/calls"])
  # Same float64 tables and algebra: measured ≤ 1.2e-14.
  assert relative_error(got, REF[f"f64/{name}/trajectory"]) < 1e-9


def v_oracle(schedule, c):
  """The exact v-predictor for data that is the constant c: v = (√ᾱ x_t − c)/√(1 − ᾱ), which is
  −c at ᾱ = 0. Fractional times are rounded (the grids here are integer 'trailing' ones)."""
  table = jnp.asarray(schedule.alphas_cumprod, jnp.float32)

  def model(x, t):
    a = table[jnp.round(t).astype(jnp.int32)][:, None, None, None]
    return (jnp.sqrt(a) * x - c) / jnp.sqrt(1 - a)

  return model


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_exact_v_model_returns_the_data_point(sampler):
  # Every sampler ends on its last x̂0 (DDIM's 10 'trailing' steps end at ᾱ = 1, so even at η = 1),
  # which the oracle gets exactly at t < T − 1 (σ-space samplers see ᾱ_T = 2⁻²⁴ at their first
  # step, where x̂0 is off by ~2⁻¹², and recover).
  schedule = zero_snr("scaled_linear")
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  extra = {"key": jax.random.key(1)} if sampler == "euler_ancestral" else {}
  if sampler == "ddim":
    extra = {"eta": 1.0, "key": jax.random.key(1), "clip_denoised": False}
  x0 = SAMPLERS[sampler](
    v_oracle(schedule, 0.3),
    schedule,
    x_T,
    num_steps=10,
    spacing="trailing",
    prediction="v",
    **extra,
  )
  np.testing.assert_allclose(x0, 0.3, atol=1e-4)


@pytest.mark.parametrize("name, num_steps", [("linear", 7), ("scaled_linear", 13), ("cosine", 9)])
def test_ddim_eta_one_from_zero_alpha_bar_is_finite(name, num_steps):
  # At η = 1 and ᾱ_t = 0 the direction variance 1 − ᾱ_prev − σ² is exactly 0, and in float32 it
  # rounds below 0 for about half of all step counts, these among them: its √ was NaN here before
  # the floor (diffusers' step gives NaN too, e.g. scaled_linear with 13 steps).
  x0 = ddim(
    lambda x, t: 0.1 * x,
    zero_snr(name),
    jax.random.normal(jax.random.key(2), (1, 2, 2, 1)),
    num_steps=num_steps,
    eta=1.0,
    spacing="trailing",
    prediction="v",
    key=jax.random.key(3),
  )
  assert np.isfinite(np.asarray(x0)).all()
