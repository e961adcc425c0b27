"""Denoisers in σ-space: x_σ = x_0 + σ·ε and D(x, σ) ≈ E[x_0 | x_σ = x].

Three ways to get one, all pure functions of arrays and a network function:

- EDM preconditioning (Karras et al. 2022, Table 1) turns a raw network F(x_in, t_in) into
  D = c_skip·x + c_out·F(c_in·x, c_noise), with scalings that keep F's input and training target at
  unit variance for data of standard deviation σ_data.
- The consistency models' parameterisation (Song et al. 2023, appendix C) is the same with c_skip
  and c_out shifted so that f(x, σ_min) = x exactly (the boundary condition), whatever F is.
- `discrete_denoiser` turns a trained jaxdiff model (ε-, x0- or v-prediction on a discrete
  schedule) into D(x, σ), so a jaxdiff checkpoint can be a teacher in σ-space.
- `student_function` is a consistency student's f(x, σ), the one definition its objective
  (objectives/consistency.py) and its sampler (samplers/consistency.py) share: the raw F of the
  consistency parameterisation (diffusion.prediction='consistency'), or a discrete model kept in its
  teacher's prediction and schedule with the boundary condition put around its D(x, σ).

The σ of a discrete schedule and the Karras grid are NumPy float64 (grids are picked before any
loop, whatever the compute dtype); the samplers' `samplers/sigmas.py` imports them from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import PREDICTIONS, compute_dtype, x0_and_eps_at
from jaxdiff.schedules import Schedule, check_sampler_support, sigma_alphas_cumprod

KARRAS_RHO = 7.0  # Karras et al. 2022's ρ; diffusers fixes it too
# The consistency models' σ range and data scale (Song et al. 2023; openai/consistency_models and
# diffusers' CMStochasticIterativeScheduler default to the same).
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
# diffusion.prediction of a consistency student whose network is the raw F of the consistency
# parameterisation (trained from scratch); the discrete predictions are those of diffusion.py.
CONSISTENCY = "consistency"
STUDENT_PREDICTIONS = PREDICTIONS + (CONSISTENCY,)


class Scalings(NamedTuple):
  """D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise); each has σ's shape."""

  c_skip: jnp.ndarray
  c_out: jnp.ndarray
  c_in: jnp.ndarray
  c_noise: jnp.ndarray


def edm_scalings(sigma, *, sigma_data: float = SIGMA_DATA) -> Scalings:
  """Karras et al. 2022, Table 1: c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²),
  c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ."""
  total = sigma**2 + sigma_data**2
  return Scalings(
    c_skip=sigma_data**2 / total,
    c_out=sigma * sigma_data / total**0.5,
    c_in=1 / total**0.5,
    c_noise=0.25 * jnp.log(sigma),
  )


def consistency_scalings(
  sigma, *, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA
) -> Scalings:
  """Song et al. 2023, appendix C: c_skip = σ_d²/((σ − σ_min)² + σ_d²) and
  c_out = (σ − σ_min)·σ_d/√(σ² + σ_d²), so c_skip(σ_min) = 1 and c_out(σ_min) = 0; EDM's c_in, and
  the time input of openai's consistency models (diffusers' `sigma_to_t`), 1000·¼·ln(σ + 1e-44),
  which puts σ ∈ [0.002, 80] at t ∈ [−1554, 1096], the range of a network built for 1000 steps.
  """
  total = sigma**2 + sigma_data**2
  return Scalings(
    c_skip=sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2),
    c_out=(sigma - sigma_min) * sigma_data / total**0.5,
    c_in=1 / total**0.5,
    c_noise=1000 * 0.25 * jnp.log(sigma + 1e-44),
  )


def _per_example(sigma, x):
  """σ as a (B,) vector in x's compute dtype: a scalar is broadcast to the batch."""
  sigma = jnp.asarray(sigma, compute_dtype(x))
  return jnp.broadcast_to(sigma, (x.shape[0],))


def _expand(values, x):
  """A (B,) vector shaped to broadcast against x (batch first)."""
  return values.reshape(values.shape + (1,) * (x.ndim - 1))


