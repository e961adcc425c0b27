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
  guidance_rescale: float = 0.0,
) -> Callable:
  """Turns `model_fn(x, t, y)` into a guided `fn(x, t)` for the samplers.

  out = out(∅) + s · (out(y) − out(∅)): s = 1 is the conditional model, s = 0 the unconditional
  one, s > 1 trades diversity for fidelity. Both halves run as one batch of 2B. Only the first
  `num_guided_channels` channels are guided (e.g. ε of a model that also outputs a variance, which
  is taken from the conditional half as in GLIDE/ADM); None guides every channel.

  `guidance_rescale` φ ∈ [0, 1] is Lin et al. (2024) §3.4 (diffusers' `rescale_noise_cfg`): large
  scales inflate the guided output's standard deviation beyond the conditional one's, which with
  a zero-terminal-SNR schedule overexposes images, so the guided channels are scaled back to the
  conditional std (`rescale`) and mixed, φ·rescaled + (1 − φ)·guided. φ = 0 is plain guidance.
  """
  if not 0.0 <= guidance_rescale <= 1.0:
    raise ValueError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale}.")
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
    if guidance_rescale > 0.0:
      mixed = rescale(mixed, cond[..., :c], guidance_rescale)
    return jnp.concatenate([mixed, cond[..., c:]], axis=-1)

  return guided


def rescale(guided, cond, guidance_rescale: float):
  """φ·guided·std(cond)/std(guided) + (1 − φ)·guided, each std per example over all other axes.

  The population std (diffusers' torch.std is the sample std) does not change the ratio.
  """
  axes = tuple(range(1, guided.ndim))
  std_cond = jnp.std(cond, axis=axes, keepdims=True)
  std_guided = jnp.std(guided, axis=axes, keepdims=True)
  rescaled = guided * (std_cond / std_guided)
  return guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided
