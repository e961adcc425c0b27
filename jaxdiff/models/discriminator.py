"""The patch discriminator of the LDM autoencoder recipe (pix2pix's PatchGAN, Isola et al. 2017, as
Esser et al. 2021 and Rombach et al. 2022 train their autoencoders with), in Flax NNX, NHWC.

4×4 convolutions: stride 2 with no normalization first, then `layers − 1` stride-2 convolutions
doubling the width (up to 8×) with batch normalization and LeakyReLU(0.2), one stride-1 layer, and
a stride-1 convolution to one logit per patch. Each logit judges a receptive field of 70×70 pixels
at three layers. It is only ever used while training, so its batch normalization always normalizes
with the batch's statistics (PyTorch's training mode) and keeps no running averages.

`frozen=True` reads every parameter through `stop_gradient`: the generator's adversarial loss then
trains the autoencoder only, while the discriminator's own hinge loss trains it, in the same
backward pass and with the same optimizer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NEGATIVE_SLOPE = 0.2
BATCH_NORM_EPS = 1e-5


class _Conv4(nnx.Module):
  def __init__(self, cin: int, cout: int, *, stride: int, bias: bool, rngs: nnx.Rngs):
    # N(0, 0.02) as pix2pix initializes its convolutions
    self.kernel = nnx.Param(0.02 * jax.random.normal(rngs.params(), (4, 4, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,))) if bias else None
    self.stride = stride

  def __call__(self, x, frozen: bool):
    read = jax.lax.stop_gradient if frozen else (lambda v: v)
    y = jax.lax.conv_general_dilated(
      x,
      read(self.kernel[...]),
      (self.stride, self.stride),
      ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y if self.bias is None else y + read(self.bias[...])


class _BatchNorm(nnx.Module):
  def __init__(self, channels: int):
    self.scale = nnx.Param(jnp.ones((channels,)))
    self.bias = nnx.Param(jnp.zeros((channels,)))

  def __call__(self, x, frozen: bool):
    read = jax.lax.stop_gradient if frozen else (lambda v: v)
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    y = (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPS)
    return y * read(self.scale[...]) + read(self.bias[...])


class PatchDiscriminator(nnx.Module):
  """Images (B, H, W, C) in [-1, 1] → logits (B, h, w, 1), one per overlapping patch."""

  def __init__(self, in_channels: int, *, channels: int = 64, layers: int = 3, rngs: nnx.Rngs):
    if layers < 1 or channels < 1:
      raise ValueError(
        f"the discriminator needs layers ≥ 1 and channels ≥ 1, got {layers}, {channels}."
      )
    self.first = _Conv4(in_channels, channels, stride=2, bias=True, rngs=rngs)
    convs, norms, width = [], [], channels
    for n in range(1, layers + 1):
      out = channels * min(2**n, 8)
      convs.append(_Conv4(width, out, stride=2 if n < layers else 1, bias=False, rngs=rngs))
      norms.append(_BatchNorm(out))
      width = out
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.last = _Conv4(width, 1, stride=1, bias=True, rngs=rngs)

  def __call__(self, x: jax.Array, *, frozen: bool = False) -> jax.Array:
    h = jax.nn.leaky_relu(self.first(x.astype(jnp.float32), frozen), NEGATIVE_SLOPE)
    for conv, norm in zip(self.convs, self.norms):
      h = jax.nn.leaky_relu(norm(conv(h, frozen), frozen), NEGATIVE_SLOPE)
    return self.last(h, frozen)
