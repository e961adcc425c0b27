"""Euler and Heun on a flow model, step for step as diffusers' FlowMatchEulerDiscreteScheduler and
FlowMatchHeunDiscreteScheduler.

A flow model's network predicts the velocity v = dx_σ/dσ of the straight path
x_σ = (1 − σ)x_0 + σε (`jaxdiff.flow`), so sampling integrates dx/dσ = v(x, σ) from σ = 1 (x_T,
a unit-variance draw, taken as it is) down to σ = 0 on a shifted σ grid (`flow_sigmas.euler_grid`),
the network called at t = σ·1000 as diffusers calls its flow transformers. Both samplers step in
float32 (float64 for a float64 x_T), as diffusers upcasts its sample, and call the network on x in
x_T's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import flow
from jaxdiff.diffusion import compute_dtype
from jaxdiff.samplers import flow_sigmas
from jaxdiff.samplers.loop import call_model, run_steps


def _velocity(model_fn, x, t, model_dtype):
  """v(x, σ) from the network at time t = σ·1000; a model with learned variances (2C channels)
  has its first C used."""
  out = call_model(model_fn, x.astype(model_dtype), t)
  return out[..., : x.shape[-1]].astype(x.dtype)


def _per_step(timesteps, sigmas, dtype) -> dict:
  """Each step's model time, σ, next σ and step σ_next − σ in the compute dtype (the step size
  taken in float64, then rounded once)."""
  tables = {
    "t": timesteps,
    "sigma": sigmas[:-1],
    "sigma_next": sigmas[1:],
    "dt": sigmas[1:] - sigmas[:-1],
  }
  return {k: jnp.asarray(v, dtype) for k, v in tables.items()}


def _check_prediction(prediction: str, sampler: str) -> None:
  if prediction != flow.PREDICTION:
    raise ValueError(
      f"{sampler} samples flow models (prediction={flow.PREDICTION!r}), not prediction="
      f"{prediction!r}."
    )


def flow_euler(
  model_fn: Callable,
  schedule,
  x_T,
  *,
  num_steps: int = 50,
  shift: float = 1.0,
  use_dynamic_shifting: bool = False,
  mu: float | None = None,
  time_shift_type: str = "exponential",
  use_karras_sigmas: bool = False,
  prediction: str = flow.PREDICTION,
  return_trajectory: bool = False,
):
  """Euler's method x ← x + (σ_{i+1} − σ_i)·v(x, σ_i): diffusers' FlowMatchEulerDiscreteScheduler
  (deterministic, no per-token timesteps or terminal stretch), one model call per step.

  The grid is that scheduler's (`flow_sigmas.euler_grid`): shifted by SD3's `shift`, or with
  `use_dynamic_shifting` by Flux's `mu` (`time_shift_type` 'exponential' or 'linear'); Karras
  σ's between its ends with `use_karras_sigmas`. `schedule` is not read (a flow model's σ lives on
  the straight path; None is fine). Returns x_0 in x_T's dtype, or the image after every step
  (num_steps, *x_T.shape) with `return_trajectory`.
  """
  _check_prediction(prediction, "flow_euler")
  timesteps, sigmas = flow_sigmas.euler_grid(
    num_steps,
    shift=shift,
    use_dynamic_shifting=use_dynamic_shifting,
    mu=mu,
    time_shift_type=time_shift_type,
    use_karras_sigmas=use_karras_sigmas,
  )
  dtype, model_dtype = compute_dtype(x_T), jnp.asarray(x_T).dtype

  def step(x, s, _):
    return x + s["dt"] * _velocity(model_fn, x, s["t"], model_dtype)

  return run_steps(
    step,
    x_T,
    _per_step(timesteps, sigmas, dtype),
    needs_noise=False,
    return_trajectory=return_trajectory,
    init=jnp.asarray(x_T).astype(dtype),
    read=lambda x: x.astype(model_dtype),
  )


def flow_heun(
  model_fn: Callable,
  schedule,
  x_T,
  *,
  num_steps: int = 50,
  shift: float = 1.0,
  prediction: str = flow.PREDICTION,
  return_trajectory: bool = False,
):
  """Heun's method on dx/dσ = v: diffusers' FlowMatchHeunDiscreteScheduler (no churn).

  diffusers interleaves its grid ([σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, 0]) and keeps the Euler
  predictor's slope, step and sample between its `step` calls; here one scan step does both
  evaluations: the Euler predictor x̂ = x + (σ_{i+1} − σ_i)·v(x, σ_i), then the average of v(x, σ_i)
  and v(x̂, σ_{i+1}) from x. The last step, to σ = 0, is Euler alone, so a run makes 2n − 1
  model calls. The grid is FlowMatchEuler's with SD3's `shift` (`flow_sigmas.euler_grid`; this
  scheduler has neither dynamic shifting nor Karras σ's). Returns x_0 in x_T's dtype, or the
  image after every full step (num_steps, *x_T.shape) with `return_trajectory`.
  """
  _check_prediction(prediction, "flow_heun")
  timesteps, sigmas = flow_sigmas.euler_grid(num_steps, shift=shift)
  dtype, model_dtype = compute_dtype(x_T), jnp.asarray(x_T).dtype

  def step(x, s, _):
    v = _velocity(model_fn, x, s["t"], model_dtype)
    x_pred = x + s["dt"] * v

    def correct():
      v_next = _velocity(model_fn, x_pred, s["t_next"], model_dtype)
      return x + s["dt"] * ((v + v_next) / 2)

    # A real branch, not a select: the last step must not call the model at σ = 0.
    return jax.lax.cond(s["last"], lambda: x_pred, correct)

  per_step = _per_step(timesteps, sigmas, dtype)
  # the corrector's time, σ_{i+1}·1000; the last step has none (its entry is never used)
  per_step["t_next"] = jnp.asarray(np.append(timesteps[1:], timesteps[-1]), dtype)
  per_step["last"] = jnp.arange(num_steps) == num_steps - 1
  return run_steps(
    step,
    x_T,
    per_step,
    needs_noise=False,
    return_trajectory=return_trajectory,
    init=jnp.asarray(x_T).astype(dtype),
    read=lambda x: x.astype(model_dtype),
  )
