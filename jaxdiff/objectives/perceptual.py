"""LPIPS (Zhang et al. 2018) as a training distance: the VAE's perceptual term and the consistency
models' LPIPS metric. The network is frozen; its parameters reach the jitted step as the
objective's `frozen_params` (an argument, not constants baked into the program)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def lpips_distance(network, a, b, resolution: int = 0):
  """LPIPS between image batches a and b (B, H, W, C) in [-1, 1], per example (B,) (grey images
  are compared as RGB); with `resolution` > 0 both are first resized (bilinear) to it, as the
  consistency-models paper upsamples to 224 before LPIPS."""
  if resolution:
    size = (a.shape[0], resolution, resolution, a.shape[-1])
    a, b = jax.image.resize(a, size, "bilinear"), jax.image.resize(b, size, "bilinear")
  return network(a.astype(jnp.float32), b.astype(jnp.float32))


class Perceptual:
  """An LPIPS module split into what the step carries (`params`) and a distance built from them."""

  def __init__(self, lpips: nnx.Module | None, resolution: int, what: str):
    self.graphdef, self.params = nnx.split(lpips) if lpips is not None else (None, None)
    self.resolution = resolution
    self.what = what  # the setting that asked for it, for the error below

  def distance(self, frozen):
    """fn(a, b) -> (B,) with the LPIPS parameters `frozen` the step passed in."""
    if self.graphdef is None or frozen is None:
      raise ValueError(f"{self.what} needs the LPIPS network: set lpips.path.")
    network = nnx.merge(self.graphdef, frozen)
    return lambda a, b: lpips_distance(network, a, b, self.resolution)
