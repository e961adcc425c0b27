"""Exact log-likelihoods through the probability-flow ODE, in bits per dimension.

An ODE dx/dτ = f(x, τ) that carries the data (τ = start) to a known prior (τ = end) defines a
density at its start by the instantaneous change of variables (Chen et al. 2018, FFJORD):

    log p_start(x(start)) = log p_end(x(end)) + ∫_start^end div f(x(τ), τ) dτ,

integrated jointly with the state by an adaptive Dormand–Prince 5(4) solver (or fixed-step RK4).
Two ODEs are built here from a network function:

- a flow model (`flow_ode`): dx/dσ = v(x, σ) on the straight path of jaxdiff.flow, from the data at
  σ = 0 to N(0, I) at σ = 1; the network is called at t = σ·flow.TIME_SCALE;
- a discrete diffusion model (`discrete_model_ode`): Song et al. (2021)'s probability-flow ODE in
  σ-space, x̃ = x_t/√ᾱ = x_0 + σ·ε with D(x̃, σ) from `preconditioning.discrete_denoiser`,
  dx̃/dσ = (x̃ − D)/σ, integrated in λ = ln σ (dx̃/dλ = x̃ − D) from the schedule's smallest σ
  (its step 0, not σ = 0) to its largest, where the prior is the DDPM's N(0, I) on x_T, i.e.
  N(0, (1 + σ_max²)·I) on x̃. The density this computes is the ODE model's marginal at σ_min,
  evaluated at the (dequantised) image as the ODE's starting point — the density of x̃ at σ_min,
  which Song et al. report the same way (at t = 10⁻⁵); no decoder term is added.

The divergence is exact (the Jacobian's diagonal, one vector–Jacobian product per dimension: small
images) or Hutchinson's estimate zᵀ(∂f/∂x)z (Hutchinson 1989; FFJORD) with Rademacher or Gaussian
probes z drawn once per integration and held fixed along it, as the papers do. Each probe keeps its
own integral, so the spread of the estimate over probes comes out of one solve. Networks must
treat the examples of a batch independently (a jaxdiff network in eval mode does).

Bits/dim follow the papers (Song et al. 2021, FFJORD): 8-bit images k are uniformly dequantised,
x = 2·(k + u)/256 − 1 with u ~ U[0, 1)^D, and the density is moved to [0, 256)^D data by the
scaling's Jacobian (128^D), bits/dim = −log₂ p(x)/D + 7, an upper bound on the negative
log-likelihood of the discrete image under the model's density integrated over its bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import flow, preconditioning
from jaxdiff.schedules import Schedule

DIVERGENCES = ("exact", "rademacher", "gaussian")
SOLVERS = ("dopri5", "rk4")
LOG2_HALF_RANGE = 7.0  # log₂ 128: [−1, 1] data scaled to [0, 256)
MAX_STEPS = 4096  # dopri5's limit on steps (accepted and rejected); `Solution.success` says if hit


class ProbabilityFlow(NamedTuple):
  """An ODE dx/dτ = field(x, τ) from the data at τ = start to the prior at τ = end."""

  field: Callable  # field(x, τ) -> dx/dτ for a batch x and a scalar τ
  start: float
  end: float
  prior_log_density: Callable  # log p_end(x_end) per example, shape (B,)


class Solution(NamedTuple):
  """What `log_likelihood` returns; log_density has a column per probe (one for 'exact')."""

  log_density: jax.Array  # (B, K): log p_start(x) per example and probe, in nats
  x_end: jax.Array  # the state at τ = end
  num_evaluations: jax.Array  # field evaluations (each with its divergence), int32
  success: jax.Array  # bool: dopri5 reached `end` within MAX_STEPS (always True for rk4)


def standard_normal_log_density(x, variance=1.0):
  """log N(x; 0, variance·I) per example (batch first)."""
  dims = math.prod(x.shape[1:])
  sq = jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))
  return -0.5 * (sq / variance + dims * jnp.log(2 * jnp.pi * jnp.asarray(variance, x.dtype)))


def _per_example(tau, x):
  return jnp.broadcast_to(jnp.asarray(tau, x.dtype), (x.shape[0],))


def flow_velocity(model_fn: Callable) -> Callable:
  """v(x, σ) of a flow network `model_fn(x, t)` trained at t = σ·flow.TIME_SCALE; extra output
  channels (a learned variance) are dropped."""

  def velocity(x, sigma):
    out = model_fn(x, _per_example(sigma, x) * flow.TIME_SCALE)
    return out[..., : x.shape[-1]].astype(x.dtype)

  return velocity


def flow_ode(velocity: Callable) -> ProbabilityFlow:
  """dx/dσ = v(x, σ) from the data (σ = 0) to N(0, I) at σ = 1 (jaxdiff.flow's path)."""
  return ProbabilityFlow(velocity, 0.0, 1.0, standard_normal_log_density)


def diffusion_ode(denoise: Callable, *, sigma_min: float, sigma_max: float) -> ProbabilityFlow:
  """The probability-flow ODE of a σ-space denoiser D(x, σ) ≈ E[x_0 | x_0 + σ·ε = x] in λ = ln σ:
  dx/dλ = x − D(x, e^λ) from ln σ_min to ln σ_max, with the prior N(0, (1 + σ_max²)·I) — the VP
  model's N(0, I) on x_T = x/√(1 + σ_max²)."""

  def field(x, log_sigma):
    return x - denoise(x, _per_example(jnp.exp(log_sigma), x)).astype(x.dtype)

  return ProbabilityFlow(
    field,
    float(np.log(sigma_min)),
    float(np.log(sigma_max)),
    lambda x: standard_normal_log_density(x, 1.0 + float(sigma_max) ** 2),
  )


def discrete_model_ode(model_fn: Callable, *, schedule: Schedule, prediction: str):
  """`diffusion_ode` of a discrete jaxdiff model `model_fn(x_t, t)` ('epsilon', 'x0' or 'v' on
  `schedule`, a full training schedule) between the σ's of its first and last training steps."""
  sigmas = preconditioning.train_sigmas(schedule)
  denoise = preconditioning.discrete_denoiser(model_fn, schedule=schedule, prediction=prediction)
  return diffusion_ode(denoise, sigma_min=float(sigmas[0]), sigma_max=float(sigmas[-1]))


def model_ode(model_fn: Callable, *, prediction: str, schedule: Schedule) -> ProbabilityFlow:
  """The ODE of a jaxdiff network: `flow_ode` for prediction 'flow', else `discrete_model_ode`."""
  if prediction == flow.PREDICTION:
    return flow_ode(flow_velocity(model_fn))
  return discrete_model_ode(model_fn, schedule=schedule, prediction=prediction)


# --- the divergence ----------------------------------------------------------------------------


def draw_probes(key, shape, divergence: str, num_probes: int, dtype=jnp.float32):
  """(num_probes, *shape) Hutchinson probes (E[zzᵀ] = I), or None for 'exact'."""
  if divergence == "exact":
    return None
  if divergence == "rademacher":
    return jax.random.rademacher(key, (num_probes, *shape), dtype)
  if divergence == "gaussian":
    return jax.random.normal(key, (num_probes, *shape), dtype)
  raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}.")


