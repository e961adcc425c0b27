"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), step for step as diffusers' DDPMScheduler."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import compute_dtype, split_output, step_variance, x0_and_eps_at
from jaxdiff.samplers.loop import call_model, check_variance, run_steps
from jaxdiff.schedules import Schedule, check_sampler_support


def ddpm(
  model_fn: Callable,
  schedule: Schedule,
  x_T,
  *,
  key=None,
  noise=None,
  variance: str = "fixed_small",
  prediction: str = "epsilon",
  clip_denoised: bool = True,
  clip_range: float = 1.0,
  return_trajectory: bool = False,
):
  """Samples x_0 from x_T ~ N(0, I) with one ancestral step per schedule step.

  `variance` is 'fixed_small' (the posterior variance β̃_t), 'fixed_large' (β_t) or
  'learned_range' (improved DDPM: the model's channels C…2C hold v ∈ [−1, 1] and
  log Σ = ½(v + 1)·log β_t + ½(1 − v)·log β̃_t). β_t is
  recomputed from the ᾱ table in the compute dtype, 1 − ᾱ_t/ᾱ_{t−1}, as diffusers does, so a
  respaced schedule (see `schedules.respace`) is sampled correctly and float32 trajectories match
  diffusers'. The model sees the original timesteps `schedule.timesteps`. No noise is added at the
  last step; `noise[i]` (shape (num_steps, *x_T.shape)) replays draws, else `key` is used.
  """
  check_variance(variance)
  check_sampler_support(schedule, prediction=prediction)
  dtype = compute_dtype(x_T)
  order = np.arange(schedule.num_timesteps - 1, -1, -1)
  alphas_cumprod = schedule.table("alphas_cumprod", dtype)
  a_prev_table = jnp.concatenate([jnp.ones((1,), alphas_cumprod.dtype), alphas_cumprod[:-1]])
  per_step = {
    "t": jnp.asarray(schedule.timesteps[order], jnp.int32),
    "a_t": alphas_cumprod[order],
    "a_prev": a_prev_table[order],
    "last": jnp.asarray(order == 0),
  }

  def step(x, s, z):
    out, model_var = split_output(call_model(model_fn, x, s["t"]), x.shape[-1], variance)
    a_t, a_prev = s["a_t"], s["a_prev"]
    b_t, b_prev = 1 - a_t, 1 - a_prev
    alpha_t = a_t / a_prev
    beta_t = 1 - alpha_t
    x0, _ = x0_and_eps_at(out, x, a_t, prediction=prediction)
    if clip_denoised:
      x0 = jnp.clip(x0, -clip_range, clip_range)
    mean = (jnp.sqrt(a_prev) * beta_t / b_t) * x0 + (jnp.sqrt(alpha_t) * b_prev / b_t) * x
    small = jnp.maximum(b_prev / b_t * beta_t, 1e-20)
    var = step_variance(variance, model_var, beta=beta_t, small=small)
    x_prev = jnp.where(s["last"], mean, mean + jnp.sqrt(var) * z)
    return x_prev.astype(x.dtype)

  return run_steps(step, x_T, per_step, key=key, noise=noise, return_trajectory=return_trajectory)
