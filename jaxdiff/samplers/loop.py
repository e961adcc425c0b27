"""The one loop every sampler runs: a `lax.scan` over precomputed per-step tables.

The scan's carry is any pytree (a multistep solver keeps its previous model outputs in it); the
image is read out of it by `read`. Model times may be integers (discrete-time samplers call the
network at the training process's timesteps) or floats (σ-space solvers and interpolated grids).
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from jaxdiff.diffusion import VARIANCES


def check_choice(option: str, value, choices) -> None:
  """ValueError naming `option` unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"unknown {option} {value!r}; choose one of {choices}.")


def check_variance(variance: str) -> None:
  check_choice("variance", variance, VARIANCES)


def check_full_schedule(schedule, sampler: str) -> None:
  """Samplers that pick their own timesteps from the training schedule (DDIM, the σ-space and
  multistep solvers) refuse a respaced one (ADM's sub-sequence): it has lost the steps they
  choose from."""
  if schedule.num_timesteps != schedule.num_train_timesteps:
    raise ValueError(f"{sampler} takes the full training schedule; it picks its own timesteps.")


def check_x_T(x_T) -> None:
  """A batch of images, batch first: (B, H, W, C) in NHWC, or any (B, …) of rank ≥ 2."""
  if jnp.ndim(x_T) < 2:
    raise ValueError(
      f"x_T must be a batch of images (batch first, e.g. (B, H, W, C)), got shape {jnp.shape(x_T)}."
    )


def run_steps(
  step_fn: Callable,
  x_T,
  per_step: dict,
  *,
  key=None,
  noise=None,
  needs_noise: bool = True,
  return_trajectory: bool = False,
  init=None,
  read: Callable | None = None,
):
  """Runs `carry = step_fn(carry, tables_i, noise_i)` for every step i in one compiled scan.

  The carry starts as `init` (any pytree; x_T itself by default) and `read(carry)` is the image
  it holds (the carry itself by default). With `needs_noise=False` and no explicit noise, step_fn
  receives None for the noise.

  `per_step` maps names to arrays with a leading step axis. The noise of step i is `noise[i]`
  when an explicit `noise` array of shape (num_steps, *x_T.shape) is given (to replay a
  trajectory), otherwise it is drawn from `fold_in(key, i)`, so no step reuses a key and the
  draws do not depend on how many steps ran before. Returns x_0, or every step's image stacked
  when `return_trajectory` (trajectory[i] is the image after step i).
  """
  check_x_T(x_T)
  read = read or (lambda carry: carry)
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

  def body(carry, inputs):
    tables, i, step_noise = inputs
    if step_noise is None and needs_noise:
      step_noise = jax.random.normal(jax.random.fold_in(key, i), x_T.shape, x_T.dtype)
    carry = step_fn(carry, tables, step_noise)
    return carry, (read(carry) if return_trajectory else None)

  carry = x_T if init is None else init
  final, trajectory = jax.lax.scan(body, carry, (per_step, jnp.arange(num_steps), draws))
  return trajectory if return_trajectory else read(final)


def call_model(model_fn: Callable, x, t):
  """model_fn(x, t) with the scalar time t broadcast to the batch, checked at the boundary.

  Integer times are passed as int32 (the training process's timesteps); floating times keep
  their value, so a solver may call the network between grid points (float32, or float64 under
  x64). The output must have x's shape, or twice its channels (a learned variance).
  """
  t = jnp.asarray(t)
  dtype = jnp.int32 if jnp.issubdtype(t.dtype, jnp.integer) else t.dtype
  output = model_fn(x, jnp.full((x.shape[0],), t, dtype=dtype))
  channels = x.shape[-1]
  if output.shape[:-1] != x.shape[:-1] or output.shape[-1] not in (channels, 2 * channels):
    raise ValueError(
      f"the model returned shape {output.shape} for input {x.shape}: it must return the "
      f"input's shape (or {2 * channels} channels with a learned variance)."
    )
  chex.assert_type(output, float)
  return output