def divergence(fn: Callable, x, probes=None):
  """(fn(x), div) of a batched fn: div is (B, 1), the exact trace of each example's Jacobian
  with `probes` None, else (B, K), zᵀ(∂fn/∂x)z per probe z.

  Reverse mode: one forward pass, then one vector–Jacobian product per probe, or per dimension
  (in chunks) for the exact trace — the examples being independent, e_iᵀJ of every example comes
  from one product. (Forward mode would do as well, but the CPU GroupNorm's custom_vjp has none.)
  """
  batch, dims = x.shape[0], math.prod(x.shape[1:])
  out, pullback = jax.vjp(fn, x)
  if probes is not None:
    products = jax.vmap(lambda z: pullback(z.astype(out.dtype))[0])(probes)
    return out, jnp.sum((products * probes).reshape(len(probes), batch, dims), axis=-1).T

  def diagonal(i):  # ∂fn_i/∂x_i of every example at once
    cotangent = jnp.broadcast_to(jax.nn.one_hot(i, dims, dtype=out.dtype), (batch, dims))
    return pullback(cotangent.reshape(out.shape))[0].reshape(batch, dims)[:, i]

  diag = jax.lax.map(diagonal, jnp.arange(dims), batch_size=min(dims, 16))
  return out, jnp.sum(diag, axis=0)[:, None]


