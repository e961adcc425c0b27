"""Schedules against their closed forms and diffusers' (float32) tables."""

import math
import pathlib

import numpy as np
import pytest
from numerics import relative_error

from jaxdiff import schedules

REF = np.load(pathlib.Path(__file__).parent / "data" / "sampler_reference.npz")


def test_linear_is_ddpm_schedule_and_scales_with_T():
  s = schedules.make("linear", 1000)
  assert s.betas[0] == pytest.approx(1e-4, rel=1e-15)
  assert s.betas[-1] == pytest.approx(0.02, rel=1e-15)
  np.testing.assert_allclose(np.diff(s.betas), (0.02 - 1e-4) / 999, rtol=1e-9)
  short = schedules.make("linear", 250)  # ADM: both ends scale by 1000 / T
  assert short.betas[0] == pytest.approx(4e-4) and short.betas[-1] == pytest.approx(0.08)


def test_cosine_telescopes_to_alpha_bar():
  T, s = 1000, 0.008
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  sched = schedules.make("cosine", T)
  expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
  capped = sched.betas >= 0.999
  assert capped.sum() == 1 and capped[-1]  # only the last β hits the 0.999 cap
  np.testing.assert_allclose(sched.alphas_cumprod[:-1], expected[:-1], rtol=1e-10)


def test_scaled_linear_is_linear_in_sqrt_beta():
  sqrt_beta = np.sqrt(schedules.make("scaled_linear", 1000).betas)
  assert sqrt_beta[0] == pytest.approx(0.00085**0.5) and sqrt_beta[-1] == pytest.approx(0.012**0.5)
  np.testing.assert_allclose(np.diff(sqrt_beta, 2), 0, atol=1e-15)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_tables_match_diffusers(name):
  s = schedules.make(name, 1000)
  # diffusers builds its tables in float32: one rounding per β, and a float32 cumprod whose
  # relative error grows like √T · 6e-8 ≈ 2e-6 over 1000 products.
  assert relative_error(s.betas, REF[f"tables/{name}/betas"]) < 1e-6
  assert relative_error(s.alphas_cumprod, REF[f"tables/{name}/alphas_cumprod"]) < 1e-5


def test_derived_tables_closed_forms():
  s = schedules.make("linear", 1000)
  ab = np.cumprod(1 - s.betas)
  np.testing.assert_allclose(s.alphas_cumprod_prev, np.append(1.0, ab[:-1]), rtol=1e-15)
  np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod**2, 1 - ab, rtol=1e-13)
  var = s.betas * (1 - s.alphas_cumprod_prev) / (1 - ab)
  assert s.posterior_variance[0] == 0.0
  np.testing.assert_allclose(s.posterior_variance, var, rtol=1e-13)
  np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(var[1]), rtol=1e-13)
  np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(var[1:]), rtol=1e-13)


def test_respacing_ddim_and_sections():
  assert schedules.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
  steps = schedules.space_timesteps(1000, "250")
  assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
  # two sections of 500: 10 steps from [0, 500), 5 from [500, 1000), ends included
  assert schedules.space_timesteps(1000, "10,5") == (
    [round(i * 499 / 9) for i in range(10)] + [500 + round(i * 499 / 4) for i in range(5)]
  )
  assert schedules.space_timesteps(1000, [999, 0, 500]) == [0, 500, 999]


def test_respaced_schedule_keeps_alpha_bar():
  full = schedules.make("cosine", 1000)
  short = schedules.make("cosine", 1000, respacing="ddim25")
  kept = np.arange(0, 1000, 40)
  assert short.num_timesteps == 25 and short.num_train_timesteps == 1000
  np.testing.assert_array_equal(short.timesteps, kept)
  np.testing.assert_allclose(short.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12)
  np.testing.assert_allclose(
    short.betas[1:], 1 - full.alphas_cumprod[kept][1:] / full.alphas_cumprod[kept][:-1], rtol=1e-12
  )


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: schedules.make("quadratic"), "unknown schedule"),
    (lambda: schedules.space_timesteps(1000, "ddim999"), "no integer stride"),
    (lambda: schedules.space_timesteps(10, "20"), "cannot take 20"),
    (lambda: schedules.space_timesteps(10, [3, 10]), "must lie in"),
  ],
)
def test_bad_specs_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
