"""UniPC multistep (Zhao et al. 2023), step for step as diffusers' UniPCMultistepScheduler.

UniPC walks the same σ grid as DPM-Solver (`dpm_solver_grid`) and integrates the diffusion ODE
exactly in λ = log α − log σ_t for a data prediction x̂0 (`predict_x0`) or a noise prediction ε̂.
Each step is a predictor (UniP) that extrapolates the converted model output from the last
`order` outputs; the model output at the point it lands on then feeds a corrector (UniC) that
redoes the same step with that output added, at no extra model call. So step i of the loop
calls the model once, at the predictor's x_i, then corrects x_i with that output and the
outputs before it, then predicts x_{i+1} from the corrected x_i. The corrected x_i is not
evaluated again: the output at the uncorrected point serves both.

Every coefficient, including UniP's and UniC's small linear solves, depends only on the grid, so
they are computed before the loop in NumPy float64. Each update is written on the differences
m_k − m_0 of converted outputs, as in the paper; a step that uses fewer outputs, or has no
corrector, has exact zeros for the terms it does not use.

A flow model (prediction 'flow') is sampled as diffusers does with `use_flow_sigmas=True,
flow_shift=s, prediction_type='flow_prediction'`: on its shifted flow grid
(`flow_sigmas.unipc_grid`), with α = 1 − σ, σ_t = σ and x̂0 = x − σ·v.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from jaxdiff import flow
from jaxdiff.diffusion import compute_dtype
from jaxdiff.samplers import flow_sigmas
from jaxdiff.samplers.dpm_solver import dpm_solver_grid
from jaxdiff.samplers.loop import check_choice, run_steps
from jaxdiff.samplers.multistep import (
  FINAL_SIGMAS,
  alpha_sigma,
  check_finite,
  check_flow_options,
  check_options,
  per_step_tables,
  predict,
)
from jaxdiff.samplers.sigmas import check_num_steps, sigma_to_t, train_sigmas
from jaxdiff.schedules import Schedule

SOLVER_TYPES = ("bh1", "bh2")


def unipc_grid(
  schedule: Schedule,
  num_steps: int,
  *,
  spacing: str = "linspace",
  use_karras_sigmas: bool = False,
  final_sigmas_type: str = "zero",
):
  """(model timesteps, σ grid) of diffusers' UniPC `set_timesteps`: DPM-Solver's, except that
  Karras timesteps are rounded on every schedule (DPM-Solver truncates them on the cosine one)."""
  timesteps, sigmas = dpm_solver_grid(
    schedule,
    num_steps,
    spacing=spacing,
    use_karras_sigmas=use_karras_sigmas,
    final_sigmas_type=final_sigmas_type,
  )
  if use_karras_sigmas:
    fractional = sigma_to_t(sigmas[:-1], np.log(train_sigmas(schedule)))
    timesteps = np.round(fractional).astype(np.int64)
  return timesteps, sigmas


def _step_orders(num_steps: int, order: int, lower_order_final: bool) -> np.ndarray:
  """The predictor order of each step: a warm-up (step i has i previous outputs) and, with
  lower_order_final, at most num_steps − i — at any step count, unlike DPM-Solver's rule."""
  i = np.arange(num_steps)
  orders = np.minimum(order, i + 1)
  return np.minimum(orders, num_steps - i) if lower_order_final else orders


def _phi_rhs(hh: float, B_h: float, p: int) -> np.ndarray:
  """b_k = k!·hφ_{k+1}(hh)/B(h), k = 1…p, by diffusers' recursion hφ_{k+1} = hφ_k/hh − 1/k!
  (starting from hφ_1 = e^hh − 1), which float64 carries accurately for these step sizes."""
  h_phi = np.expm1(hh) / hh - 1
  factorial, rhs = 1.0, []
  for k in range(1, p + 1):
    rhs.append(h_phi * factorial / B_h)
    factorial *= k + 1
    h_phi = h_phi / hh - 1 / factorial
  return np.array(rhs)


