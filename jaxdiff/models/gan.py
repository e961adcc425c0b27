"""A generative adversarial network (Goodfellow et al. 2014) of the DCGAN family (Radford et al.
2016), in Flax NNX, NHWC: the third family of the VAE/GAN/diffusion comparison.

Generator: z ~ N(0, I) of `latent_dim` → a linear layer to 4×4×C → per level, nearest-neighbour
×2 upsampling and two 3×3 convolutions with LeakyReLU(0.2), the width halving each level → a 3×3
convolution to the image channels and tanh, so images lie in [-1, 1] as the data do. A
class-conditional generator concatenates a learned embedding of the label to z (Mirza & Osindero
2014); its tables have a row for the null label too (`model.class_dropout` > 0 trains it).

Discriminator: a 3×3 convolution, then per level two 3×3 convolutions with LeakyReLU(0.2) and 2×2
average pooling, the width doubling each level, down to 4×4 → one logit from a linear layer. No
normalization layers: the R1 penalty the objective adds (Mescheder et al. 2018) is what keeps it
in check, as in the GANs trained with R1 (StyleGAN, R3GAN). A class-conditional discriminator adds
the projection ⟨embed(y), h⟩ of its last features (Miyato & Koyama 2018).

Both are submodules of one `GAN` module, so one optimizer, the EMA, FSDP and the checkpoints
cover both; the objective keeps their losses apart with `frozen_critic` (every discriminator
parameter read through stop_gradient), as the autoencoder's patch discriminator does. The call
convention is the network table's `model(x, t, y)`: `model(z, None, y)` generates from latents z
(B, latent_dim), `model(images, None, y, critic=True)` scores images.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

NEGATIVE_SLOPE = 0.2


@dataclasses.dataclass(frozen=True)
class GANConfig:
  latent_dim: int = 64  # z's dimension
  generator_channels: int = 128  # the generator's width at 4×4 (halved per level, at least 16)
  discriminator_channels: int = 32  # the discriminator's first width (doubled per level)

  def __post_init__(self):
    for name in ("latent_dim", "generator_channels", "discriminator_channels"):
      if getattr(self, name) < 1:
        raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}.")


def _levels(image_size: int) -> int:
  """Upsampling (or pooling) levels between 4×4 and the image: image_size = 4·2^levels."""
  levels = int(round(math.log2(image_size / 4))) if image_size >= 4 else -1
  if levels < 0 or 4 * 2**levels != image_size:
    raise ValueError(
      f"model.arch='gan' makes images of 4·2^k pixels (8, 16, 32, 64, …), not {image_size}: set "
      "data.image_size to one of those."
    )
  return levels


class _Conv(nnx.Module):
  """A 3×3 convolution, 'SAME' padding, whose parameters `frozen` reads through stop_gradient."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype):
    fan_in = 9 * cin
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (3, 3, cin, cout)) / math.sqrt(fan_in))
    self.bias = nnx.Param(jnp.zeros((cout,)))
    self.dtype = dtype

  def __call__(self, x, frozen: bool = False):
    read = jax.lax.stop_gradient if frozen else (lambda v: v)
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      read(self.kernel[...]).astype(self.dtype),
      (1, 1),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + read(self.bias[...]).astype(self.dtype)


class _Dense(nnx.Module):
  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, scale: float = 1.0):
    self.kernel = nnx.Param(scale * jax.random.normal(rngs.params(), (cin, cout)) / math.sqrt(cin))
    self.bias = nnx.Param(jnp.zeros((cout,)))

  def __call__(self, x, frozen: bool = False):
    read = jax.lax.stop_gradient if frozen else (lambda v: v)
    return x.astype(jnp.float32) @ read(self.kernel[...]) + read(self.bias[...])


def _act(x):
  return jax.nn.leaky_relu(x, NEGATIVE_SLOPE)


