"""The one loop every sampler runs: a `lax.scan` over precomputed per-step tables."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def run_steps(
  step_fn: Callable,
  x_T,
  per_step: dict,
  *,
  key=None,
  noise=None,
  needs_noise: bool = True,
  return_trajectory: bool = False,
):
  """Runs `x = step_fn(x, tables_i, noise_i)` for every step i in one compiled scan.

  With `needs_noise=False` and no explicit noise, step_fn receives None for the noise.

  `per_step` maps names to arrays with a leading step axis. The noise of step i is `noise[i]`
  when an explicit `noise` array of shape (num_steps, *x_T.shape) is given (to replay a
  trajectory), otherwise it is drawn from `fold_in(key, i)`, so no step reuses a key and the
  draws do not depend on how many steps ran before. Returns x_0, or every step's output stacked
  when `return_trajectory` (trajectory[i] is the state after step i).
  """
  num_steps = next(iter(per_step.values())).shape[0]
  if noise is not None:
    expected = (num_steps,) + tuple(x_T.shape)
    if tuple(noise.shape) != expected:
      raise ValueError(f"noise must have shape {expected} (one draw per step), got {noise.shape}.")
    draws = jnp.asarray(noise, x_T.dtype)
  elif needs_noise and key is None:
    raise ValueError("this sampler draws noise: pass key=... or an explicit noise=... array.")
  else:
    draws = None

  def body(x, inputs):
    tables, i, step_noise = inputs
    if step_noise is None and needs_noise:
      step_noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    x = step_fn(x, tables, step_noise)
    return x, (x if return_trajectory else None)

  x0, trajectory = jax.lax.scan(body, x_T, (per_step, jnp.arange(num_steps), draws))
  return trajectory if return_trajectory else x0


def call_model(model_fn: Callable, x, t):
  """model_fn(x, t) with t broadcast to the batch, as the samplers' models expect."""
  return model_fn(x, jnp.full((x.shape[0],), t, dtype=jnp.int32))