def precondition(net_fn: Callable, scalings: Callable[..., Scalings]) -> Callable:
  """D(x, σ) = c_skip·x + c_out·net_fn(c_in·x, c_noise) with `scalings(σ)` per example.

  σ is a scalar or one per example. `net_fn(x_in, t_in)` gets t_in of shape (B,) and must return
  x's shape (a guided network from `guidance.classifier_free` is one).
  """

  def denoise(x, sigma):
    sigma = _per_example(sigma, x)
    s = scalings(sigma)
    x = x.astype(sigma.dtype)
    out = net_fn(_expand(s.c_in, x) * x, s.c_noise)
    if out.shape != x.shape:
      raise ValueError(
        f"the network returned shape {out.shape} for input {x.shape}: a preconditioned "
        "network must return its input's shape."
      )
    return _expand(s.c_skip, x) * x + _expand(s.c_out, x) * out.astype(x.dtype)

  return denoise


def edm_denoiser(net_fn: Callable, *, sigma_data: float = SIGMA_DATA) -> Callable:
  """EDM's D(x, σ) of a raw network F(x_in, t_in)."""
  return precondition(net_fn, lambda sigma: edm_scalings(sigma, sigma_data=sigma_data))


def consistency_function(
  net_fn: Callable, *, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA
) -> Callable:
  """A consistency model f(x, σ) of a raw network F(x_in, t_in): f(x, σ_min) = x for any F.

  The one definition a consistency student's objective and `samplers.consistency` share.
  """
  return precondition(
    net_fn, lambda sigma: consistency_scalings(sigma, sigma_min=sigma_min, sigma_data=sigma_data)
  )


def train_sigmas(schedule: Schedule) -> np.ndarray:
  """σ = √((1 − ᾱ)/ᾱ) of every training step, in float64: finite σ_T on a zero-terminal-SNR
  schedule, whose last ᾱ is taken to be 2⁻²⁴ as diffusers does (`schedules.sigma_alphas_cumprod`).
  σ is the noise level of x_t/√ᾱ; it grows with t, so its logarithm indexes the training steps."""
  alphas_cumprod = sigma_alphas_cumprod(schedule)
  return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def karras_sigmas(
  sigma_max: float, sigma_min: float, num_steps: int, *, rho: float = KARRAS_RHO
) -> np.ndarray:
  """Karras et al. eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ."""
  ramp = np.linspace(0, 1, num_steps)
  hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
  return (hi + ramp * (lo - hi)) ** rho


def _check_full_schedule(schedule: Schedule) -> None:
  # A respaced schedule's steps stand for other timesteps; the map below needs all of them.
  if schedule.num_timesteps != schedule.num_train_timesteps:
    raise ValueError("σ ↔ t needs the full training schedule, not a respaced one.")


def timestep_of_sigma(sigma, *, schedule: Schedule):
  """The fractional timestep of σ (traceable): log σ interpolated linearly between training steps,
  clamped to [0, T − 1] beyond the table's ends — `samplers.sigmas.sigma_to_t` for traced σ."""
  _check_full_schedule(schedule)
  sigma = jnp.asarray(sigma)
  dtype = compute_dtype(sigma)
  log_sigmas = jnp.asarray(np.log(train_sigmas(schedule)), dtype)
  steps = jnp.arange(schedule.num_timesteps, dtype=dtype)
  return jnp.interp(jnp.log(jnp.maximum(sigma.astype(dtype), 1e-10)), log_sigmas, steps)


def sigma_of_timestep(t, *, schedule: Schedule):
  """σ at a fractional timestep (traceable): the inverse of `timestep_of_sigma` on [0, T − 1]."""
  _check_full_schedule(schedule)
  t = jnp.asarray(t)
  dtype = compute_dtype(t) if jnp.issubdtype(t.dtype, jnp.floating) else jnp.float32
  log_sigmas = jnp.asarray(np.log(train_sigmas(schedule)), dtype)
  steps = jnp.arange(schedule.num_timesteps, dtype=dtype)
  return jnp.exp(jnp.interp(t.astype(dtype), steps, log_sigmas))


