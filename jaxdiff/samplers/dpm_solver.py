"""DPM-Solver and DPM-Solver++ multistep (Lu et al. 2022a, 2022b), step for step as diffusers'
DPMSolverMultistepScheduler.

The solver walks a grid of noise levels σ_0 > σ_1 > … > σ_n (σ = √((1 − ᾱ)/ᾱ), so α = 1/√(1 + σ²),
σ_t = σ·α and λ = log α − log σ_t) and integrates the diffusion ODE exactly in λ for a data
prediction x̂0 ('dpmsolver++', and its SDE variant) or a noise prediction ε̂ ('dpmsolver'),
extrapolating it from the last `order` model outputs. Every coefficient of a step depends only on
the grid, so they are all computed before the loop in NumPy float64; the scan carries the image
and the previous converted outputs.

On a zero-terminal-SNR schedule (ᾱ_{T−1} = 0, σ = ∞, λ = −∞) the last ᾱ is taken to be 2⁻²⁴ as
diffusers does with `rescale_betas_zero_snr` (`schedules.sigma_alphas_cumprod`); ε-prediction is
refused there (`schedules.check_sampler_support`).

A flow model (prediction 'flow') is sampled as diffusers does with `use_flow_sigmas=True,
flow_shift=s, prediction_type='flow_prediction'`: on its shifted flow grid
(`flow_sigmas.dpm_solver_grid`), with α = 1 − σ, σ_t = σ and x̂0 = x − σ·v, by the data-prediction
algorithms (diffusers' 'dpmsolver' takes no flow prediction).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from jaxdiff import flow, schedules
from jaxdiff.diffusion import compute_dtype
from jaxdiff.samplers import flow_sigmas
from jaxdiff.samplers.ddim import SPACINGS, trailing_timesteps
from jaxdiff.samplers.loop import check_choice, run_steps
from jaxdiff.samplers.multistep import (
  FINAL_SIGMAS,
  ORDERS,  # noqa: F401  (the sampler table reads the orders from here)
  alpha_sigma,
  check_finite,
  check_flow_options,
  check_options,
  per_step_tables,
  predict,
)
from jaxdiff.samplers.sigmas import (
  check_num_steps,
  karras_sigmas,
  sigma_to_t,
  train_sigmas,
)
from jaxdiff.schedules import Schedule

ALGORITHMS = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def _grid_timesteps(num_train_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
  """This scheduler's own three spacings: unlike DDIM's, 'linspace' and 'leading' divide [0, T)
  into num_steps + 1 parts and drop the last point (t = 0); 'trailing' is DDIM's, n steps for
  every n (diffusers' has n + 1 for some, the last a timestep −1)."""
  check_choice("spacing", spacing, SPACINGS)
  T, n = num_train_timesteps, num_steps
  if spacing == "linspace":
    steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
  elif spacing == "leading":
    steps = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1]
  else:
    steps = trailing_timesteps(T, n)
  return steps.astype(np.int64)


def _is_cosine(betas: np.ndarray) -> bool:
  # diffusers keys one behaviour on its schedule's name ('squaredcos_cap_v2'), which it keeps when
  # it rescales to zero terminal SNR; a Schedule carries only its βs, so the cosine schedule is
  # recognised by them, rescaled or not (float32 copies included).
  cosine = schedules.cosine_betas(betas.shape[0])
  if betas[-1] == 1.0 and betas.shape[0] > 1:
    cosine = schedules.zero_terminal_snr_betas(cosine)
  return np.allclose(betas, cosine, rtol=1e-5, atol=0.0)


