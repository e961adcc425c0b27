"""The σ grids diffusers' schedulers walk on a flow model (`jaxdiff.flow`: x_σ = (1 − σ)x_0 + σε,
σ = 1 pure noise), and the checks of the options that shape them.

Each scheduler spaces its grid in its own way and then shifts it: SD3's σ' = sσ/(1 + (s − 1)σ)
with a fixed `shift` s, or, with `use_dynamic_shifting`, Flux's resolution-dependent shift by μ
(`time_shift_type` 'exponential': s = e^μ; 'linear': s = μ). The model is called at t = σ·1000,
as diffusers calls its flow transformers (`flow.TIME_SCALE`); the multistep schedulers truncate
that time to an integer. All of it is NumPy float64, picked before the loop whatever the compute
dtype.
"""

from __future__ import annotations

import math

import numpy as np

from jaxdiff import flow
from jaxdiff.preconditioning import karras_sigmas
from jaxdiff.samplers.loop import check_choice

# diffusers' num_train_timesteps of its flow schedulers: σ = t / T on their training table
NUM_TRAIN_TIMESTEPS = int(flow.TIME_SCALE)
TIME_SHIFT_TYPES = ("exponential", "linear")
# UniPC moves a first σ of 1 (α = 0, λ = −∞) down by this much, as diffusers does
UNIPC_FIRST_SIGMA_OFFSET = 1e-6


