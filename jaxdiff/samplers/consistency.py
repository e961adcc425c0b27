"""One- and multistep sampling of a consistency model (Song et al. 2023, Algorithm 1).

x = σ_0·z, x̂_0 = f(x, σ_0); for each further σ_i: x = x̂_0 + √(σ_i² − σ_min²)·z, x̂_0 = f(x, σ_i).
`f(x, σ)` is a consistency function (`preconditioning.consistency_function` of a student network)
or any σ-space denoiser. diffusers' CMStochasticIterativeScheduler runs the same steps with x̂_0
clamped to [−1, 1] (`clip_denoised`); its one-step run draws no noise.

`gamma` < 1 re-noises partly along the noise x̂_0 was denoised from, ε̂ = (x − x̂_0)/σ_{i−1}:
x = x̂_0 + √(σ_i² − σ_min²)·(γ·z + √(1 − γ²)·ε̂) — the γ-sampling of Kim et al. 2024 (Consistency
Trajectory Models) with a consistency function, whose jump from σ_{i−1} to √(1 − γ²)·σ_i is
the DDIM/Euler step x̂_0 + √(1 − γ²)·σ_i·ε̂ (γ = 0: deterministic; γ = 1: Algorithm 1, the default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import compute_dtype
from jaxdiff.preconditioning import SIGMA_MAX, SIGMA_MIN, karras_sigmas
from jaxdiff.samplers.loop import run_steps

# The discretisation of openai's consistency distillation on ImageNet 64 (N = 40 Karras points,
# diffusers' default num_train_timesteps) and its published two-step sampling, timesteps
# [22, 0] on that grid (diffusers' ConsistencyModelPipeline example): σ = (80, 1.3824).
CD_GRID_POINTS = 40
CD_TWO_STEP = (0, 22)


def default_sigmas(
  num_steps: int,
  *,
  sigma_min: float = SIGMA_MIN,
  sigma_max: float = SIGMA_MAX,
  trained_sigmas: Sequence[float] | None = None,
) -> np.ndarray:
  """The σ's of a `num_steps` run, in float64: one step is σ_max; two steps are CD ImageNet-64's
  published (σ_max, 1.3824); K ≥ 3 steps the first K of K + 1 Karras points from σ_max to σ_min
  (the last, σ_min, would re-noise to nothing). With `trained_sigmas`, the σ's a network was
  trained at, each moves to the nearest of them (`snap_to_grid`)."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
  if num_steps == 2:
    sigmas = karras_sigmas(sigma_max, sigma_min, CD_GRID_POINTS)[list(CD_TWO_STEP)]
  else:
    sigmas = karras_sigmas(sigma_max, sigma_min, num_steps + 1)[:-1]
  return sigmas if trained_sigmas is None else snap_to_grid(sigmas, trained_sigmas)


def snap_to_grid(sigmas: Sequence[float], grid: Sequence[float]) -> np.ndarray:
  """Each σ moved to the point of `grid` nearest to it in log σ, in float64. A network trained by
  consistency training sees only its grid's σ's (its time input, 250·ln σ, jumps between them) and
  can be far off between them. ValueError when two σ's land on one point: too few grid points."""
  values, grid = np.asarray(sigmas, np.float64), np.asarray(grid, np.float64)
  nearest = grid[np.abs(np.log(values)[:, None] - np.log(grid)[None, :]).argmin(axis=1)]
  if np.unique(nearest).size < values.size:
    raise ValueError(
      f"the {values.size} default σ's {tuple(values.round(4))} fall on only "
      f"{np.unique(nearest).size} points of the network's {grid.size}-point training grid; set "
      "sample.sigmas to that many distinct points of it."
    )
  return nearest


