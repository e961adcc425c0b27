"""The variational bound of a discrete-time diffusion model, in bits per dimension.

Follows Ho et al. (2020) §3.3 and Nichol & Dhariwal (2021) §2.1 (their eqs. 4–7, L_vlb = L_0 + … +
L_T): L_T is the KL of q(x_T | x_0) to the N(0, I) prior, L_{t−1} (t ≥ 1) the KL of the true
posterior q(x_{t−1} | x_t, x_0) to the model's p_θ(x_{t−1} | x_t), and L_0 the negative
log-likelihood of 8-bit data under a Gaussian decoder discretized to the 256 bins of [−1, 1].
Everything is in nats per example until `bits_per_dim` divides by (number of dims · ln 2).

Schedule step index i (0 ≤ i < N) is the transition from x_{i} to x_{i+1} in the papers' 1-based
notation: step 0's reverse step is the decoder L_0.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxdiff import diffusion
from jaxdiff.schedules import Schedule


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (
    -1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
  )


def discretized_gaussian_log_likelihood(x, *, mean, log_scale):
  """log P(x) of data x ∈ {−1, −1 + 2/255, …, 1} under N(mean, e^{2·log_scale}) integrated over
  x's bin of width 2/255; the edge bins extend to ±∞ so the 256 probabilities sum to 1.

  Uses the exact normal CDF (log_ndtr), where ADM uses a tanh approximation of it.
  """
  inv_std = jnp.exp(-log_scale)
  upper = (x - mean + 1.0 / 255) * inv_std
  lower = (x - mean - 1.0 / 255) * inv_std
  upper = jnp.where(x > 0.999, jnp.inf, upper)
  lower = jnp.where(x < -0.999, -jnp.inf, lower)
  return _log_normal_mass(lower, upper)


def _log_normal_mass(lo, hi):
  """log(Φ(hi) − Φ(lo)) for lo < hi, stable in both tails: an interval in the upper tail is
  reflected, Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi), so Φ is only ever evaluated where it is ≤ 1/2
  at the larger end and the difference never cancels to 0 in float32."""
  flip = lo > 0
  a = jnp.where(flip, -hi, lo)
  b = jnp.where(flip, -lo, hi)
  log_b = jax.scipy.special.log_ndtr(b)
  return log_b + jnp.log1p(-jnp.exp(jax.scipy.special.log_ndtr(a) - log_b))


def model_log_variance(output_var, t, x, *, schedule: Schedule, variance: str):
  """log Σ_θ(x_t, t) for a fixed or learned variance (broadcastable against x).

  'learned_range' (improved DDPM eq. 15): the model's extra output v ∈ [−1, 1] interpolates
  log Σ = frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2. 'fixed_large' is β_t, with β̃_1
  at t = 0 as in ADM (the decoder needs a non-degenerate variance there); 'fixed_small' is β̃_t
  with the same substitution at t = 0 (the clipped table).
  """
  log_small = diffusion.extract(schedule, "posterior_log_variance_clipped", t, x)
  log_beta = jnp.log(diffusion.extract(schedule, "betas", t, x))
  if variance == "fixed_small":
    return jnp.broadcast_to(log_small, x.shape)
  if variance == "fixed_large":
    log_large = jnp.where((t == 0).reshape(log_beta.shape), log_small, log_beta)
    return jnp.broadcast_to(log_large, x.shape)
  if variance == "learned_range":
    return diffusion.learned_log_variance(output_var, log_beta=log_beta, log_small=log_small)
  raise ValueError(f"unknown variance {variance!r}; choose one of {diffusion.VARIANCES}.")


def vlb_term(
  output,
  x0,
  x_t,
  t,
  *,
  schedule: Schedule,
  prediction: str,
  variance: str,
  clip_denoised: bool = False,
):
  """L_{t} per example in nats: the posterior KL for t ≥ 1, the decoder NLL for t = 0.

  `output` is the model's output at (x_t, t): the prediction in the first C channels and, for
  'learned_range', the variance interpolation v in the next C.
  """
  channels = x0.shape[-1]
  pred, output_var = output[..., :channels], output[..., channels:]
  x0_hat, _ = diffusion.x0_and_eps(pred, x_t, t, schedule=schedule, prediction=prediction)
  if clip_denoised:
    x0_hat = jnp.clip(x0_hat, -1, 1)
  model_mean, _, _ = diffusion.q_posterior(x0_hat, x_t, t, schedule=schedule)
  model_logvar = model_log_variance(output_var, t, x_t, schedule=schedule, variance=variance)
  true_mean, _, true_logvar = diffusion.q_posterior(x0, x_t, t, schedule=schedule)
  axes = tuple(range(1, x0.ndim))
  kl = jnp.sum(normal_kl(true_mean, true_logvar, model_mean, model_logvar), axis=axes)
  decoder_nll = -jnp.sum(
    discretized_gaussian_log_likelihood(x0, mean=model_mean, log_scale=0.5 * model_logvar),
    axis=axes,
  )
  return jnp.where(t == 0, decoder_nll, kl)


def prior_kl(x0, *, schedule: Schedule):
  """L_T per example in nats: KL(q(x_N | x_0) ‖ N(0, I)); no parameters, ~0 for good schedules."""
  last = jnp.full((x0.shape[0],), schedule.num_timesteps - 1)
  a = diffusion.extract(schedule, "alphas_cumprod", last, x0)
  return jnp.sum(
    normal_kl(jnp.sqrt(a) * x0, jnp.log(1 - a), 0.0, 0.0), axis=tuple(range(1, x0.ndim))
  )


def bits_per_dim(
  key,
  model_fn: Callable,
  x0,
  *,
  schedule: Schedule,
  prediction: str = "epsilon",
  variance: str = "fixed_small",
  clip_denoised: bool = False,
):
  """The full bound over every step: (total, per-step terms (N, B), prior) in bits/dim.

  One `lax.scan` over the N steps, each drawing x_t ~ q(x_t | x_0) with fold_in(key, t): the
  standard single-sample estimate of each L_t, as in ADM's calc_bpd_loop.
  """
  dims = math.prod(x0.shape[1:])
  to_bits = 1.0 / (dims * math.log(2.0))

  def term(_, t_index):
    t = jnp.full((x0.shape[0],), t_index)
    noise = jax.random.normal(jax.random.fold_in(key, t_index), x0.shape, x0.dtype)
    x_t = diffusion.q_sample(x0, t, noise, schedule=schedule)
    out = model_fn(x_t, t)
    return None, vlb_term(
      out,
      x0,
      x_t,
      t,
      schedule=schedule,
      prediction=prediction,
      variance=variance,
      clip_denoised=clip_denoised,
    ) * to_bits

  _, terms = jax.lax.scan(term, None, jnp.arange(schedule.num_timesteps))
  prior = prior_kl(x0, schedule=schedule) * to_bits
  return jnp.sum(terms, axis=0) + prior, terms, prior


def hybrid_loss(
  key,
  model_fn: Callable,
  x0,
  *,
  schedule: Schedule,
  prediction: str = "epsilon",
  vlb_weight: float = 0.001,
  min_snr_gamma: float | None = None,
  t=None,
  weights=None,
):
  """L_hybrid = L_simple + λ·L_vlb (improved DDPM eq. 16, λ = 0.001) for a learned-variance model.

  `model_fn(x_t, t)` returns 2C channels: the prediction, then the variance interpolation v.
  L_vlb = Σ_t L_t is estimated by N·L_t at the sampled t (in bits/dim), so λ·L_vlb = λ·N·L_t;
  the mean enters L_vlb through a stop-gradient, so L_vlb trains only the variance and L_simple
  only the mean (the paper's §3.1). `t` replaces the uniform draw (e.g. importance-sampled) and
  `weights` scale each example. Returns (scalar loss, per-example losses before `weights`).
  """
  return _vlb_objective(
    key,
    model_fn,
    x0,
    schedule=schedule,
    prediction=prediction,
    simple_weight=1.0,
    vlb_weight=vlb_weight,
    min_snr_gamma=min_snr_gamma,
    t=t,
    weights=weights,
  )


def vlb_loss(
  key,
  model_fn: Callable,
  x0,
  *,
  schedule: Schedule,
  prediction: str = "epsilon",
  t=None,
  weights=None,
):
  """L_vlb alone (improved DDPM §3.3): N·L_t in bits/dim at the sampled t, its gradient reaching
  both the mean and the variance. Noisy under uniform t; meant for importance-sampled t.
  Returns (scalar loss, per-example losses before `weights`)."""
  return _vlb_objective(
    key,
    model_fn,
    x0,
    schedule=schedule,
    prediction=prediction,
    simple_weight=0.0,
    vlb_weight=1.0,
    min_snr_gamma=None,
    t=t,
    weights=weights,
  )


def _vlb_objective(
  key, model_fn, x0, *, schedule, prediction, simple_weight, vlb_weight, min_snr_gamma, t, weights
):
  """simple_weight·L_simple + vlb_weight·N·L_t; with simple_weight > 0 the mean is frozen in L_t."""
  channels = x0.shape[-1]
  key_t, key_noise = jax.random.split(key)
  if t is None:
    t = diffusion.sample_timesteps(key_t, x0.shape[0], schedule=schedule)
  noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
  x_t = diffusion.q_sample(x0, t, noise, schedule=schedule)
  out = model_fn(x_t, t).astype(jnp.float32)
  if out.shape[-1] != 2 * channels:
    raise ValueError("L_hybrid and L_vlb need a model with learned variances (learn_sigma=True).")
  per_example = 0.0
  if simple_weight:
    target = diffusion.target(x0, noise, t, schedule=schedule, prediction=prediction)
    axes = tuple(range(1, x0.ndim))
    simple = jnp.mean(jnp.square(out[..., :channels] - target.astype(jnp.float32)), axis=axes)
    if min_snr_gamma is not None:
      simple = simple * diffusion.min_snr_weights(
        t, schedule=schedule, prediction=prediction, gamma=min_snr_gamma
      )
    per_example = simple_weight * simple
    out = jnp.concatenate([jax.lax.stop_gradient(out[..., :channels]), out[..., channels:]], -1)
  vlb_bits = vlb_term(
    out, x0, x_t, t, schedule=schedule, prediction=prediction, variance="learned_range"
  ) / (math.prod(x0.shape[1:]) * math.log(2.0))
  per_example = per_example + vlb_weight * schedule.num_timesteps * vlb_bits
  if weights is None:
    return jnp.mean(per_example), per_example
  return jnp.mean(per_example * weights), per_example


def bits_per_dim_estimate(
  key,
  model_fn: Callable,
  x0,
  *,
  schedule: Schedule,
  num_timesteps: int,
  prediction: str = "epsilon",
  variance: str = "fixed_small",
):
  """An unbiased estimate of the bound from `num_timesteps` uniformly drawn steps per example:
  prior + (N / K)·Σ_k L_{t_k}, in bits/dim (per example). Cheaper than `bits_per_dim` by N/K."""
  dims = math.prod(x0.shape[1:])
  to_bits = 1.0 / (dims * math.log(2.0))

  def term(_, k):
    key_t, key_noise = jax.random.split(jax.random.fold_in(key, k))
    t = diffusion.sample_timesteps(key_t, x0.shape[0], schedule=schedule)
    x_t = diffusion.q_sample(
      x0, t, jax.random.normal(key_noise, x0.shape, x0.dtype), schedule=schedule
    )
    return None, vlb_term(
      model_fn(x_t, t), x0, x_t, t, schedule=schedule, prediction=prediction, variance=variance
    ) * to_bits

  _, terms = jax.lax.scan(term, None, jnp.arange(num_timesteps))
  scale = schedule.num_timesteps / num_timesteps
  return prior_kl(x0, schedule=schedule) * to_bits + scale * jnp.sum(terms, axis=0)
