"""The variational bound against closed forms (improved DDPM §2.1, ADM's definitions)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import diffusion, likelihood, schedules

SCHEDULE = schedules.make("linear", 50)


def test_normal_kl_closed_form():
  # KL(N(1, 2) ‖ N(0, 1)) = ½(−1 + 0 − ln 2 + 2 + 1)
  got = likelihood.normal_kl(1.0, math.log(2.0), 0.0, 0.0)
  np.testing.assert_allclose(got, 0.5 * (2 - math.log(2.0)), rtol=1e-6)
  assert float(likelihood.normal_kl(0.3, -1.0, 0.3, -1.0)) == 0.0


def test_discretized_likelihood_is_a_distribution_over_256_bins():
  bins = -1 + 2 * jnp.arange(256) / 255
  for mean, log_scale in [(0.0, 0.0), (0.9, -3.0), (-1.2, -2.0), (0.4, -6.0), (0.5, 1.0)]:
    logp = likelihood.discretized_gaussian_log_likelihood(bins, mean=mean, log_scale=log_scale)
    # float32 log-probabilities summed over 256 bins: ~1e-6 relative per term
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp)), 1.0, rtol=1e-5)
    # the interior bin nearest the mean equals Φ(upper) − Φ(lower) computed by SciPy in float64
    k = int(np.clip(round((mean + 1) * 255 / 2), 1, 254))
    edges = (np.array([-1, 1]) / 255 + float(bins[k]) - mean) / math.exp(log_scale)
    expected = math.log(stats.norm.cdf(edges[1]) - stats.norm.cdf(edges[0]))
    np.testing.assert_allclose(logp[k], expected, rtol=1e-4, atol=1e-6)


def test_delta_at_a_bin_centre_has_probability_one():
  x = -1 + 2 * jnp.array([3.0, 128.0, 254.0]) / 255
  logp = likelihood.discretized_gaussian_log_likelihood(x, mean=x, log_scale=math.log(1e-4))
  np.testing.assert_allclose(jnp.exp(logp), 1.0, atol=1e-6)


def test_far_tail_bins_stay_finite():
  logp = likelihood.discretized_gaussian_log_likelihood(
    jnp.array([0.5, -0.5]), mean=jnp.array([-0.5, 0.5]), log_scale=math.log(0.05)
  )
  assert np.all(np.isfinite(logp)) and np.all(logp < -150)  # 20 standard deviations away


def test_prior_kl_closed_form():
  # a two-step process that keeps signal (ᾱ = 0.72), so the prior term is far from 0
  short = schedules.Schedule(
    betas=np.array([0.1, 0.2]), timesteps=np.arange(2), num_train_timesteps=2
  )
  x0 = jnp.full((1, 2, 2, 1), 0.5)
  a = 0.9 * 0.8
  per_dim = 0.5 * (-1 - math.log(1 - a) + (1 - a) + a * 0.25)  # KL(N(√ᾱ x0, 1−ᾱ) ‖ N(0, 1))
  np.testing.assert_allclose(likelihood.prior_kl(x0, schedule=short), 4 * per_dim, rtol=1e-5)


def test_true_posterior_gives_zero_kl_and_the_closed_form_bound():
  """An oracle that returns the true ε makes every L_t (t ≥ 1) vanish; what is left is the
  decoder's NLL of N(x0, β̃_1) over x0's bin, plus the prior term."""
  k = jnp.array([[0, 60, 128], [200, 255, 17]])
  x0 = (-1 + 2 * k / 255).astype(jnp.float32).reshape(2, 1, 3, 1)
  key = jax.random.key(0)

  def oracle(x_t, t):
    ab = SCHEDULE.table("alphas_cumprod")[t][:, None, None, None]
    return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

  total, terms, prior = likelihood.bits_per_dim(key, oracle, x0, schedule=SCHEDULE)
  assert terms.shape == (50, 2)
  # KL of two equal Gaussians, up to float32 rounding of means divided by variances ≥ β̃_1
  assert float(jnp.max(jnp.abs(terms[1:]))) < 1e-4
  sigma = math.sqrt(SCHEDULE.posterior_variance[1])
  x = np.asarray(x0).reshape(2, 3)
  lo = np.where(x < -0.999, -np.inf, -1 / 255 / sigma)
  hi = np.where(x > 0.999, np.inf, 1 / 255 / sigma)
  decoder_bits = -np.log2(stats.norm.cdf(hi) - stats.norm.cdf(lo)).sum(axis=1) / 3
  np.testing.assert_allclose(terms[0], decoder_bits, rtol=1e-4)
  a = SCHEDULE.alphas_cumprod[-1]
  prior_bits = (0.5 * (-1 - np.log(1 - a) + (1 - a) + a * x**2)).sum(axis=1) / 3 / math.log(2)
  np.testing.assert_allclose(prior, prior_bits, rtol=1e-4)
  np.testing.assert_allclose(total, decoder_bits + prior_bits, rtol=1e-4, atol=1e-4)


def test_learned_range_interpolates_the_two_fixed_variances():
  t = jnp.array([1, 10, 40])
  x = jnp.zeros((3, 1, 1, 1))
  small = likelihood.model_log_variance(None, t, x, schedule=SCHEDULE, variance="fixed_small")
  for v, expected in [(-1.0, small), (1.0, jnp.log(SCHEDULE.betas[np.asarray(t)]))]:
    got = likelihood.model_log_variance(
      jnp.full_like(x, v), t, x, schedule=SCHEDULE, variance="learned_range"
    )
    np.testing.assert_allclose(got.reshape(-1), jnp.reshape(expected, -1), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown variance"):
    likelihood.model_log_variance(None, t, x, schedule=SCHEDULE, variance="learned")


def test_mismatched_mean_costs_the_gaussian_kl():
  """A model whose x̂0 is off by δ pays KL = (coef1·δ)²/(2β̃_t) per dim at step t ≥ 1."""
  x0 = jnp.zeros((1, 1, 1, 1))
  t = jnp.array([20])
  eps = jnp.ones_like(x0)
  x_t = diffusion.q_sample(x0, t, eps, schedule=SCHEDULE)
  delta = 0.1
  out = diffusion.target(x0 + delta, eps, t, schedule=SCHEDULE, prediction="x0")
  got = likelihood.vlb_term(
    out, x0, x_t, t, schedule=SCHEDULE, prediction="x0", variance="fixed_small"
  )
  coef1 = SCHEDULE.posterior_mean_coef1[20]
  expected = (coef1 * delta) ** 2 / (2 * SCHEDULE.posterior_variance[20])
  # the KL squares a difference of float32 means (~5e-3 apart, each ~1): ~1e-4 relative, twice
  np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_hybrid_loss_trains_the_mean_by_l_simple_only():
  x0 = jnp.linspace(-1, 1, 32).reshape(2, 4, 4, 1)
  key = jax.random.key(3)

  def model(params):
    return lambda x_t, t: jnp.concatenate([params["a"] * x_t, params["b"] * jnp.ones_like(x_t)], -1)

  params = {"a": jnp.array(0.3), "b": jnp.array(0.2)}
  hybrid = lambda p: likelihood.hybrid_loss(key, model(p), x0, schedule=SCHEDULE)[0]
  simple = lambda p: diffusion.mse_loss(
    key, lambda x, t: model(p)(x, t)[..., :1], x0, schedule=SCHEDULE
  )[0]
  g_hybrid, g_simple = jax.grad(hybrid)(params), jax.grad(simple)(params)
  # the stop-gradient: L_vlb sends nothing to the mean, so its gradient is L_simple's alone
  np.testing.assert_allclose(g_hybrid["a"], g_simple["a"], rtol=1e-6)
  assert float(g_simple["b"]) == 0.0 and float(g_hybrid["b"]) != 0.0
  # the value: L_simple + λ·N·L_t in bits/dim at the same t, x_t
  t = diffusion.sample_timesteps(jax.random.split(key)[0], 2, schedule=SCHEDULE)
  noise = jax.random.normal(jax.random.split(key)[1], x0.shape)
  x_t = diffusion.q_sample(x0, t, noise, schedule=SCHEDULE)
  vlb = likelihood.vlb_term(
    model(params)(x_t, t),
    x0,
    x_t,
    t,
    schedule=SCHEDULE,
    prediction="epsilon",
    variance="learned_range",
  )
  expected = simple(params) + 0.001 * 50 * jnp.mean(vlb) / (16 * math.log(2))
  np.testing.assert_allclose(hybrid(params), expected, rtol=1e-5)


def test_hybrid_loss_needs_learned_variances():
  with pytest.raises(ValueError, match="learn_sigma"):
    likelihood.hybrid_loss(
      jax.random.key(0), lambda x, t: x, jnp.zeros((1, 2, 2, 1)), schedule=SCHEDULE
    )


@pytest.mark.parametrize("v, fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_ddpm_learned_range_at_the_ends_is_the_fixed_variance(v, fixed):
  from jaxdiff import samplers

  eps_model = lambda x, t: 0.1 * x + 0.05 * jnp.sin(t / 10.0)[:, None, None, None]
  learned = lambda x, t: jnp.concatenate([eps_model(x, t), jnp.full_like(x, v)], -1)
  x_T = jax.random.normal(jax.random.key(4), (2, 4, 4, 1))
  noise = jax.random.normal(jax.random.key(5), (50,) + x_T.shape)
  a = samplers.ddpm(learned, SCHEDULE, x_T, noise=noise, variance="learned_range")
  b = samplers.ddpm(eps_model, SCHEDULE, x_T, noise=noise, variance=fixed)
  # exp(log σ²) of a clipped-at-1e-20 variance against σ² itself: float32 rounding per step
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("v, fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_ddim_learned_range_at_the_ends_is_the_fixed_variance(v, fixed):
  from jaxdiff import samplers

  full = schedules.make("linear", 1000)
  eps_model = lambda x, t: 0.1 * x + 0.05 * jnp.sin(t / 100.0)[:, None, None, None]
  learned = lambda x, t: jnp.concatenate([eps_model(x, t), jnp.full_like(x, v)], -1)
  x_T = jax.random.normal(jax.random.key(6), (2, 4, 4, 1))
  noise = jax.random.normal(jax.random.key(7), (10,) + x_T.shape)
  kwargs = dict(num_steps=10, eta=0.7, noise=noise)
  a = samplers.ddim(learned, full, x_T, variance="learned_range", **kwargs)
  b = samplers.ddim(eps_model, full, x_T, variance=fixed, **kwargs)
  # exp(log σ²) against σ² itself: float32 rounding per step, over 10 steps
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_ddim_fixed_large_step_closed_form():
  """One η-scaled DDIM step with σ² = η²·β' = η²(1 − ᾱ_t/ᾱ_prev), β' the step's β, by hand."""
  from jaxdiff import samplers

  full = schedules.make("linear", 1000)
  x_T = jnp.full((1, 1, 1, 1), 0.8)
  z = jnp.full((4, 1, 1, 1, 1), -0.4)
  trajectory = samplers.ddim(
    lambda x, t: 0.1 * x,
    full,
    x_T,
    num_steps=4,
    eta=0.5,
    variance="fixed_large",
    noise=z,
    clip_denoised=False,
    return_trajectory=True,
  )
  a_t, a_prev = full.alphas_cumprod[750], full.alphas_cumprod[500]  # 'leading': 750 → 500
  eps = 0.08
  x0 = (0.8 - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
  var = 0.25 * (1 - a_t / a_prev)
  expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - var) * eps + np.sqrt(var) * -0.4
  # float32 against float64 over a handful of operations
  np.testing.assert_allclose(trajectory[0, 0, 0, 0, 0], expected, rtol=1e-5)


