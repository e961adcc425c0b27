"""What the multistep solvers (`dpm_solver`, `unipc`) share: their orders and final noise levels,
the checks of their common options, α and σ_t of a σ grid, the model output as x̂0 and ε̂, and the
per-step tables their scans read.

Both integrate the diffusion ODE in λ = log α − log σ_t on a σ grid (α = 1/√(1 + σ²), σ_t = σ·α,
x_t = α x_0 + σ_t ε) and precompute every coefficient in NumPy float64. On a flow model
(prediction 'flow', `jaxdiff.flow`) the grid is of the straight path's σ, with α = 1 − σ and
σ_t = σ (diffusers' `use_flow_sigmas`), and the model's velocity v gives x̂0 = x − σ·v.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from jaxdiff import flow
from jaxdiff.samplers.loop import call_model, check_choice, check_full_schedule
from jaxdiff.samplers.sigmas import check_order, check_prediction
from jaxdiff.schedules import Schedule

ORDERS = (1, 2, 3)
FINAL_SIGMAS = ("zero", "sigma_min")


def check_options(
  schedule: Schedule,
  sampler: str,
  *,
  order: int,
  solver_type: str,
  solver_types: tuple[str, ...],
  prediction: str,
) -> None:
  if prediction != flow.PREDICTION:  # a flow model's grid is not picked from the schedule
    check_full_schedule(schedule, sampler)
    check_prediction(schedule, prediction)
  check_order(order, ORDERS)
  check_choice("solver_type", solver_type, solver_types)


def check_flow_options(prediction: str, *, flow_shift, use_dynamic_shifting, mu, **diffusion):
  """The options that pick a flow model's grid are refused on other models, and on a flow model
  those of the diffusion grid (`diffusion`: name → (value, its default)) away from their
  defaults: either would be ignored."""
  if prediction != flow.PREDICTION:
    if flow_shift != 1.0 or use_dynamic_shifting or mu is not None:
      raise ValueError(
        "flow_shift, use_dynamic_shifting and mu shape a flow model's grid (prediction='flow'); "
        f"leave them at 1.0, False and None for prediction={prediction!r}."
      )
    return
  for name, (value, default) in diffusion.items():
    if value != default:
      raise ValueError(
        f"{name}={value!r} does not apply to a flow model, whose σ grid diffusers' "
        f"use_flow_sigmas picks; leave it at {default!r}."
      )


def alpha_sigma(sigmas: np.ndarray, flow_path: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """α = 1/√(1 + σ²) and σ_t = σ·α of each noise level σ; with `flow_path`, the straight path's
  α = 1 − σ and σ_t = σ."""
  if flow_path:
    return 1 - sigmas, sigmas
  alpha = 1 / np.sqrt(sigmas**2 + 1)
  return alpha, sigmas * alpha


def check_finite(table: dict, solver: str) -> None:
  # A coefficient that overflowed would turn the whole sample into NaN inside the compiled scan.
  bad = [k for k, v in table.items() if not np.all(np.isfinite(v))]
  assert not bad, f"non-finite {solver} coefficients {bad}"


def per_step_tables(
  tables: dict, sigmas: np.ndarray, timesteps: np.ndarray, dtype, flow_path: bool = False
) -> dict:
  """`tables` in the compute dtype, with α and σ_t of each step's own noise level (to convert the
  model output there) and the int32 model times."""
  alpha_s, sigma_s = alpha_sigma(sigmas[:-1], flow_path)
  tables = {**tables, "alpha_s": alpha_s, "sigma_s": sigma_s}
  per_step = {k: jnp.asarray(v, dtype) for k, v in tables.items()}
  per_step["t"] = jnp.asarray(timesteps, jnp.int32)
  return per_step


def predict(model_fn: Callable, x, s: dict, *, dtype, prediction: str):
  """(x, x̂0, ε̂) in the compute dtype from the model at step `s`'s time and noise level; a model
  with learned variances (2C channels) has its first C used."""
  out = call_model(model_fn, x, s["t"])[..., : x.shape[-1]].astype(dtype)
  x = x.astype(dtype)
  alpha, sigma = s["alpha_s"], s["sigma_s"]
  if prediction == "epsilon":
    return x, (x - sigma * out) / alpha, out
  if prediction == "x0":
    return x, out, (x - alpha * out) / sigma
  if prediction == flow.PREDICTION:  # a velocity v = ε − x0 on the straight path (σ_t = σ)
    return x, *flow.x0_and_noise(x, out, sigma)
  return x, alpha * x - sigma * out, alpha * out + sigma * x
