"""The forward process, posterior, parameterizations and loss against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error

from jaxdiff import diffusion, schedules

SCHEDULE = schedules.make("cosine", 1000)


def test_q_sample_moments():
  n, t = 200_000, 300
  x0 = jnp.full((n, 1), 0.7)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  x_t = diffusion.q_sample(x0, jnp.full((n,), t), noise, schedule=SCHEDULE)
  ab = SCHEDULE.alphas_cumprod[t]
  # 5 standard errors of the mean and of the variance estimate of a Gaussian over n draws
  sd = np.sqrt(1 - ab)
  assert abs(float(x_t.mean()) - np.sqrt(ab) * 0.7) < 5 * sd / np.sqrt(n)
  assert abs(float(x_t.var()) - (1 - ab)) < 5 * (1 - ab) * np.sqrt(2 / n)


@pytest.mark.parametrize("t", [1, 17, 500, 999])
def test_posterior_is_gaussian_product(t):
  """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): precisions add, means weight by precision."""
  key0, key1 = jax.random.split(jax.random.key(1))
  x0 = jax.random.normal(key0, (4, 3))
  x_t = jax.random.normal(key1, (4, 3))
  a = 1 - SCHEDULE.betas[t]
  ab_prev = SCHEDULE.alphas_cumprod[t - 1]
  precision = 1 / (1 - ab_prev) + a / SCHEDULE.betas[t]
  mean = (np.sqrt(ab_prev) * x0 / (1 - ab_prev) + np.sqrt(a) * x_t / SCHEDULE.betas[t]) / precision
  got_mean, got_var, got_logvar = diffusion.q_posterior(
    x0, x_t, jnp.full((4,), t), schedule=SCHEDULE
  )
  assert relative_error(got_mean, mean) < 1e-5  # float32 tables and arithmetic
  np.testing.assert_allclose(got_var[:, 0], 1 / precision, rtol=1e-5)
  np.testing.assert_allclose(got_logvar[:, 0], np.log(1 / precision), rtol=1e-5)


def test_posterior_at_t0_is_x0():
  x0 = jnp.arange(6.0).reshape(2, 3)
  mean, var, _ = diffusion.q_posterior(x0, -x0, jnp.zeros((2,), jnp.int32), schedule=SCHEDULE)
  np.testing.assert_allclose(mean, x0, rtol=1e-6)
  assert float(var.max()) == 0.0


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_parameterizations_recover_x0_and_eps(prediction):
  k0, k1 = jax.random.split(jax.random.key(2))
  x0 = jax.random.normal(k0, (5, 8, 8, 3))
  eps = jax.random.normal(k1, x0.shape)
  t = jnp.array([0, 10, 200, 600, 990])
  x_t = diffusion.q_sample(x0, t, eps, schedule=SCHEDULE)
  out = diffusion.target(x0, eps, t, schedule=SCHEDULE, prediction=prediction)
  got_x0, got_eps = diffusion.x0_and_eps(out, x_t, t, schedule=SCHEDULE, prediction=prediction)
  # Recovering ε from x0 divides x_t − √ᾱ x0 by √(1−ᾱ); at t = 0 of the cosine schedule
  # 1 − ᾱ_0 ≈ 4e-5, which amplifies float32 rounding (~1e-7) about 160-fold: hence 5e-4.
  assert relative_error(got_x0, x0) < 5e-4 and relative_error(got_eps, eps) < 5e-4


def test_v_definition():
  x0, eps, t = jnp.ones((1, 2)), 2 * jnp.ones((1, 2)), jnp.array([400])
  ab = SCHEDULE.alphas_cumprod[400]
  v = diffusion.v_from_x0_eps(x0, eps, t, schedule=SCHEDULE)
  np.testing.assert_allclose(v, np.sqrt(ab) * 2 - np.sqrt(1 - ab), rtol=1e-6)


def test_mse_loss_of_oracle_and_zero_models():
  x0 = jax.random.uniform(jax.random.key(3), (64, 4, 4, 1), minval=-1, maxval=1)

  def oracle(x_t, t):  # knows x0, so recovers ε exactly
    ab = SCHEDULE.table("alphas_cumprod")[t][:, None, None, None]
    return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

  loss, _ = diffusion.mse_loss(jax.random.key(4), oracle, x0, schedule=SCHEDULE)
  assert float(loss) < 1e-6
  zero = lambda x_t, t: jnp.zeros_like(x_t)
  loss, per_example = diffusion.mse_loss(
    jax.random.key(4), zero, x0, schedule=SCHEDULE, prediction="x0"
  )
  np.testing.assert_allclose(per_example, jnp.mean(x0**2, axis=(1, 2, 3)), rtol=1e-6)
  weights = jnp.arange(64.0) % 2
  loss_w, per_w = diffusion.mse_loss(
    jax.random.key(4), zero, x0, schedule=SCHEDULE, prediction="x0", weights=weights
  )
  np.testing.assert_allclose(per_w, per_example, rtol=1e-6)  # reported before weighting
  np.testing.assert_allclose(loss_w, jnp.mean(per_example * weights), rtol=1e-6)


def test_mse_loss_of_zero_eps_model_is_noise_power():
  x0 = jnp.zeros((256, 8, 8, 3))
  loss, _ = diffusion.mse_loss(
    jax.random.key(5), lambda x, t: jnp.zeros_like(x), x0, schedule=SCHEDULE
  )
  n = x0.size  # E[ε²] = 1; 5 standard errors of a mean of n χ²₁ draws (variance 2)
  assert abs(float(loss) - 1.0) < 5 * np.sqrt(2 / n)


def test_uniform_timesteps():
  t = diffusion.sample_timesteps(jax.random.key(6), 100_000, schedule=schedules.make("cosine", 10))
  counts = np.bincount(np.asarray(t), minlength=10)
  assert counts.shape == (10,) and t.min() == 0 and t.max() == 9
  assert np.all(np.abs(counts - 10_000) < 5 * np.sqrt(10_000 * 0.9))


def test_unknown_prediction_is_an_error():
  with pytest.raises(ValueError, match="unknown prediction"):
    diffusion.target(
      jnp.ones(1), jnp.ones(1), jnp.zeros(1, jnp.int32), schedule=SCHEDULE, prediction="score"
    )


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_min_snr_weights_equal_capped_snr_times_x0_error(prediction):
  """Min-SNR-γ: every parameterization's weighted MSE is min(SNR, γ)·‖x̂0 − x0‖²."""
  k0, k1, k2 = jax.random.split(jax.random.key(7), 3)
  t = jnp.array([0, 50, 150, 400, 900])
  x0 = jax.random.normal(k0, (5, 4, 4, 1))
  eps = jax.random.normal(k1, x0.shape)
  x_t = diffusion.q_sample(x0, t, eps, schedule=SCHEDULE)
  target = diffusion.target(x0, eps, t, schedule=SCHEDULE, prediction=prediction)
  output = target + 0.1 * jax.random.normal(k2, x0.shape)  # a model with a known error
  x0_hat, _ = diffusion.x0_and_eps(output, x_t, t, schedule=SCHEDULE, prediction=prediction)
  w = diffusion.min_snr_weights(t, schedule=SCHEDULE, prediction=prediction, gamma=5.0)
  weighted = w * jnp.mean((output - target) ** 2, axis=(1, 2, 3))
  ab = SCHEDULE.alphas_cumprod[np.asarray(t)]
  expected = np.minimum(ab / (1 - ab), 5.0) * np.mean((np.asarray(x0_hat) - x0) ** 2, (1, 2, 3))
  # x̂0 is recomputed through float32 divisions by √ᾱ or √(1−ᾱ) (up to ~160× at t = 0).
  np.testing.assert_allclose(weighted, expected, rtol=2e-3)