def dpm_solver_grid(
  schedule: Schedule,
  num_steps: int,
  *,
  spacing: str = "linspace",
  use_karras_sigmas: bool = False,
  final_sigmas_type: str = "zero",
):
  """(model timesteps, σ grid) of diffusers' `set_timesteps`: num_steps int64 timesteps the model
  is called at and num_steps + 1 float64 noise levels, the last being 0 or σ of t = 0.

  With Karras sigmas the σ grid is ρ-spaced between the training σ of t = 0 and t = T − 1 and the
  model gets each σ's interpolated timestep, rounded (half to even) — or, for the cosine schedule,
  truncated: diffusers leaves those fractional and then casts them to int64.
  """
  T = schedule.num_train_timesteps
  check_num_steps(num_steps, T)
  check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS)
  table = train_sigmas(schedule)
  timesteps = _grid_timesteps(T, num_steps, spacing)
  if use_karras_sigmas:
    # From the last training σ (the largest, but on a zero-SNR linear schedule) down to σ_0.
    sigmas = karras_sigmas(table[-1], table[0], num_steps)
    fractional = sigma_to_t(sigmas, np.log(table))
    timesteps = fractional if _is_cosine(schedule.betas) else np.round(fractional)
    timesteps = timesteps.astype(np.int64)
  else:
    sigmas = table[timesteps]
  if np.any(np.diff(sigmas) >= 0):
    raise ValueError(
      f"num_steps={num_steps} with spacing {spacing!r} gives repeated noise levels, on which "
      "the solver divides by zero; take fewer steps."
    )
  # The final σ may equal the last grid point (Karras or t = 0 with 'sigma_min'): a step of h = 0.
  final = 0.0 if final_sigmas_type == "zero" else table[0]
  return timesteps, np.append(sigmas, final)


def _step_orders(num_steps: int, order: int, lower_order_final: bool, final_zero: bool):
  """The order of each step: a warm-up from first order (there are i previous outputs at step
  i), the last step first order when it goes to σ = 0 or lower_order_final applies (fewer than 15
  steps), and the second-to-last at most second order under lower_order_final."""
  orders = np.minimum(np.arange(num_steps) + 1, order)
  short = lower_order_final and num_steps < 15
  if final_zero or short:
    orders[-1] = 1
  if short and num_steps >= 2:
    orders[-2] = min(orders[-2], 2)
  return orders


def _coefficients(sigmas, orders, algorithm: str, solver_type: str, flow_path=False) -> dict:
  """Per-step float64 scalars of x_next = a·x + b0·D0 + b1·D1 + b2·D2 + c·z, where D0 = m0 and
  D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1, D1 = D1_0 + k·(D1_0 − D1_1), D2 = q·(D1_0 − D1_1)
  are the finite differences of the converted outputs m (m0 the current one). A step of lower
  order has zeros for the terms it does not use, which keeps D1 = D1_0 exactly."""
  alpha, sig = alpha_sigma(sigmas, flow_path)
  # λ = +∞ at a final σ = 0; that step is first order, and its unused higher-order terms
  # (computed alongside) are inf/inf.
  with np.errstate(divide="ignore", invalid="ignore"):
    lam = np.log(alpha) - np.log(sig)
    table = _tabulate(alpha, sig, lam, orders, algorithm, solver_type)
  check_finite(table, "DPM-Solver")
  return table


def _tabulate(alpha, sig, lam, orders, algorithm, solver_type) -> dict:
  n = len(orders)
  table = {k: np.zeros(n) for k in ("a", "b0", "b1", "b2", "c", "inv_r0", "inv_r1", "k", "q")}
  for i in range(n):
    h = lam[i + 1] - lam[i]
    if abs(h) < 1e-12:
      # A last step onto (a rounding of) its own noise level, σ_min after a grid ending at t = 0
      # or a Karras grid, is the identity. diffusers' formulas tend to it, or give 0/0 (heun,
      # third order); grid steps proper have h ≳ 1e-3.
      table["a"][i] = 1.0
      continue
    alpha_t, sig_t = alpha[i + 1], sig[i + 1]
    if algorithm == "dpmsolver++":
      a = sig_t / sig[i]
      e = np.expm1(-h)  # e^{−h} − 1
      b0, phi1, phi2 = -alpha_t * e, alpha_t * (e / h + 1), -alpha_t * ((e + h) / h**2 - 0.5)
      midpoint = -0.5 * alpha_t * e
    elif algorithm == "dpmsolver":
      a = alpha_t / alpha[i]
      e = np.expm1(h)  # e^{h} − 1
      b0, phi1, phi2 = -sig_t * e, -sig_t * (e / h - 1), -sig_t * ((e - h) / h**2 - 0.5)
      midpoint = -0.5 * sig_t * e
    else:  # sde-dpmsolver++
      a = sig_t / sig[i] * np.exp(-h)
      e = -np.expm1(-2 * h)  # 1 − e^{−2h}
      b0, phi1 = alpha_t * e, alpha_t * (e / (-2 * h) + 1)
      phi2 = alpha_t * ((e - 2 * h) / (2 * h) ** 2 - 0.5)
      midpoint = 0.5 * alpha_t * e
      table["c"][i] = sig_t * np.sqrt(e)
    table["a"][i], table["b0"][i] = a, b0
    if orders[i] >= 2:
      r0 = (lam[i] - lam[i - 1]) / h
      table["inv_r0"][i] = 1 / r0
      # solver_type picks the second-order update only; the third-order one has a single form.
      table["b1"][i] = midpoint if orders[i] == 2 and solver_type == "midpoint" else phi1
      if orders[i] == 3:
        r1 = (lam[i - 1] - lam[i - 2]) / h
        table["inv_r1"][i], table["k"][i], table["q"][i] = 1 / r1, r0 / (r0 + r1), 1 / (r0 + r1)
        table["b2"][i] = phi2
  return table