def test_vlb_loss_trains_mean_and_variance_and_is_n_times_l_t():
  x0 = jnp.linspace(-1, 1, 32).reshape(2, 4, 4, 1)
  key = jax.random.key(8)

  def model(params):
    return lambda x_t, t: jnp.concatenate([params["a"] * x_t, params["b"] * jnp.ones_like(x_t)], -1)

  params = {"a": jnp.array(0.3), "b": jnp.array(0.2)}
  t = jnp.array([5, 30])
  loss = lambda p: likelihood.vlb_loss(key, model(p), x0, schedule=SCHEDULE, t=t)[0]
  grads = jax.grad(loss)(params)
  assert float(grads["a"]) != 0.0 and float(grads["b"]) != 0.0  # no stop-gradient on the mean
  noise = jax.random.normal(jax.random.split(key)[1], x0.shape)
  x_t = diffusion.q_sample(x0, t, noise, schedule=SCHEDULE)
  terms = likelihood.vlb_term(
    model(params)(x_t, t),
    x0,
    x_t,
    t,
    schedule=SCHEDULE,
    prediction="epsilon",
    variance="learned_range",
  )
  expected = 50 * terms / (16 * math.log(2))
  weights = jnp.array([0.5, 2.0])
  got, per_example = likelihood.vlb_loss(
    key, model(params), x0, schedule=SCHEDULE, t=t, weights=weights
  )
  # the same float32 computation twice
  np.testing.assert_allclose(per_example, expected, rtol=1e-6)
  np.testing.assert_allclose(got, jnp.mean(expected * weights), rtol=1e-6)