# --- the solvers -------------------------------------------------------------------------------

# Butcher tableaus (A strictly lower triangular, padded; weights B; nodes C). Dormand & Prince
# (1980): 5th-order weights B and their difference E to the embedded 4th order's; the 7th stage is
# the next step's first (FSAL).
_DOPRI5_A = np.array([
  [0, 0, 0, 0, 0, 0, 0],
  [1 / 5, 0, 0, 0, 0, 0, 0],
  [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
  [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0],
  [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
  [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
  [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
])  # fmt: skip
_DOPRI5_B = _DOPRI5_A[6]
_DOPRI5_C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1])
_DOPRI5_E = np.array([71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40])
_RK4_A = np.array([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1, 0]])
_RK4_B = np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6])
_RK4_C = np.array([0, 0.5, 0.5, 1])


def _combine(y, h, weights, ks):
  """y + h·Σ_i weights_i·k_i over the pytrees y and ks (each leaf of ks stacked over stages)."""
  return jax.tree.map(lambda y0, k: y0 + h * jnp.tensordot(weights.astype(k.dtype), k, 1), y, ks)


def _stages(fn, y, tau, h, ks, first, a, c):
  """Stages first.. of an explicit Runge–Kutta step into `ks`, in one loop: the network is traced
  once, whatever the number of stages."""
  a, c = jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32)

  def stage(i, ks):
    k = fn(_combine(y, h, a[i], ks), tau + c[i] * h)
    return jax.tree.map(lambda stack, ki: stack.at[i].set(ki), ks, k)

  return jax.lax.fori_loop(first, len(c), stage, ks)


def _error_norm(error, y0, y1, rtol, atol):
  """The largest over examples of the RMS scaled error, taken separately over the state and over
  the divergence integrals (torchdiffeq's mixed norm, per example), so each example meets the
  tolerance; every leaf has the batch first."""
  norms = []
  for e, a, b in zip(jax.tree.leaves(error), jax.tree.leaves(y0), jax.tree.leaves(y1)):
    scaled = e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))
    norms.append(jnp.max(jnp.sqrt(jnp.mean(jnp.square(scaled.reshape(e.shape[0], -1)), axis=1))))
  return jnp.max(jnp.stack(norms))


def _stacked(y, stages):
  return jax.tree.map(lambda leaf: jnp.zeros((stages, *leaf.shape), leaf.dtype), y)


def _dopri5(fn, y0, start, end, rtol, atol):
  """Adaptive Dormand–Prince 5(4), one step size for the whole batch, the usual controller
  (safety 0.9, factor in [0.2, 10]) from a first step of 10⁻³ of the span; (y_end, nfe, success)."""
  span = end - start

  def cond(carry):
    tau, _, _, _, _, steps = carry
    return (tau < end) & (steps < MAX_STEPS)

  def body(carry):
    tau, y, ks, h, nfe, steps = carry
    last = h >= end - tau
    h = jnp.where(last, end - tau, h)
    first = jnp.where(steps == 0, 0, 1)  # FSAL: stage 0 is the last step's stage 6
    ks = _stages(fn, y, tau, h, ks, first, _DOPRI5_A, _DOPRI5_C)
    y_new = _combine(y, h, _DOPRI5_B, ks)
    error = _combine(jax.tree.map(jnp.zeros_like, y), h, _DOPRI5_E, ks)
    norm = _error_norm(error, y, y_new, rtol, atol)
    accept = norm <= 1.0
    factor = jnp.clip(0.9 * jnp.maximum(norm, 1e-10) ** -0.2, 0.2, 10.0)
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)
    fsal = jax.tree.map(lambda k: k.at[0].set(jnp.where(accept, k[6], k[0])), ks)
    tau = jnp.where(accept, jnp.where(last, end, tau + h), tau)
    return tau, pick(y_new, y), fsal, h * factor, nfe + 7 - first, steps + 1

  h0 = jnp.asarray(1e-3 * span, jnp.float32)
  zero = jnp.asarray(0, jnp.int32)
  init = (jnp.asarray(start, jnp.float32), y0, _stacked(y0, 7), h0, zero, zero)
  tau, y, _, _, nfe, _ = jax.lax.while_loop(cond, body, init)
  return y, nfe, tau >= end


