"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around a conditional model function."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp


def classifier_free(
  model_fn: Callable,
  labels,
  *,
  guidance_scale: float,
  null_label: int,
  num_guided_channels: int | None = None,
) -> Callable:
  """Turns `model_fn(x, t, y)` into a guided `fn(x, t)` for the samplers.

  out = out(∅) + s · (out(y) − out(∅)): s = 1 is the conditional model, s = 0 the unconditional
  one, s > 1 trades diversity for fidelity. Both halves run as one batch of 2B. Only the first
  `num_guided_channels` channels are guided (e.g. ε of a model that also outputs a variance, which
  is taken from the conditional half as in GLIDE/ADM); None guides every channel.
  """
  labels = jnp.asarray(labels, jnp.int32)

  def guided(x, t):
    batch = x.shape[0]
    y = jnp.concatenate(
      [jnp.broadcast_to(labels, (batch,)), jnp.full((batch,), null_label, jnp.int32)]
    )
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)
    cond, uncond = out[:batch], out[batch:]
    c = out.shape[-1] if num_guided_channels is None else num_guided_channels
    mixed = uncond[..., :c] + guidance_scale * (cond[..., :c] - uncond[..., :c])
    return jnp.concatenate([mixed, cond[..., c:]], axis=-1)

  return guided
