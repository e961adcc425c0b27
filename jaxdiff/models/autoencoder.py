"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022) in Flax NNX, NHWC.

The module tree mirrors diffusers' `AutoencoderKL` (`encoder.down_blocks[i].resnets[j]`,
`encoder.mid_block`, `decoder.up_blocks[i]`, `quant_conv`, `post_quant_conv`, ...) so that weight
conversion is a name mapping (`jaxdiff.convert.diffusers_vae`). Its res blocks, mid block and
attention are the U-Net's (`layers.ResBlock` without a time embedding, `unet.MidBlock`).

The encoder maps an image to a diagonal Gaussian posterior over latents with H/f × W/f positions,
f = 2^(levels − 1); the decoder maps a latent back to an image. Training it (reconstruction + KL)
is an objective's business, scaling its latents for diffusion a codec's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.discriminator import PatchDiscriminator
from jaxdiff.models.layers import Attention, Downsample, ResBlock, Upsample, conv3x3, group_norm
from jaxdiff.models.unet import MidBlock

# The posterior's log-variance is clamped to this range (as the original and diffusers do): an
# untrained or diverging encoder then cannot produce an infinite or zero standard deviation.
LOGVAR_RANGE = (-30.0, 20.0)
# Every GroupNorm and attention of the original uses this epsilon, whatever the checkpoint.
NORM_EPS = 1e-6


def check_autoencoder_shape(
  block_out_channels: Sequence[int], layers_per_block: int, latent_channels: int, groups: int
) -> None:
  """ValueError, in one sentence, for a shape no autoencoder can be built with."""
  if not block_out_channels or min(block_out_channels) < 1:
    raise ValueError(f"block_out_channels must be positive widths, got {block_out_channels}.")
  if groups < 1 or any(ch % groups for ch in block_out_channels):
    raise ValueError(
      f"norm_num_groups={groups} must divide every block_out_channels entry {block_out_channels}."
    )
  if layers_per_block < 1 or latent_channels < 1:
    raise ValueError(
      f"layers_per_block ({layers_per_block}) and latent_channels ({latent_channels}) must be >= 1."
    )


def sample_posterior(mean: jax.Array, logvar: jax.Array, noise: jax.Array) -> jax.Array:
  """z = mean + σ·noise with σ = exp(logvar / 2): a reparameterised draw from the posterior."""
  return mean + jnp.exp(0.5 * logvar) * noise


class EncoderBlock(nnx.Module):
  """One level on the way down (diffusers' `DownEncoderBlock2D`): res blocks, then optionally a
  stride-2 conv."""

  def __init__(self, resnets: list[ResBlock], downsample: Downsample | None):
    self.resnets = nnx.List(resnets)
    self.downsample = downsample

  def __call__(self, x: jax.Array) -> jax.Array:
    for resnet in self.resnets:
      x = resnet(x)
    return x if self.downsample is None else self.downsample(x)


class DecoderBlock(nnx.Module):
  """One level on the way up (diffusers' `UpDecoderBlock2D`): res blocks, then optionally a
  nearest-neighbour upsample and a conv. Unlike the U-Net's there are no skips."""

  def __init__(self, resnets: list[ResBlock], upsample: Upsample | None):
    self.resnets = nnx.List(resnets)
    self.upsample = upsample

  def __call__(self, x: jax.Array) -> jax.Array:
    for resnet in self.resnets:
      x = resnet(x)
    return x if self.upsample is None else self.upsample(x)


class _Parts:
  """Constructors of the blocks both halves use, with the shared norm settings bound."""

  def __init__(self, groups: int, dtype, rngs: nnx.Rngs):
    self.groups, self.dtype, self.rngs = groups, dtype, rngs

  def res(self, cin: int, cout: int) -> ResBlock:
    return ResBlock(
      cin,
      cout,
      emb_channels=None,
      dropout=0.0,
      use_scale_shift_norm=False,
      groups=self.groups,
      eps=NORM_EPS,
      zero_init=False,
      dtype=self.dtype,
      rngs=self.rngs,
    )

  def attn(self, width: int) -> Attention:
    # One head over all channels, as in the original's mid block.
    return Attention(
      width,
      num_heads=1,
      groups=self.groups,
      eps=NORM_EPS,
      zero_init=False,
      dtype=self.dtype,
      rngs=self.rngs,
    )

  def mid(self, width: int) -> MidBlock:
    return MidBlock(width, make_res=self.res, make_attn=self.attn)

  def norm(self, width: int):
    return group_norm(width, groups=self.groups, eps=NORM_EPS, dtype=self.dtype, rngs=self.rngs)

  def conv(self, cin: int, cout: int) -> nnx.Conv:
    return conv3x3(cin, cout, dtype=self.dtype, rngs=self.rngs)


class Encoder(nnx.Module):
  """Image (B, H, W, C) -> the posterior's parameters (B, H/f, W/f, 2·latent_channels), before
  `quant_conv`."""

  def __init__(
    self, in_channels: int, channels: Sequence[int], layers: int, latent: int, parts: _Parts
  ):
    self.conv_in = parts.conv(in_channels, channels[0])
    blocks, cin = [], channels[0]
    for i, ch in enumerate(channels):
      resnets = [parts.res(cin if j == 0 else ch, ch) for j in range(layers)]
      # Padding 0 (bottom/right only), as the original's encoder pads its stride-2 convs.
      last = i == len(channels) - 1
      down = (
        None
        if last
        else Downsample(ch, with_conv=True, padding=0, dtype=parts.dtype, rngs=parts.rngs)
      )
      blocks.append(EncoderBlock(resnets, down))
      cin = ch
    self.down_blocks = nnx.List(blocks)
    self.mid_block = parts.mid(channels[-1])
    self.conv_norm_out = parts.norm(channels[-1])
    self.conv_out = parts.conv(channels[-1], 2 * latent)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv_in(x)
    for block in self.down_blocks:
      h = block(h)
    h = self.mid_block(h, None)
    return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
  """Latent (B, h, w, latent_channels), after `post_quant_conv` -> image (B, h·f, w·f, C)."""

  def __init__(
    self, out_channels: int, channels: Sequence[int], layers: int, latent: int, parts: _Parts
  ):
    widths = list(reversed(channels))
    self.conv_in = parts.conv(latent, widths[0])
    self.mid_block = parts.mid(widths[0])
    blocks, cin = [], widths[0]
    for i, ch in enumerate(widths):
      # One res block more per level than the encoder, as in the original.
      resnets = [parts.res(cin if j == 0 else ch, ch) for j in range(layers + 1)]
      last = i == len(widths) - 1
      up = None if last else Upsample(ch, with_conv=True, dtype=parts.dtype, rngs=parts.rngs)
      blocks.append(DecoderBlock(resnets, up))
      cin = ch
    self.up_blocks = nnx.List(blocks)
    self.conv_norm_out = parts.norm(widths[-1])
    self.conv_out = parts.conv(widths[-1], out_channels)

  def __call__(self, z: jax.Array) -> jax.Array:
    h = self.mid_block(self.conv_in(z), None)
    for block in self.up_blocks:
      h = block(h)
    return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class AutoencoderKL(nnx.Module):
  """KL-autoencoder: `encode(x) -> (mean, logvar)`, `decode(z) -> x`, and
  `model(x, key=...) -> (reconstruction, mean, logvar)`.

  Images and latents are NHWC; latents have `latent_channels` channels and H/f × W/f positions
  with f = `downsampling_factor` = 2^(len(block_out_channels) − 1). `use_quant_conv` /
  `use_post_quant_conv` add the 1×1 convs on the posterior's parameters and on z (diffusers'
  options of the same names). `scaling_factor` and `shift_factor` travel with the network but do
  not enter it: they are a checkpoint's latent normalisation for diffusion,
  (z − shift_factor)·scaling_factor (diffusers' convention; 0.18215 for Stable Diffusion 1/2).
  Parameters are float32; `dtype` is the compute dtype; outputs are float32.
  """

  def __init__(
    self,
    *,
    in_channels: int = 3,
    out_channels: int | None = None,
    block_out_channels: Sequence[int] = (64,),
    layers_per_block: int = 1,
    latent_channels: int = 4,
    norm_num_groups: int = 32,
    use_quant_conv: bool = True,
    use_post_quant_conv: bool = True,
    scaling_factor: float = 1.0,
    shift_factor: float = 0.0,
    discriminator_layers: int = 0,
    discriminator_channels: int = 64,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    channels = tuple(block_out_channels)
    check_autoencoder_shape(channels, layers_per_block, latent_channels, norm_num_groups)
    self.dtype = dtype
    self.latent_channels = latent_channels
    self.downsampling_factor = 2 ** (len(channels) - 1)
    self.scaling_factor = float(scaling_factor)
    self.shift_factor = float(shift_factor)
    parts = _Parts(norm_num_groups, dtype, rngs)
    self.encoder = Encoder(in_channels, channels, layers_per_block, latent_channels, parts)
    self.decoder = Decoder(
      out_channels or in_channels, channels, layers_per_block, latent_channels, parts
    )

    def pointwise(width: int) -> nnx.Conv:
      return nnx.Conv(width, width, (1, 1), dtype=dtype, rngs=rngs)

    self.quant_conv = pointwise(2 * latent_channels) if use_quant_conv else None
    self.post_quant_conv = pointwise(latent_channels) if use_post_quant_conv else None
    # training only (the LDM recipe's adversarial term, objectives/autoencoder.py): trained by the
    # same optimizer as the rest, never used by encode or decode
    self.discriminator = (
      PatchDiscriminator(
        out_channels or in_channels,
        channels=discriminator_channels,
        layers=discriminator_layers,
        rngs=rngs,
      )
      if discriminator_layers
      else None
    )

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior N(mean, exp(logvar)) of images x (B, H, W, C), H and W multiples of f:
    two float32 arrays (B, H/f, W/f, latent_channels), logvar clamped to LOGVAR_RANGE."""
    f = self.downsampling_factor
    if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"encode takes NHWC images with H and W multiples of {f}, got {x.shape}.")
    h = self.encoder(x.astype(self.dtype))
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """Images (B, h·f, w·f, C), float32, from latents z (B, h, w, latent_channels)."""
    z = z.astype(self.dtype)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(
    self,
    x: jax.Array,
    t: None = None,
    y: None = None,
    *,
    key: jax.Array | None = None,
    noise: jax.Array | None = None,
    critic: bool = False,
    frozen_critic: bool = False,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(decode(z), mean, logvar) with z drawn from the posterior by `key` or, for replay, given
    standard-normal `noise`; with neither, z is the posterior's mean (its mode). `critic=True`
    returns the discriminator's patch logits of the images x instead (`frozen_critic`: with its
    parameters behind stop_gradient).

    `t` and `y` are the network table's call convention (`model(x, t, y)`, which the train step
    uses for every network); an autoencoder has neither, so both must be None."""
    if t is not None or y is not None:
      raise ValueError("The autoencoder takes no timestep and no label: call model(x, key=...).")
    if critic:
      if self.discriminator is None:
        raise ValueError("This autoencoder has no discriminator: set model.discriminator_layers.")
      return self.discriminator(x, frozen=frozen_critic)
    mean, logvar = self.encode(x)
    if key is not None and noise is not None:
      raise ValueError("Pass key or noise, not both.")
    if key is not None:
      noise = jax.random.normal(key, mean.shape, jnp.float32)
    z = mean if noise is None else sample_posterior(mean, logvar, noise)
    return self.decode(z), mean, logvar


def generate_from_prior(
  model: AutoencoderKL, key: jax.Array, batch_size: int, image_size: int, labels=None
):
  """The VAE's own samples: decode(z) for z ~ N(0, I), the prior the KL term pulls toward; images
  (batch_size, image_size, image_size, C) in [-1, 1] (clipped, as pixel samplers clip). An
  autoencoder is unconditional: `labels` is always None."""
  del labels
  size = image_size // model.downsampling_factor
  z = jax.random.normal(key, (batch_size, size, size, model.latent_channels), jnp.float32)
  return jnp.clip(model.decode(z), -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """The autoencoder's own `model.*` keys (model.arch = 'autoencoder'); image channels and the
  compute dtype come from the `NetworkSpec`. Defaults: the small f = 4 autoencoder that worked
  on the digits (ARCHITECTURE.md), 16/32/64 channels, 4 latent channels."""

  block_out_channels: tuple[int, ...] = (16, 32, 64)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 8
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  # the LDM recipe's patch discriminator (models/discriminator.py), trained with the autoencoder
  # when vae.discriminator_weight > 0; 0 layers: none
  discriminator_layers: int = 0
  discriminator_channels: int = 64

  def __post_init__(self):
    check_autoencoder_shape(
      tuple(self.block_out_channels),
      self.layers_per_block,
      self.latent_channels,
      self.norm_num_groups,
    )
    if self.discriminator_layers < 0 or self.discriminator_channels < 1:
      raise ValueError(
        f"model.discriminator_layers must be ≥ 0 and model.discriminator_channels ≥ 1, got "
        f"{self.discriminator_layers} and {self.discriminator_channels}."
      )


def build_autoencoder(config: AutoencoderConfig, spec, rngs: nnx.Rngs) -> AutoencoderKL:
  """The autoencoder of a run: `config` (model.*) for images of `spec` (a models.NetworkSpec,
  whose in_channels are the image channels)."""
  f = 2 ** (len(config.block_out_channels) - 1)
  if spec.image_size % f:
    raise ValueError(
      f"image_size {spec.image_size} is not a multiple of the autoencoder's downsampling factor "
      f"{f}: use fewer block_out_channels."
    )
  if spec.learn_sigma or spec.num_classes is not None:
    raise ValueError(
      "The autoencoder takes no labels and outputs no variance: set model.class_conditional and "
      "model.learn_sigma to False."
    )
  return AutoencoderKL(
    in_channels=spec.in_channels,
    block_out_channels=tuple(config.block_out_channels),
    layers_per_block=config.layers_per_block,
    latent_channels=config.latent_channels,
    norm_num_groups=config.norm_num_groups,
    use_quant_conv=config.use_quant_conv,
    use_post_quant_conv=config.use_post_quant_conv,
    discriminator_layers=config.discriminator_layers,
    discriminator_channels=config.discriminator_channels,
    dtype=spec.dtype,
    rngs=rngs,
  )