def _rk4(fn, y0, start, end, num_steps):
  """Classical RK4 in `num_steps` equal steps; (y_end, nfe, True)."""
  h = (end - start) / num_steps

  def step(y, i):
    ks = _stages(fn, y, start + i * h, h, _stacked(y, 4), 0, _RK4_A, _RK4_C)
    return _combine(y, h, _RK4_B, ks), None

  y, _ = jax.lax.scan(step, y0, jnp.arange(num_steps))
  return y, jnp.asarray(4 * num_steps, jnp.int32), jnp.asarray(True)


def log_likelihood(
  ode: ProbabilityFlow,
  x,
  *,
  probes=None,
  solver: str = "dopri5",
  rtol: float = 1e-5,
  atol: float = 1e-5,
  num_steps: int = 100,
) -> Solution:
  """log p_start(x) of the batch `x` under `ode`, by the instantaneous change of variables.

  `probes` (K, *x.shape) from `draw_probes` selects Hutchinson's estimator (each probe its own
  integral: K estimates of each log-density, the columns of `Solution.log_density`), None the
  exact divergence. 'dopri5' meets `rtol` and `atol` on the state and on the integrals; 'rk4'
  takes `num_steps` equal steps.
  """
  x = jnp.asarray(x, jnp.float32)

  def augmented(y, tau):
    return divergence(lambda s: ode.field(s, tau), y[0], probes)

  columns = 1 if probes is None else probes.shape[0]
  y0 = (x, jnp.zeros((x.shape[0], columns), x.dtype))
  if solver == "dopri5":
    (x_end, integral), nfe, success = _dopri5(augmented, y0, ode.start, ode.end, rtol, atol)
  elif solver == "rk4":
    (x_end, integral), nfe, success = _rk4(augmented, y0, ode.start, ode.end, num_steps)
  else:
    raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}.")
  return Solution(ode.prior_log_density(x_end)[:, None] + integral, x_end, nfe, success)


# --- data and bits -----------------------------------------------------------------------------


def dequantize(key, images):
  """Uniform dequantisation of 8-bit images given in [−1, 1] (k/127.5 − 1): x = 2(k + u)/256 − 1,
  u ~ U[0, 1) per dimension, so x fills k's bin of width 2/256 in [−1, 1)."""
  k = jnp.round((jnp.asarray(images, jnp.float32) + 1) * 127.5)
  u = jax.random.uniform(key, k.shape, jnp.float32)
  return 2 * (k + u) / 256 - 1


def bits_per_dim(log_density, dims: int):
  """−log₂ p/D + 7: a density on [−1, 1]^D data in bits/dim of [0, 256)^D data (FFJORD, Song et
  al. 2021), comparable with the discrete bound of jaxdiff.likelihood."""
  return -log_density / (dims * math.log(2.0)) + LOG2_HALF_RANGE


def ode_bits_per_dim(
  key,
  ode: ProbabilityFlow,
  images,
  *,
  divergence: str = "rademacher",
  num_probes: int = 1,
  solver: str = "dopri5",
  rtol: float = 1e-5,
  atol: float = 1e-5,
  num_steps: int = 100,
):
  """Bits/dim of 8-bit `images` (in [−1, 1]) under `ode`, uniformly dequantised: (B, K), one
  column per probe (one for 'exact'), and the Solution. The dequantisation noise and the probes are
  drawn from `key`."""
  dequantize_key, probe_key = jax.random.split(key)
  x = dequantize(dequantize_key, images)
  probes = draw_probes(probe_key, x.shape, divergence, num_probes, x.dtype)
  solution = log_likelihood(
    ode, x, probes=probes, solver=solver, rtol=rtol, atol=atol, num_steps=num_steps
  )
  return bits_per_dim(solution.log_density, math.prod(x.shape[1:])), solution