def check_sigmas(sigmas, *, sigma_min: float = SIGMA_MIN) -> str | None:
  """The problem with a σ sequence in words, or None: it must be non-empty and strictly
  decreasing, with every σ ≥ σ_min (re-noising to σ takes √(σ² − σ_min²))."""
  values = np.asarray(sigmas, np.float64)
  if values.ndim != 1 or values.size == 0:
    return f"must be a non-empty sequence of noise levels, got {sigmas!r}"
  if np.any(np.diff(values) >= 0):
    return f"must decrease strictly, got {tuple(sigmas)}"
  if values[-1] < sigma_min:
    return f"must stay at or above σ_min = {sigma_min}, got {tuple(sigmas)}"
  return None


def consistency(
  f: Callable,
  x_T,
  *,
  num_steps: int | None = None,
  sigmas: Sequence[float] | None = None,
  sigma_min: float = SIGMA_MIN,
  sigma_max: float = SIGMA_MAX,
  clip_denoised: bool = True,
  gamma: float = 1.0,
  trained_sigmas: Sequence[float] | None = None,
  key=None,
  noise=None,
  return_trajectory: bool = False,
):
  """Algorithm 1 of Song et al. 2023 with the consistency function `f(x, σ)`.

  `sigmas` (decreasing, σ_0 first) are the noise levels f is evaluated at, one step each, so
  `num_steps` may be left out with them (given, it must be their count); without them they are
  `default_sigmas(num_steps)` (one step when num_steps is None as well), moved onto the points of
  `trained_sigmas` when given;
  x_T is a unit-variance draw scaled by σ_0. Step i evaluates f at σ_i and re-noises x̂_0 to
  σ_{i+1} with `noise[i]` (shape (num_steps, *x_T.shape)), as diffusers draws it; the last step's
  draw is multiplied by 0, and a one-step run draws nothing. Otherwise z comes from
  `fold_in(key, i)`. `clip_denoised` clamps x̂_0 to [−1, 1] (pixel space). `gamma` ∈ [0, 1] is
  the share of fresh noise in each re-noising (the module's docstring); 1 is Algorithm 1. Returns
  x̂_0 in x_T's dtype, or the x̂_0 of every step stacked.
  """
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f"gamma must lie in [0, 1] (1 is Algorithm 1), got {gamma}.")
  if sigmas is None:
    sigmas = default_sigmas(
      1 if num_steps is None else num_steps,
      sigma_min=sigma_min,
      sigma_max=sigma_max,
      trained_sigmas=trained_sigmas,
    )
  elif num_steps is not None and len(sigmas) != num_steps:
    raise ValueError(
      f"{len(sigmas)} sigmas {tuple(sigmas)} make {len(sigmas)} steps, not num_steps={num_steps}; "
      "give as many σ's as steps."
    )
  problem = check_sigmas(sigmas, sigma_min=sigma_min)
  if problem:
    raise ValueError(f"sigmas {problem}.")
  sigmas = np.asarray(sigmas, np.float64)
  # the scale of step i's re-noising, to σ_{i+1}; the last goes nowhere (σ_min: scale 0)
  renoise = np.sqrt(np.append(sigmas[1:], sigma_min) ** 2 - sigma_min**2)
  dtype = compute_dtype(x_T)
  per_step = {
    "sigma": jnp.asarray(sigmas, dtype),
    "renoise": jnp.asarray(renoise, dtype),
  }

  kept = float(np.sqrt(1.0 - gamma**2))  # the share of the predicted noise ε̂

  def step(carry, s, z):
    x, _ = carry
    x0 = f(x, s["sigma"]).astype(dtype)
    if clip_denoised:
      x0 = jnp.clip(x0, -1, 1)
    if z is not None:
      z = z.astype(dtype)
      if gamma != 1.0:  # Algorithm 1's program stays as it was
        z = gamma * z + kept * (x - x0) / s["sigma"]
      x = x0 + s["renoise"] * z
    return x, x0

  x = jnp.asarray(x_T).astype(dtype) * jnp.asarray(sigmas[0], dtype)
  init = (x, jnp.zeros_like(x))
  return run_steps(
    step,
    x_T,
    per_step,
    key=key,
    noise=noise,
    needs_noise=len(sigmas) > 1,
    return_trajectory=return_trajectory,
    init=init,
    read=lambda carry: carry[1].astype(jnp.asarray(x_T).dtype),
  )