def _widths(first: int, levels: int, *, grow: bool) -> list[int]:
  if grow:
    return [first * 2**i for i in range(levels + 1)]
  return [max(first // 2**i, 16) for i in range(levels + 1)]


class Generator(nnx.Module):
  """z (B, latent_dim) [and labels (B,)] → images (B, S, S, C) in [-1, 1]."""

  def __init__(self, cfg: GANConfig, image_size, channels, num_classes, *, rngs, dtype):
    levels = _levels(image_size)
    widths = _widths(cfg.generator_channels, levels, grow=False)
    self.latent_dim, self.first = cfg.latent_dim, widths[0]
    self.embed = (
      nnx.Param(jax.random.normal(rngs.params(), (num_classes + 1, cfg.latent_dim)))
      if num_classes
      else None
    )
    cin = 2 * cfg.latent_dim if num_classes else cfg.latent_dim
    self.project = _Dense(cin, 16 * widths[0], rngs=rngs)
    self.blocks = nnx.List(
      [
        nnx.List(
          [
            _Conv(widths[i], widths[i + 1], rngs=rngs, dtype=dtype),
            _Conv(widths[i + 1], widths[i + 1], rngs=rngs, dtype=dtype),
          ]
        )
        for i in range(levels)
      ]
    )
    self.out = _Conv(widths[-1], channels, rngs=rngs, dtype=dtype)

  def __call__(self, z, y=None):
    if self.embed is not None:
      if y is None:
        raise ValueError("This generator is class-conditional: pass labels y.")
      z = jnp.concatenate([z, self.embed[...][y]], axis=-1)
    h = _act(self.project(z)).reshape(z.shape[0], 4, 4, self.first)
    for first, second in self.blocks:
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour ×2
      h = _act(second(_act(first(h))))
    return jnp.tanh(self.out(h).astype(jnp.float32))


class Discriminator(nnx.Module):
  """Images (B, S, S, C) [and labels (B,)] → logits (B,)."""

  def __init__(self, cfg: GANConfig, image_size, channels, num_classes, *, rngs, dtype):
    levels = _levels(image_size)
    widths = _widths(cfg.discriminator_channels, levels, grow=True)
    self.stem = _Conv(channels, widths[0], rngs=rngs, dtype=dtype)
    self.blocks = nnx.List(
      [
        nnx.List(
          [
            _Conv(widths[i], widths[i], rngs=rngs, dtype=dtype),
            _Conv(widths[i], widths[i + 1], rngs=rngs, dtype=dtype),
          ]
        )
        for i in range(levels)
      ]
    )
    self.head = _Dense(16 * widths[-1], 1, rngs=rngs)
    self.embed = (
      nnx.Param(jax.random.normal(rngs.params(), (num_classes + 1, 16 * widths[-1])) * 0.01)
      if num_classes
      else None
    )

  def __call__(self, x, y=None, *, frozen: bool = False):
    h = _act(self.stem(x, frozen))
    for first, second in self.blocks:
      h = _act(second(_act(first(h, frozen)), frozen))
      b, s, _, c = h.shape
      h = h.reshape(b, s // 2, 2, s // 2, 2, c).mean(axis=(2, 4))  # 2×2 average pooling
    h = h.reshape(h.shape[0], -1).astype(jnp.float32)
    logits = self.head(h, frozen)[:, 0]
    if self.embed is not None:
      if y is None:
        raise ValueError("This discriminator is class-conditional: pass labels y.")
      read = jax.lax.stop_gradient if frozen else (lambda v: v)
      logits = logits + jnp.sum(read(self.embed[...])[y] * h, axis=-1)  # the projection term
    return logits


class GAN(nnx.Module):
  """`model(z, None, y)`: images from latents; `model(x, None, y, critic=True)`: logits."""

  def __init__(self, cfg: GANConfig, *, image_size, channels, num_classes=None, rngs, dtype):
    self.latent_dim = cfg.latent_dim
    self.generator = Generator(cfg, image_size, channels, num_classes, rngs=rngs, dtype=dtype)
    self.discriminator = Discriminator(
      cfg, image_size, channels, num_classes, rngs=rngs, dtype=dtype
    )

  def __call__(self, x, t=None, y=None, *, critic: bool = False, frozen_critic: bool = False):
    """`t` is the network table's call convention; a GAN has no time, so it must be None."""
    if t is not None:
      raise ValueError("A GAN takes no timestep: call model(z, None, y).")
    if critic:
      return self.discriminator(x, y, frozen=frozen_critic)
    return self.generator(x, y)

  def example_inputs(self, spec):
    """The arguments of one generator pass, as shapes (what `--mode=describe` counts)."""
    y = None if spec.num_classes is None else jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.ShapeDtypeStruct((1, self.latent_dim), jnp.float32), None, y


def build_gan(cfg: GANConfig, spec, rngs: nnx.Rngs) -> GAN:
  if spec.learn_sigma:
    raise ValueError("model.arch='gan' predicts no variance: set model.learn_sigma=False.")
  return GAN(
    cfg,
    image_size=spec.image_size,
    channels=spec.in_channels,
    num_classes=spec.num_classes,
    rngs=rngs,
    dtype=spec.dtype,
  )


def generate_from_noise(model: GAN, key, batch_size: int, image_size: int, labels=None):
  """The generator's samples G(z), z ~ N(0, I); (batch_size, S, S, C) in [-1, 1]."""
  del image_size  # the generator's own
  z = jax.random.normal(key, (batch_size, model.latent_dim), jnp.float32)
  return model(z, None, labels)
