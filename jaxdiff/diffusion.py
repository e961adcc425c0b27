"""The Gaussian diffusion process as pure functions of arrays and a `Schedule`.

`t` is always an integer array of step indices into the schedule's tables, one per example.
Coefficients are gathered in float32 (float64 when x is float64 and x64 is on) and results are
cast back to x's dtype, so bf16 activations do not degrade the schedule arithmetic.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdiff.schedules import Schedule

PREDICTIONS = ("epsilon", "x0", "v")
# σ² of a reverse step: the posterior variance β̃ ('fixed_small'), β ('fixed_large'), or improved
# DDPM's interpolation between the two by the model's extra output channels ('learned_range').
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def compute_dtype(x: jnp.ndarray):
  return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def extract(schedule: Schedule, name: str, t: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """schedule.<name>[t] shaped to broadcast against x (batch first)."""
  values = schedule.table(name, compute_dtype(x))[t]
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def q_sample(x0, t, noise, *, schedule: Schedule):
  """x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), reparameterized by `noise`."""
  a = extract(schedule, "sqrt_alphas_cumprod", t, x0)
  s = extract(schedule, "sqrt_one_minus_alphas_cumprod", t, x0)
  return (a * x0 + s * noise).astype(x0.dtype)


def learned_log_variance(model_var, *, log_beta, log_small):
  """Improved DDPM eq. 15: log Σ = frac·log β + (1 − frac)·log β̃ with frac = (v + 1)/2, where v ∈
  [−1, 1] is the model's variance output (its channels C…2C)."""
  frac = (model_var + 1) / 2
  return frac * log_beta + (1 - frac) * log_small


def split_output(output, channels: int, variance: str):
  """(prediction, variance output or None) of a model output with `channels` data channels.

  A learned-variance model returns 2C channels; 'learned_range' needs them.
  """
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}.")
  if variance == "learned_range":
    if output.shape[-1] != 2 * channels:
      raise ValueError("variance='learned_range' needs a model with learned variances.")
    return output[..., :channels], output[..., channels:]
  return output[..., :channels], None


def step_variance(variance: str, model_var, *, beta, small):
  """σ² of one reverse step from ᾱ_t to ᾱ_prev: 'fixed_small' is its posterior variance `small`,
  'fixed_large' its β, 'learned_range' the model's log-space interpolation of the two (β̃ floored
  at 1e-20, which is 0 at a step to ᾱ = 1)."""
  if variance == "fixed_small":
    return small
  if variance == "fixed_large":
    return beta
  log_small = jnp.log(jnp.maximum(small, 1e-20))
  return jnp.exp(learned_log_variance(model_var, log_beta=jnp.log(beta), log_small=log_small))


def q_posterior(x0, x_t, t, *, schedule: Schedule):
  """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
  mean = (
    extract(schedule, "posterior_mean_coef1", t, x_t) * x0
    + extract(schedule, "posterior_mean_coef2", t, x_t) * x_t
  )
  variance = extract(schedule, "posterior_variance", t, x_t)
  log_variance = extract(schedule, "posterior_log_variance_clipped", t, x_t)
  return mean.astype(x_t.dtype), variance, log_variance


def v_from_x0_eps(x0, eps, t, *, schedule: Schedule):
  """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022)."""
  a = extract(schedule, "sqrt_alphas_cumprod", t, x0)
  s = extract(schedule, "sqrt_one_minus_alphas_cumprod", t, x0)
  return (a * eps - s * x0).astype(x0.dtype)


def x0_and_eps(output, x_t, t, *, schedule: Schedule, prediction: str):
  """Both x_0 and ε implied by a model output of the given parameterization at steps t."""
  alpha_cumprod = extract(schedule, "alphas_cumprod", t, x_t)
  return x0_and_eps_at(output, x_t, alpha_cumprod, prediction=prediction)


def x0_and_eps_at(output, x_t, alpha_cumprod, *, prediction: str):
  """x_0 and ε from a model output, given ᾱ itself (broadcastable against x_t).

  Samplers use this form: they walk their own sequence of ᾱ values (DDIM's sub-sequence, the
  final ᾱ = 1), not the schedule's index space.
  """
  a, s = jnp.sqrt(alpha_cumprod), jnp.sqrt(1 - alpha_cumprod)
  if prediction == "epsilon":
    x0, eps = (x_t - s * output) / a, output
  elif prediction == "x0":
    x0, eps = output, (x_t - a * output) / s
  elif prediction == "v":
    x0, eps = a * x_t - s * output, a * output + s * x_t
  else:
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}.")
  return x0.astype(x_t.dtype), eps.astype(x_t.dtype)


def target(x0, noise, t, *, schedule: Schedule, prediction: str):
  """What a model of the given parameterization is trained to output."""
  if prediction == "epsilon":
    return noise
  if prediction == "x0":
    return x0
  if prediction == "v":
    return v_from_x0_eps(x0, noise, t, schedule=schedule)
  raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}.")


def snr(t, *, schedule: Schedule):
  """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at steps t (float32)."""
  ab = schedule.table("alphas_cumprod")[t]
  return ab / (1 - ab)


def min_snr_weights(t, *, schedule: Schedule, prediction: str, gamma: float = 5.0):
  """Min-SNR-γ loss weights (Hang et al. 2023): each parameterization's MSE reweighted so that it
  equals min(SNR, γ)·‖x̂0 − x0‖², which caps the weight of nearly noise-free steps and speeds
  convergence; per example."""
  s = snr(t, schedule=schedule)
  capped = jnp.minimum(s, gamma)
  if prediction == "epsilon":
    return capped / s
  if prediction == "x0":
    return capped
  if prediction == "v":
    return capped / (s + 1)
  raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}.")


def sample_timesteps(key, batch_size: int, *, schedule: Schedule):
  """t ~ Uniform{0, …, N−1}."""
  return jax.random.randint(key, (batch_size,), 0, schedule.num_timesteps)


def mse_loss(
  key,
  model_fn: Callable,
  x0,
  *,
  schedule: Schedule,
  prediction: str = "epsilon",
  weights=None,
  min_snr_gamma: float | None = None,
  t=None,
):
  """L_simple: E_t,ε ‖target − model(x_t, t)‖² averaged over pixels.

  `model_fn(x_t, t)` returns the prediction; when it returns twice the channels (a learned
  variance), the first half is the prediction. `t` (per example) replaces the uniform draw, e.g.
  by importance sampling; `weights` (per example) scale each example's loss and `min_snr_gamma`
  multiplies in the Min-SNR-γ weights of the timesteps. Returns (scalar loss, per-example losses
  before `weights`).
  """
  key_t, key_noise = jax.random.split(key)
  if t is None:
    t = sample_timesteps(key_t, x0.shape[0], schedule=schedule)
  noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
  x_t = q_sample(x0, t, noise, schedule=schedule)
  output = model_fn(x_t, t)[..., : x0.shape[-1]]
  error = output.astype(jnp.float32) - target(
    x0, noise, t, schedule=schedule, prediction=prediction
  ).astype(jnp.float32)
  per_example = jnp.mean(jnp.square(error), axis=tuple(range(1, x0.ndim)))
  if min_snr_gamma is not None:
    per_example = per_example * min_snr_weights(
      t, schedule=schedule, prediction=prediction, gamma=min_snr_gamma
    )
  if weights is None:
    return jnp.mean(per_example), per_example
  return jnp.mean(per_example * weights), per_example
