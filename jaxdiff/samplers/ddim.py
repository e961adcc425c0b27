"""DDIM sampling (Song et al. 2021), step for step as diffusers' DDIMScheduler."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import compute_dtype, split_output, step_variance, x0_and_eps_at
from jaxdiff.samplers.loop import call_model, check_full_schedule, check_variance, run_steps
from jaxdiff.schedules import Schedule, check_sampler_support

SPACINGS = ("leading", "trailing", "linspace")


def trailing_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
  """diffusers' 'trailing' grid, T − 1 down in steps of T/n (round(T − k·T/n) − 1, k = 0…n−1), as
  float64: always n timesteps.

  diffusers writes it np.round(np.arange(T, 0, −T/n)) − 1. That arange has n + 1 entries for some
  n (61, 103, …), the last a timestep −1, so only its first n are kept; the arange itself is kept
  because it accumulates the step differently from k·(T/n) and rounds some ties (T = 1000, n = 48:
  937.4999…) the other way, and the grid must be diffusers' to the timestep.
  """
  T = num_train_timesteps
  return np.round(np.arange(T, 0, -T / num_steps)[:num_steps]) - 1


def ddim_timesteps(
  num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
  """The decreasing timesteps DDIM visits, by diffusers' three spacings.

  'leading' (the DDIM paper's) is k·⌊T/n⌋ and never visits T−1; 'trailing' starts at T−1
  (Lin et al. 2024 recommend it; see `trailing_timesteps`); 'linspace' rounds an even grid over
  [0, T−1].
  """
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"num_steps must lie in [1, {num_train_timesteps}], got {num_steps}.")
  if spacing == "leading":
    steps = np.arange(num_steps) * (num_train_timesteps // num_steps) + steps_offset
  elif spacing == "trailing":
    steps = trailing_timesteps(num_train_timesteps, num_steps)
  elif spacing == "linspace":
    steps = np.linspace(0, num_train_timesteps - 1, num_steps).round()
  else:
    raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}.")
  return np.sort(steps.astype(np.int64))[::-1]


def ddim(
  model_fn: Callable,
  schedule: Schedule,
  x_T,
  *,
  num_steps: int = 50,
  eta: float = 0.0,
  variance: str = "fixed_small",
  spacing: str = "leading",
  steps_offset: int = 0,
  set_alpha_to_one: bool = True,
  prediction: str = "epsilon",
  clip_denoised: bool = True,
  clip_range: float = 1.0,
  use_clipped_model_output: bool = False,
  key=None,
  noise=None,
  return_trajectory: bool = False,
):
  """Samples x_0 from x_T with `num_steps` DDIM steps; η = 0 is deterministic, η = 1 is DDPM-like.

  Follows diffusers' semantics exactly: the step from t goes to t − ⌊T/n⌋ whatever the spacing
  (so 'linspace' lands between its own grid points), and the last step goes to ᾱ = 1 when
  `set_alpha_to_one`, else to ᾱ_0. With `use_clipped_model_output`, ε is recomputed from the
  clipped x_0 (ADM's DDIM). `schedule` must be un-respaced: DDIM chooses its own sub-sequence.

  `variance` sets the σ_t² that η scales, with β'_t = 1 − ᾱ_t/ᾱ_prev the step's β: 'fixed_small'
  is the step's posterior variance β̃'_t (the DDIM paper's and diffusers'), 'fixed_large' is β'_t,
  and 'learned_range' the model's interpolation v ∈ [−1, 1] between the two in log space (its
  channels C…2C, as in DDPM sampling) — jaxdiff's use of learned variances in DDIM; ADM's DDIM
  drops them. The direction term's variance 1 − ᾱ_prev − σ² is floored at 0 (σ² > 1 − ᾱ_prev
  happens for 'fixed_large'/'learned_range' with η near 1, and by one rounding for 'fixed_small'
  at η = 1 from ᾱ_t = 0, where diffusers' square root gives NaN). At η = 0 all three are DDIM.

  A zero-terminal-SNR schedule (ᾱ_{T−1} = 0) is sampled as diffusers does, with no special case:
  at ᾱ_t = 0, v-prediction gives x̂_0 = −v and ε̂ = x_t and x_0-prediction ε̂ = x_t, all finite
  (β' = 1 and β̃' = 1 − ᾱ_prev there); ε-prediction is refused (`check_sampler_support`).
  """
  check_variance(variance)
  check_sampler_support(schedule, prediction=prediction)
  check_full_schedule(schedule, "ddim")
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta}.")
  T = schedule.num_timesteps
  dtype = compute_dtype(x_T)
  timesteps = ddim_timesteps(T, num_steps, spacing, steps_offset)
  prev = timesteps - T // num_steps
  alphas_cumprod = schedule.table("alphas_cumprod", dtype)
  final = jnp.ones((), dtype) if set_alpha_to_one else alphas_cumprod[0]
  per_step = {
    "t": jnp.asarray(timesteps, jnp.int32),
    "a_t": alphas_cumprod[timesteps],
    "a_prev": jnp.where(jnp.asarray(prev >= 0), alphas_cumprod[np.maximum(prev, 0)], final),
  }

  def step(x, s, z):
    out, model_var = split_output(call_model(model_fn, x, s["t"]), x.shape[-1], variance)
    a_t, a_prev = s["a_t"], s["a_prev"]
    x0, eps = x0_and_eps_at(out, x, a_t, prediction=prediction)
    if clip_denoised:
      x0 = jnp.clip(x0, -clip_range, clip_range)
      if use_clipped_model_output:
        eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1 - a_t)
    beta = 1 - a_t / a_prev
    small = (1 - a_prev) / (1 - a_t) * beta
    std = eta * jnp.sqrt(step_variance(variance, model_var, beta=beta, small=small))
    # For 'fixed_small' this is (1 − ᾱ_prev)(1 − η² + η²·ᾱ_t(1 − ᾱ_prev)/(ᾱ_prev(1 − ᾱ_t))) ≥ 0,
    # but exactly 0 at η = 1 and ᾱ_t = 0 (a zero-terminal-SNR schedule's first step), where
    # σ² = √(1 − ᾱ_prev)² rounds above 1 − ᾱ_prev for about half of all step counts (a NaN
    # below). The floor leaves every value ≥ 0 as it is.
    direction = jnp.maximum(1 - a_prev - std**2, 0.0)
    x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(direction) * eps
    if eta > 0:
      x_prev = x_prev + std * z
    return x_prev.astype(x.dtype)

  return run_steps(
    step,
    x_T,
    per_step,
    key=key,
    noise=noise,
    needs_noise=eta > 0,
    return_trajectory=return_trajectory,
  )
