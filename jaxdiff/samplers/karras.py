"""The σ-space solvers of Karras et al. (2022) on a discrete-time model, as diffusers runs them.

A VP model ε(x_t, t) with x_t = √ᾱ x_0 + √(1−ᾱ) ε is an ODE in σ = √((1−ᾱ)/ᾱ) for x = x_t/√ᾱ:
dx/dσ = (x − x̂_0)/σ. `euler`, `heun` and `euler_ancestral` step that equation step for step as
diffusers' EulerDiscreteScheduler, HeunDiscreteScheduler and EulerAncestralDiscreteScheduler:
the model sees x/√(σ²+1) at the (possibly fractional) timestep of each σ, and the last step
goes to σ = 0. x_T is a unit-variance draw; the samplers scale it by diffusers'
`init_noise_sigma` (σ_max, or √(σ_max² + 1) for 'leading' spacing).

On a zero-terminal-SNR schedule (ᾱ_{T−1} = 0, σ = ∞) the last ᾱ is taken to be 2⁻²⁴ as diffusers'
schedulers do with `rescale_betas_zero_snr` (`schedules.sigma_alphas_cumprod`): 'trailing' spacing
then starts from σ ≈ 4096. ε-prediction is refused there (`schedules.check_sampler_support`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import compute_dtype, split_output
from jaxdiff.samplers.ddim import SPACINGS, trailing_timesteps
from jaxdiff.samplers.loop import call_model, check_choice, check_full_schedule, run_steps
from jaxdiff.samplers.sigmas import (
  check_num_steps,
  check_prediction,
  karras_sigmas,
  sigma_to_t,
  train_sigmas,
)
from jaxdiff.schedules import Schedule


def sigma_timesteps(num_train_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
  """The decreasing float64 timesteps diffusers' Euler-type schedulers start from.

  'leading' is k·⌊T/n⌋, 'trailing' round(T − k·T/n) − 1 and 'linspace' an even grid over [0, T−1]
  that, unlike DDIM's, is not rounded (so the model may be called between training steps).
  'trailing' is DDIM's (`trailing_timesteps`): n steps for every n, where diffusers' grid has
  n + 1 for some n (61, 103, …), the last a timestep −1.
  """
  check_choice("spacing", spacing, SPACINGS)
  check_num_steps(num_steps, num_train_timesteps)
  k = np.arange(num_steps, dtype=np.float64)
  T = num_train_timesteps
  if spacing == "leading":
    return (k * (T // num_steps))[::-1].copy()
  if spacing == "trailing":
    return trailing_timesteps(T, num_steps)
  return np.linspace(0, T - 1, num_steps, dtype=np.float64)[::-1].copy()


def sigma_grid(
  schedule: Schedule, *, num_steps: int, spacing: str = "leading", use_karras_sigmas: bool = False
) -> tuple[np.ndarray, np.ndarray]:
  """(timesteps (n,), σ (n + 1,)) in float64: the model's times and the σ grid ending at 0.

  σ at a timestep is interpolated linearly in σ between training steps (diffusers'
  interpolation_type 'linear'). Karras σ span the σ of the spacing's first and last timesteps,
  not the training table's ends (so 'trailing' never reaches σ_0), and each is mapped back to a
  fractional timestep by `sigma_to_t`.
  """
  check_full_schedule(schedule, "the Karras σ grid")
  T = schedule.num_timesteps
  timesteps = sigma_timesteps(T, num_steps, spacing)
  table = train_sigmas(schedule)
  sigmas = np.interp(timesteps, np.arange(T), table)
  if use_karras_sigmas:
    sigmas = karras_sigmas(sigmas[0], sigmas[-1], num_steps)
    timesteps = sigma_to_t(sigmas, np.log(table))
  return timesteps, np.append(sigmas, 0.0)


def init_noise_sigma(sigmas: np.ndarray, spacing: str) -> float:
  """diffusers' scale of x_T: σ_max, or √(σ_max² + 1) for 'leading' (whose first step is not T−1)."""
  sigma_max = float(np.max(sigmas))
  return sigma_max if spacing in ("linspace", "trailing") else float(np.sqrt(sigma_max**2 + 1))


def _denoised(output, x, sigma, prediction: str):
  """x̂_0 from a model output at σ, in diffusers' σ-space algebra (x = x_t·√(σ² + 1))."""
  if prediction == "epsilon":
    return x - sigma * output
  if prediction == "v":
    return output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
  return output


def _derivative(model_fn, x, sigma, t, *, prediction: str, model_dtype):
  """dx/dσ = (x − x̂_0)/σ with the model called on x/√(σ² + 1) at timestep t."""
  x_in = (x / (sigma**2 + 1) ** 0.5).astype(model_dtype)
  output = call_model(model_fn, x_in, t)
  output, _ = split_output(output, x.shape[-1], "fixed_small")  # drop learned-variance channels
  x0 = _denoised(output.astype(x.dtype), x, sigma, prediction)
  return (x - x0) / sigma


class _Run(NamedTuple):
  """What the three samplers set up alike: the grid, x_T scaled to σ_max, the slope dx/dσ."""

  timesteps: np.ndarray
  sigmas: np.ndarray
  dtype: Any  # the carry's: diffusers steps in float32 whatever the model's dtype
  x: jax.Array
  slope: Callable  # slope(x, σ, t)
  model_dtype: Any

  def per_step(self, **tables) -> dict:
    """The model times and each step's σ, with `tables`, per step in the compute dtype."""
    tables = {"t": self.timesteps, "sigma": self.sigmas[:-1], **tables}
    return {k: jnp.asarray(v, self.dtype) for k, v in tables.items()}

  def scan(self, step, x_T, per_step, **options):
    """`run_steps` from the scaled x_T; the images come back in x_T's dtype."""

    def read(carry):
      return carry.astype(self.model_dtype)

    return run_steps(step, x_T, per_step, init=self.x, read=read, **options)