def dynamic_threshold(x0, *, ratio: float, max_value: float):
  """Imagen's dynamic thresholding (Saharia et al. 2022): s = the `ratio` quantile of |x̂0| per
  example, clamped to [1, max_value]; x̂0 is clipped to [−s, s] and divided by s."""
  flat = jnp.abs(x0.reshape(x0.shape[0], -1))
  s = jnp.clip(jnp.quantile(flat, ratio, axis=1), 1.0, max_value)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s


def dpm_solver(
  model_fn: Callable,
  schedule: Schedule,
  x_T,
  *,
  num_steps: int = 20,
  order: int = 2,
  algorithm: str = "dpmsolver++",
  solver_type: str = "midpoint",
  lower_order_final: bool = True,
  spacing: str = "linspace",
  use_karras_sigmas: bool = False,
  final_sigmas_type: str | None = None,
  prediction: str = "epsilon",
  thresholding: bool = False,
  dynamic_thresholding_ratio: float = 0.995,
  sample_max_value: float = 1.0,
  flow_shift: float = 1.0,
  use_dynamic_shifting: bool = False,
  mu: float | None = None,
  key=None,
  noise=None,
  return_trajectory: bool = False,
):
  """Samples x_0 from x_T with `num_steps` multistep DPM-Solver steps (one model call each).

  `algorithm` 'dpmsolver++' (data prediction; the default and the one for guided sampling),
  'dpmsolver' (noise prediction) or 'sde-dpmsolver++' (stochastic; draws one noise per step from
  `key`, or replays `noise` of shape (num_steps, *x_T.shape)). `order` 1–3 is reached after a
  warm-up of lower-order steps; `solver_type` ('midpoint' or 'heun') chooses the second-order
  update. The last step is first order when it goes to σ = 0 or, with `lower_order_final` and
  fewer than 15 steps, when diffusers lowers it (and the step before it to second order).

  `final_sigmas_type` is where the last step lands: 'zero' (σ = 0, the sample is the last x̂0)
  or 'sigma_min' (σ of t = 0). By default 'zero', except for 'dpmsolver', whose λ would be
  infinite there and which diffusers runs with 'sigma_min' only. `spacing` is one of diffusers'
  three for this scheduler (see `dpm_solver_grid`); `use_karras_sigmas` replaces the σ grid by
  Karras et al.'s. With `thresholding`, x̂0 is dynamically thresholded (pixel space only).
  `prediction` ('epsilon', 'x0', 'v') is what the model outputs; a model with learned variances
  (2C channels) has its first C used. `schedule` must be un-respaced: the solver picks its grid.

  `prediction='flow'` samples a flow model (velocity v at t = σ·1000, truncated to an integer as
  diffusers does) on diffusers' `use_flow_sigmas` grid shifted by `flow_shift` or, with
  `use_dynamic_shifting`, by e^`mu` (`flow_sigmas.dpm_solver_grid`), landing on σ = 0;
  `schedule` is not read (None is fine). 'dpmsolver', `spacing`, `use_karras_sigmas` and a
  'sigma_min' final (σ of the diffusion schedule's t = 0 in diffusers) are refused there.
  """
  check_options(
    schedule,
    "dpm_solver",
    order=order,
    solver_type=solver_type,
    solver_types=SOLVER_TYPES,
    prediction=prediction,
  )
  check_choice("algorithm", algorithm, ALGORITHMS)
  flow_model = prediction == flow.PREDICTION
  check_flow_options(
    prediction,
    flow_shift=flow_shift,
    use_dynamic_shifting=use_dynamic_shifting,
    mu=mu,
    spacing=(spacing, "linspace"),
    use_karras_sigmas=(use_karras_sigmas, False),
    final_sigmas_type=(final_sigmas_type or "zero", "zero"),
  )
  if flow_model and algorithm == "dpmsolver":
    raise ValueError(
      "algorithm 'dpmsolver' (noise prediction) cannot sample a flow model, as in diffusers; "
      "use 'dpmsolver++' or 'sde-dpmsolver++'."
    )
  if final_sigmas_type is None:
    final_sigmas_type = "sigma_min" if algorithm == "dpmsolver" else "zero"
  if algorithm == "dpmsolver" and final_sigmas_type == "zero":
    raise ValueError(
      "algorithm 'dpmsolver' cannot step to σ = 0; use final_sigmas_type='sigma_min'."
    )
  if thresholding and not 0.0 < dynamic_thresholding_ratio <= 1.0:
    raise ValueError(
      f"dynamic_thresholding_ratio must lie in (0, 1], got {dynamic_thresholding_ratio}."
    )
  stochastic = algorithm.startswith("sde")
  if stochastic and key is None and noise is None:
    raise ValueError(f"algorithm {algorithm!r} draws noise: pass key=... or noise=....")

  if flow_model:
    timesteps, sigmas = flow_sigmas.dpm_solver_grid(
      num_steps, shift=flow_shift, use_dynamic_shifting=use_dynamic_shifting, mu=mu
    )
  else:
    timesteps, sigmas = dpm_solver_grid(
      schedule,
      num_steps,
      spacing=spacing,
      use_karras_sigmas=use_karras_sigmas,
      final_sigmas_type=final_sigmas_type,
    )
  orders = _step_orders(num_steps, order, lower_order_final, final_sigmas_type == "zero")
  dtype = compute_dtype(x_T)
  tables = _coefficients(sigmas, orders, algorithm, solver_type, flow_model)
  per_step = per_step_tables(tables, sigmas, timesteps, dtype, flow_model)
  data_prediction = algorithm != "dpmsolver"

  def convert(x, x0, eps, alpha, sigma):
    """The model output as x̂0 (DPM-Solver++) or ε̂ (DPM-Solver), thresholded if asked."""
    if not thresholding:
      return x0 if data_prediction else eps
    threshold = lambda v: dynamic_threshold(
      v, ratio=dynamic_thresholding_ratio, max_value=sample_max_value
    )
    if data_prediction:
      return threshold(x0)
    # diffusers thresholds the x̂0 implied by ε̂ and converts back.
    x0 = threshold((x - sigma * eps) / alpha)
    return (x - alpha * x0) / sigma

  def step(carry, s, z):
    x, previous = carry
    xc, x0, eps = predict(model_fn, x, s, dtype=dtype, prediction=prediction)
    m0 = convert(xc, x0, eps, s["alpha_s"], s["sigma_s"])
    x_next = s["a"] * xc + s["b0"] * m0
    # During the warm-up the outputs not yet there are zeros, with zero weights.
    if order >= 2:
      d1 = d1_0 = s["inv_r0"] * (m0 - previous[0])
      if order == 3:
        d1_1 = s["inv_r1"] * (previous[0] - previous[1])
        d1 = d1_0 + s["k"] * (d1_0 - d1_1)
        x_next = x_next + s["b2"] * (s["q"] * (d1_0 - d1_1))
      x_next = x_next + s["b1"] * d1
    if stochastic:
      x_next = x_next + s["c"] * z.astype(dtype)
    return x_next.astype(x.dtype), ((m0,) + tuple(previous[:-1]))[: len(previous)]

  init = (x_T, tuple(jnp.zeros(x_T.shape, dtype) for _ in range(order - 1)))
  return run_steps(
    step,
    x_T,
    per_step,
    key=key,
    noise=noise,
    needs_noise=stochastic,
    return_trajectory=return_trajectory,
    init=init,
    read=lambda carry: carry[0],
  )