def discrete_denoiser(model_fn: Callable, *, schedule: Schedule, prediction: str) -> Callable:
  """D(x, σ) ≈ E[x_0 | x_0 + σ·ε = x] of a discrete-time model `model_fn(x_t, t)` (a jaxdiff
  network of `prediction` 'epsilon', 'x0' or 'v' trained on `schedule`).

  x = x_t/√ᾱ with ᾱ = 1/(σ² + 1), so the model sees x/√(σ² + 1) at the fractional timestep of σ
  (`timestep_of_sigma`), and its output is read with that σ's own ᾱ, as diffusers' σ-space
  schedulers and `samplers.karras` do; at a training step's σ that is the step's ᾱ exactly.
  σ beyond the table's ends is still read with its own ᾱ, at t = 0 or T − 1. Learned-variance
  channels are dropped.
  """
  check_sampler_support(schedule, prediction=prediction)
  timestep_of_sigma(jnp.float32(1.0), schedule=schedule)  # refuse a respaced schedule now

  def denoise(x, sigma):
    sigma = _per_example(sigma, x)
    x = x.astype(sigma.dtype)
    alpha_cumprod = _expand(1 / (sigma**2 + 1), x)
    x_t = x * jnp.sqrt(alpha_cumprod)
    output = model_fn(x_t, timestep_of_sigma(sigma, schedule=schedule))[..., : x.shape[-1]]
    x0, _ = x0_and_eps_at(output.astype(x.dtype), x_t, alpha_cumprod, prediction=prediction)
    return x0

  return denoise


def student_function(
  net_fn: Callable,
  *,
  prediction: str,
  schedule: Schedule,
  sigma_min: float = SIGMA_MIN,
  sigma_data: float = SIGMA_DATA,
) -> Callable:
  """A consistency student's f(x, σ) of its network `net_fn(x_in, t_in)`; f(x, σ_min) = x exactly.

  prediction 'consistency': `consistency_function(net_fn)`, the network being the raw F of Song
  et al. 2023 (EDM's c_in, t_in = 250·ln σ). 'epsilon', 'x0' or 'v': the network is a discrete
  model of that prediction on `schedule` (a distilled student keeps its teacher's) and D its
  `discrete_denoiser`. Song et al. distil an EDM teacher D = c_skip_E·x + c_out_E·F into
  f = c_skip·x + c_out·F with the consistency scalings and F started from the teacher's; here D
  plays EDM's D: F = (D − c_skip_E·x)/c_out_E is the EDM network D implies, so
  f = (c_skip − r·c_skip_E)·x + r·D with r = c_out/c_out_E = (σ − σ_min)/σ. A student started
  from its teacher's weights is then the teacher's denoiser up to O(σ_min/σ), as in the paper
  (f ≈ 0.004·x + 0.996·D at σ = 0.5) — the latent consistency models' way of wrapping a
  pretrained x̂_0 (Luo et al. 2023) — while a blend c_skip·x + (1 − c_skip)·D would start it from
  noisy outputs (x̂_0 + c_skip·σ·z) at the σ's that multistep sampling re-noises to: on the digits
  that cost two-step samples ~2× in Fréchet distance. Guidance on the network guides f, which is
  affine in its output.
  """
  if prediction == CONSISTENCY:
    return consistency_function(net_fn, sigma_min=sigma_min, sigma_data=sigma_data)
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {STUDENT_PREDICTIONS}.")
  denoise = discrete_denoiser(net_fn, schedule=schedule, prediction=prediction)

  def f(x, sigma):
    sigma = _per_example(sigma, x)
    cm = consistency_scalings(sigma, sigma_min=sigma_min, sigma_data=sigma_data)
    edm = edm_scalings(sigma, sigma_data=sigma_data)
    ratio = cm.c_out / edm.c_out  # exactly 0 at σ_min: f = x whatever D is
    x = x.astype(sigma.dtype)
    return _expand(cm.c_skip - ratio * edm.c_skip, x) * x + _expand(ratio, x) * denoise(x, sigma)

  return f