def check_num_steps(num_steps) -> None:
  """TypeError unless num_steps is an integer (not a bool), ValueError below 1."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise TypeError(f"num_steps must be an integer, got {num_steps!r}.")
  if num_steps < 1:
    raise ValueError(f"num_steps must be at least 1, got {num_steps}.")


def check_shift(
  shift: float,
  use_dynamic_shifting: bool,
  mu: float | None,
  time_shift_type: str = "exponential",
) -> None:
  """ValueError naming the problem with a flow grid's shift options: shift ≤ 0, dynamic shifting
  without μ, or an option that has no effect (μ or a time_shift_type without dynamic shifting, a
  shift beside it)."""
  check_choice("time_shift_type", time_shift_type, TIME_SHIFT_TYPES)
  if not shift > 0:
    raise ValueError(f"the flow shift must be > 0 (1 is no shift, SD3 uses 3), got {shift}.")
  if not use_dynamic_shifting:
    if mu is not None:
      raise ValueError("mu has no effect without use_dynamic_shifting=True; leave it unset.")
    if time_shift_type != "exponential":
      raise ValueError("time_shift_type has no effect without use_dynamic_shifting=True.")
    return
  if mu is None:
    raise ValueError(
      "use_dynamic_shifting needs mu, the shift's exponent (Flux: 0.5 at 256 image tokens up to "
      "1.15 at 4096); pass mu."
    )
  if shift != 1.0:
    raise ValueError("the flow shift has no effect with use_dynamic_shifting (mu sets it); use 1.")
  if time_shift_type == "linear" and not mu > 0:
    raise ValueError(f"the linear time shift μ/(μ + 1/σ − 1) needs mu > 0, got {mu}.")


def shift_factor(shift: float, use_dynamic_shifting: bool, mu, time_shift_type: str) -> float:
  """The s of σ' = sσ/(1 + (s − 1)σ) the options amount to: `shift`, or for the dynamic shift
  e^μ (exponential, e^μ/(e^μ + 1/σ − 1)) or μ (linear, μ/(μ + 1/σ − 1))."""
  if not use_dynamic_shifting:
    return float(shift)
  return math.exp(mu) if time_shift_type == "exponential" else float(mu)


def euler_grid(
  num_steps: int,
  *,
  shift: float = 1.0,
  use_dynamic_shifting: bool = False,
  mu: float | None = None,
  time_shift_type: str = "exponential",
  use_karras_sigmas: bool = False,
):
  """(model times (n,), σ (n + 1,)) of FlowMatchEulerDiscreteScheduler's `set_timesteps`.

  The scheduler's training table σ = t/1000, t = 1000 … 1, is shifted once when it is built
  (without dynamic shifting), and the grid, evenly spaced in t between that table's ends, is shifted
  again: with shift s it ends at shift(shift(0.001)), as diffusers' does. With `use_karras_sigmas`
  the shifted grid's ends are respaced by Karras et al.'s ρ = 7. The times are σ·1000 and the grid
  ends at 0. FlowMatchHeunDiscreteScheduler's grid is this one without the dynamic shift and
  Karras σ's.
  """
  check_num_steps(num_steps)
  check_shift(shift, use_dynamic_shifting, mu, time_shift_type)
  T = NUM_TRAIN_TIMESTEPS
  sigma_max, sigma_min = 1.0, 1.0 / T
  if not use_dynamic_shifting:
    sigma_max, sigma_min = flow.shift(sigma_max, shift), flow.shift(sigma_min, shift)
  sigmas = np.linspace(sigma_max * T, sigma_min * T, num_steps) / T
  sigmas = flow.shift(sigmas, shift_factor(shift, use_dynamic_shifting, mu, time_shift_type))
  if use_karras_sigmas:
    sigmas = karras_sigmas(sigmas[0], sigmas[-1], num_steps)
  return sigmas * T, np.append(sigmas, 0.0)


def unipc_grid(
  num_steps: int,
  *,
  shift: float = 1.0,
  use_dynamic_shifting: bool = False,
  mu: float | None = None,
  final_sigmas_type: str = "zero",
):
  """(integer model times (n,), σ (n + 1,)) of UniPCMultistepScheduler's `set_timesteps` with
  `use_flow_sigmas=True`: n of the n + 1 points evenly spaced over [1, 1/1000], shifted (the dynamic
  shift is the exponential one), a first σ of 1 moved to 1 − 10⁻⁶, the model times σ·1000
  truncated to integers, and a final σ of 0 or ('sigma_min') the last grid σ again."""
  check_num_steps(num_steps)
  check_shift(shift, use_dynamic_shifting, mu)
  check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
  T = NUM_TRAIN_TIMESTEPS
  sigmas = np.linspace(1.0, 1.0 / T, num_steps + 1)[:-1]
  sigmas = flow.shift(sigmas, shift_factor(shift, use_dynamic_shifting, mu, "exponential"))
  if abs(sigmas[0] - 1.0) < UNIPC_FIRST_SIGMA_OFFSET:
    sigmas[0] -= UNIPC_FIRST_SIGMA_OFFSET
  final = 0.0 if final_sigmas_type == "zero" else sigmas[-1]
  return (sigmas * T).astype(np.int64), np.append(sigmas, final)


def dpm_solver_grid(
  num_steps: int,
  *,
  shift: float = 1.0,
  use_dynamic_shifting: bool = False,
  mu: float | None = None,
):
  """(integer model times (n,), σ (n + 1,)) of DPMSolverMultistepScheduler's `set_timesteps` with
  `use_flow_sigmas=True`: σ = 1 − α for n + 1 α's evenly spaced over [1, 1/1000], shifted (by e^μ
  with the dynamic shift, which diffusers' DPM-Solver takes in its exponential form only),
  reversed, the last (σ = 0) dropped, the model times σ·1000 truncated, and a final σ of 0."""
  check_num_steps(num_steps)
  check_shift(shift, use_dynamic_shifting, mu)
  T = NUM_TRAIN_TIMESTEPS
  sigmas = 1.0 - np.linspace(1.0, 1.0 / T, num_steps + 1)
  sigmas = flow.shift(sigmas, shift_factor(shift, use_dynamic_shifting, mu, "exponential"))
  sigmas = sigmas[::-1][:-1].copy()
  return (sigmas * T).astype(np.int64), np.append(sigmas, 0.0)