def _prepare(model_fn, schedule, x_T, num_steps, spacing, use_karras_sigmas, prediction) -> _Run:
  check_prediction(schedule, prediction)
  timesteps, sigmas = sigma_grid(
    schedule, num_steps=num_steps, spacing=spacing, use_karras_sigmas=use_karras_sigmas
  )
  dtype = compute_dtype(x_T)
  model_dtype = jnp.asarray(x_T).dtype
  x = jnp.asarray(x_T).astype(dtype) * jnp.asarray(init_noise_sigma(sigmas, spacing), dtype)

  def slope(y, sigma, t):
    return _derivative(model_fn, y, sigma, t, prediction=prediction, model_dtype=model_dtype)

  return _Run(timesteps, sigmas, dtype, x, slope, model_dtype)


def euler(
  model_fn: Callable,
  schedule: Schedule,
  x_T,
  *,
  num_steps: int = 50,
  spacing: str = "leading",
  use_karras_sigmas: bool = False,
  prediction: str = "epsilon",
  return_trajectory: bool = False,
):
  """Euler's method on dx/dσ from σ_max to 0: diffusers' EulerDiscreteScheduler with s_churn = 0.

  One model call per step; deterministic. `prediction` is 'epsilon', 'v' or 'x0' (diffusers'
  "sample"). Returns x_0 in x_T's dtype, or the image after every step (num_steps, *x_T.shape).
  """
  run = _prepare(model_fn, schedule, x_T, num_steps, spacing, use_karras_sigmas, prediction)

  def step(x, s, _):
    return x + run.slope(x, s["sigma"], s["t"]) * (s["sigma_next"] - s["sigma"])

  per_step = run.per_step(sigma_next=run.sigmas[1:])
  return run.scan(step, x_T, per_step, needs_noise=False, return_trajectory=return_trajectory)


def heun(
  model_fn: Callable,
  schedule: Schedule,
  x_T,
  *,
  num_steps: int = 50,
  spacing: str = "leading",
  use_karras_sigmas: bool = False,
  prediction: str = "epsilon",
  return_trajectory: bool = False,
):
  """Heun's method (Karras et al. Algorithm 1, no churn): diffusers' HeunDiscreteScheduler.

  diffusers interleaves its grid ([σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, 0] and timesteps likewise)
  and keeps the predictor's derivative, step and sample between its `step` calls; here one scan
  step does both evaluations: an Euler predictor to σ_{i+1}, then the model at (x̂, σ_{i+1},
  t_{i+1}) and the average slope from x. The last step, to σ = 0, is Euler alone, so a run makes
  2n − 1 model calls. Returns x_0, or the image after every full step (num_steps, *x_T.shape).
  """
  run = _prepare(model_fn, schedule, x_T, num_steps, spacing, use_karras_sigmas, prediction)
  timesteps = run.timesteps

  def step(x, s, _):
    d = run.slope(x, s["sigma"], s["t"])
    dt = s["sigma_next"] - s["sigma"]
    x_pred = x + d * dt

    def correct():
      d_next = run.slope(x_pred, s["sigma_next"], s["t_next"])
      return x + (d + d_next) / 2 * dt

    # A real branch, not a select: the last step must not call the model at σ = 0.
    return jax.lax.cond(s["last"], lambda: x_pred, correct)

  per_step = run.per_step(
    # the corrector's time; the last step has none (its entry is never used)
    t_next=np.append(timesteps[1:], timesteps[-1]),
    sigma_next=run.sigmas[1:],
  )
  per_step["last"] = jnp.arange(len(timesteps)) == len(timesteps) - 1
  return run.scan(step, x_T, per_step, needs_noise=False, return_trajectory=return_trajectory)


def euler_ancestral(
  model_fn: Callable,
  schedule: Schedule,
  x_T,
  *,
  num_steps: int = 50,
  spacing: str = "leading",
  use_karras_sigmas: bool = False,
  prediction: str = "epsilon",
  key=None,
  noise=None,
  return_trajectory: bool = False,
):
  """Ancestral Euler: diffusers' EulerAncestralDiscreteScheduler (k-diffusion's euler_ancestral).

  Each step goes from σ to σ_down = σ_next²/σ deterministically and adds σ_up·z with
  σ_up² = σ_next²(σ² − σ_next²)/σ², so the marginal noise level is σ_next. Every step draws z,
  the last one too (its σ_up is 0), so `noise[i]` (shape (num_steps, *x_T.shape)) is diffusers'
  draw of step i; otherwise z comes from `fold_in(key, i)`. diffusers' ancestral scheduler has
  neither Karras σ nor 'sample' prediction; here both follow from the same σ grid and algebra as
  `euler` ('x0' is its "sample").
  """
  run = _prepare(model_fn, schedule, x_T, num_steps, spacing, use_karras_sigmas, prediction)
  sigma, sigma_next = run.sigmas[:-1], run.sigmas[1:]
  sigma_up = np.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
  # = √(σ_next² − σ_up²), diffusers' form, without its cancellation
  sigma_down = sigma_next**2 / sigma

  def step(x, s, z):
    x = x + run.slope(x, s["sigma"], s["t"]) * (s["sigma_down"] - s["sigma"])
    return x + z.astype(run.dtype) * s["sigma_up"]

  per_step = run.per_step(sigma_up=sigma_up, sigma_down=sigma_down)
  return run.scan(step, x_T, per_step, key=key, noise=noise, return_trajectory=return_trajectory)