def _update(lam, alpha, sig, j, p, *, predict_x0, solver_type, corrector):
  """The float64 weights of one update from grid point j to j + 1 using the outputs m_j, m_{j−1},
  …, m_{j−p+1}: (a, b, d, t) of a·x + b·m_j + Σ_k d[k−1]·(m_{j−k} − m_j) (+ t·(m_{j+1} − m_j) in
  the corrector, m_{j+1} being the output at the point the predictor reached)."""
  h = lam[j + 1] - lam[j]
  if not corrector and abs(h) < 1e-12:
    # A last step onto its own noise level (σ_min after a Karras grid): diffusers' formulas give
    # x unchanged for orders 1 and 2 (and a singular solve for order 3).
    return 1.0, 0.0, np.zeros(p - 1), 0.0
  hh = -h if predict_x0 else h
  # a: the exact linear part of the step (σ_t/σ_s for x̂0, α_t/α_s for ε̂); scale: the factor
  # (α_t or σ_t) every output term carries.
  if predict_x0:
    a, scale = sig[j + 1] / sig[j], alpha[j + 1]
  else:
    a, scale = alpha[j + 1] / alpha[j], sig[j + 1]
  b = -scale * np.expm1(hh)
  if not corrector and p == 1:
    # No extrapolation term. (diffusers computes B(h)·0 here, which is NaN on bh1's last step
    # to σ = 0, where B(h) = −∞; the step's limit is x̂0 itself, which a = 0, b = 1 gives.)
    return a, b, np.zeros(0), 0.0
  B_h = hh if solver_type == "bh1" else np.expm1(hh)
  # Each earlier output's λ-distance in units of h; the new output (corrector) sits at r = 1.
  rks = np.append([(lam[j - k] - lam[j]) / h for k in range(1, p)], 1.0)
  R = rks[None, :] ** np.arange(p)[:, None]
  rhs = _phi_rhs(hh, B_h, p)
  if corrector:
    # UniC-1 takes ρ = 1/2 rather than solving its 1×1 system; higher orders solve the full one.
    rhos = np.array([0.5]) if p == 1 else np.linalg.solve(R, rhs)
    t = -scale * B_h * rhos[-1]
  else:
    # UniP-2 fixes ρ = 1/2 rather than solving its 1×1 system; UniP-3 solves the 2×2 one.
    rhos = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], rhs[:-1])
    t = 0.0
  d = -scale * B_h * rhos[: p - 1] / rks[: p - 1]
  return a, b, d, t


def _coefficients(
  sigmas, orders, corrected, *, order, predict_x0, solver_type, flow_path=False
) -> dict:
  """Per-step float64 tables. Step i: x = ce·x_pred + ca·x_last + cb·m_{i−1}
  + Σ_k cd_k·(m_{i−1−k} − m_{i−1}) + ct·(m_i − m_{i−1}) (the corrector, or x = x_pred where it is
  off), then x_next = pa·x + pb·m_i + Σ_k pd_k·(m_{i−k} − m_i) (the predictor)."""
  n = len(orders)
  alpha, sig = alpha_sigma(sigmas, flow_path)
  names = ["ce", "ca", "cb", "ct", "pa", "pb"]
  names += [f"{kind}{k}" for kind in ("cd", "pd") for k in range(1, order)]
  table = {name: np.zeros(n) for name in names}
  options = {"predict_x0": predict_x0, "solver_type": solver_type}
  # λ = +∞ at a final σ = 0, reached only by a first-order predictor step (whose weights are
  # finite there); the corrector never looks past the last grid point.
  with np.errstate(divide="ignore", invalid="ignore"):
    lam = np.log(alpha) - np.log(sig)
    for i in range(n):
      a, b, d, _ = _update(lam, alpha, sig, i, orders[i], corrector=False, **options)
      table["pa"][i], table["pb"][i] = a, b
      for k, dk in enumerate(d, 1):
        table[f"pd{k}"][i] = dk
      if not corrected[i]:
        table["ce"][i] = 1.0
        continue
      # The corrector of step i redoes step i − 1's update, at that step's order.
      a, b, d, t = _update(lam, alpha, sig, i - 1, orders[i - 1], corrector=True, **options)
      table["ca"][i], table["cb"][i], table["ct"][i] = a, b, t
      for k, dk in enumerate(d, 1):
        table[f"cd{k}"][i] = dk
  check_finite(table, "UniPC")
  return table


def _resolve_final_sigma(final_sigmas_type, *, predict_x0, last_order) -> str:
  """diffusers' default final σ is 0, where its ε̂ update gives NaN and an extrapolating (order ≥
  2) last step gives ±inf; by default those land on σ_min, and asking for 0 is an error."""
  can_reach_zero = predict_x0 and last_order == 1
  if final_sigmas_type is None:
    return "zero" if can_reach_zero else "sigma_min"
  check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS)
  if final_sigmas_type == "zero" and not predict_x0:
    raise ValueError("predict_x0=False cannot step to σ = 0; use final_sigmas_type='sigma_min'.")
  if final_sigmas_type == "zero" and not can_reach_zero:
    raise ValueError(
      "with lower_order_final=False the last step extrapolates to σ = 0, which diverges; use "
      "lower_order_final=True or final_sigmas_type='sigma_min'."
    )
  return final_sigmas_type


