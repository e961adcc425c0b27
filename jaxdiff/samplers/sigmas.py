"""What the σ-space samplers (`karras`, `dpm_solver`, `unipc`) share: the training σ table and
Karras σ (defined in `jaxdiff.preconditioning`, the σ-space math below the samplers), the fractional
timestep of a σ, and the checks of the options they have in common (the checks every sampler
shares are in `loop`).

σ = √((1 − ᾱ)/ᾱ) is the noise level of x_t/√ᾱ; it grows with t, so its logarithm indexes the
training steps. All of it is NumPy float64: the grids are picked before the loop, whatever the
compute dtype.
"""

from __future__ import annotations

import numpy as np

from jaxdiff.diffusion import PREDICTIONS
from jaxdiff.preconditioning import (
  karras_sigmas,  # noqa: F401  (the σ-space samplers import both from here)
  train_sigmas,  # noqa: F401
)
from jaxdiff.samplers.loop import check_choice
from jaxdiff.schedules import Schedule, check_sampler_support


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
  """Fractional timesteps of σ values: linear interpolation of log σ between training steps.

  Values beyond the table's ends clamp to t = 0 and t = T − 1, as diffusers' `_sigma_to_t` does.
  """
  log_sigma = np.log(np.maximum(sigmas, 1e-10))
  # The last training step whose log σ does not exceed the target (log σ grows with t).
  low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
  lo, hi = log_sigmas[low], log_sigmas[low + 1]
  w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
  return (1 - w) * low + w * (low + 1)


def check_prediction(schedule: Schedule, prediction: str) -> None:
  """A known parameterization, and one that `schedule` can be sampled with (ε-prediction cannot
  be on a zero-terminal-SNR schedule: `schedules.check_sampler_support`)."""
  check_choice("prediction", prediction, PREDICTIONS)
  check_sampler_support(schedule, prediction=prediction)


def check_order(order: int, orders: tuple[int, ...]) -> None:
  if order not in orders:
    raise ValueError(f"order must be one of {orders}, got {order!r}.")


def check_num_steps(num_steps: int, num_train_timesteps: int) -> None:
  """TypeError unless num_steps is an integer (not a bool), ValueError outside [1, T]: the grids
  take one point a step, so a fractional count has no meaning."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise TypeError(f"num_steps must be an integer, got {num_steps!r}.")
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"num_steps must lie in [1, {num_train_timesteps}], got {num_steps}.")