def unipc(
  model_fn: Callable,
  schedule: Schedule,
  x_T,
  *,
  num_steps: int = 20,
  order: int = 2,
  solver_type: str = "bh2",
  predict_x0: bool = True,
  lower_order_final: bool = True,
  spacing: str = "linspace",
  use_karras_sigmas: bool = False,
  final_sigmas_type: str | None = None,
  prediction: str = "epsilon",
  disable_corrector=(),
  flow_shift: float = 1.0,
  use_dynamic_shifting: bool = False,
  mu: float | None = None,
  return_trajectory: bool = False,
):
  """Samples x_0 from x_T with `num_steps` UniPC steps (one model call each).

  `order` 1–3 (diffusers' `solver_order`) is the predictor's order, reached after a warm-up;
  with `lower_order_final` step i uses at most num_steps − i outputs (the last step is first
  order). `solver_type` 'bh2' (B(h) = e^h − 1) or 'bh1' (B(h) = h). `predict_x0` solves for x̂0
  (the default) rather than ε̂. The corrector runs after every step but the last, except after
  the steps listed in `disable_corrector` (diffusers' step indices; others are ignored).

  `final_sigmas_type` is where the last step lands: 'zero' (σ = 0; the sample is the last x̂0)
  or 'sigma_min' (σ of t = 0). By default 'zero', except where diffusers' step to σ = 0 is
  undefined (predict_x0=False, or a last step of order ≥ 2 when lower_order_final is off):
  those default to 'sigma_min'. `spacing` and `use_karras_sigmas` pick the grid as diffusers
  does (see `unipc_grid`). `prediction` ('epsilon', 'x0', 'v') is what the model outputs; a
  model with learned variances (2C channels) has its first C used. `schedule` must be
  un-respaced: the solver picks its own grid. Returns x_0, or with `return_trajectory` the
  predictor's x after every step, (num_steps, *x_T.shape).

  `prediction='flow'` samples a flow model (velocity v at t = σ·1000, truncated to an integer as
  diffusers does) on diffusers' `use_flow_sigmas` grid shifted by `flow_shift` or, with
  `use_dynamic_shifting`, by e^`mu` (`flow_sigmas.unipc_grid`); `schedule` is not read (None is
  fine), 'sigma_min' is the last grid σ, and `spacing`, `use_karras_sigmas` and `predict_x0=False`
  (which diffusers does not run on a flow model) are refused.
  """
  check_options(
    schedule,
    "unipc",
    order=order,
    solver_type=solver_type,
    solver_types=SOLVER_TYPES,
    prediction=prediction,
  )
  flow_model = prediction == flow.PREDICTION
  check_flow_options(
    prediction,
    flow_shift=flow_shift,
    use_dynamic_shifting=use_dynamic_shifting,
    mu=mu,
    spacing=(spacing, "linspace"),
    use_karras_sigmas=(use_karras_sigmas, False),
  )
  if flow_model and not predict_x0:
    raise ValueError(
      "predict_x0=False (UniPC on ε̂) cannot sample a flow model, as in diffusers; use "
      "predict_x0=True."
    )
  disabled = tuple(disable_corrector)
  if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in disabled):
    raise ValueError(f"disable_corrector must list step indices (ints), got {disable_corrector!r}.")
  # Checked here too so that the order rule below sees a valid step count.
  if flow_model:
    flow_sigmas.check_num_steps(num_steps)
  else:
    check_num_steps(num_steps, schedule.num_train_timesteps)

  orders = _step_orders(num_steps, order, lower_order_final)
  final_sigmas_type = _resolve_final_sigma(
    final_sigmas_type, predict_x0=predict_x0, last_order=int(orders[-1])
  )
  if flow_model:
    timesteps, sigmas = flow_sigmas.unipc_grid(
      num_steps,
      shift=flow_shift,
      use_dynamic_shifting=use_dynamic_shifting,
      mu=mu,
      final_sigmas_type=final_sigmas_type,
    )
  else:
    timesteps, sigmas = unipc_grid(
      schedule,
      num_steps,
      spacing=spacing,
      use_karras_sigmas=use_karras_sigmas,
      final_sigmas_type=final_sigmas_type,
    )
  # Step i corrects the point step i − 1's predictor reached, unless i − 1 is disabled.
  corrected = [i > 0 and (i - 1) not in disabled for i in range(num_steps)]
  tables = _coefficients(
    sigmas,
    orders,
    corrected,
    order=order,
    predict_x0=predict_x0,
    solver_type=solver_type,
    flow_path=flow_model,
  )
  dtype = compute_dtype(x_T)
  per_step = per_step_tables(tables, sigmas, timesteps, dtype, flow_model)

  def step(carry, s, _):
    # x_pred: where the last predictor landed (the model is called there); x_last: the
    # (corrected) x that predictor started from; previous: m_{i−1}, …, m_{i−order}.
    x_pred, x_last, previous = carry
    xp, x0, eps = predict(model_fn, x_pred, s, dtype=dtype, prediction=prediction)
    m = x0 if predict_x0 else eps  # the converted output UniPC works with
    m1 = previous[0]
    # UniC. m is the output at the uncorrected point, as in diffusers; it is also the m_i the
    # predictor below and the next steps use.
    x = s["ce"] * xp + s["ca"] * x_last + s["cb"] * m1 + s["ct"] * (m - m1)
    for k in range(1, order):
      x = x + s[f"cd{k}"] * (previous[k] - m1)
    # UniP. Outputs not there yet (warm-up) are zeros with zero weights.
    x_next = s["pa"] * x + s["pb"] * m
    for k in range(1, order):
      x_next = x_next + s[f"pd{k}"] * (previous[k - 1] - m)
    return x_next.astype(x_pred.dtype), x, (m,) + tuple(previous[:-1])

  zeros = jnp.zeros(x_T.shape, dtype)
  init = (x_T, zeros, tuple(zeros for _ in range(order)))
  return run_steps(
    step,
    x_T,
    per_step,
    needs_noise=False,
    return_trajectory=return_trajectory,
    init=init,
    read=lambda carry: carry[0],
  )
