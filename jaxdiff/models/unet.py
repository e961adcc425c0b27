"""The DDPM / ADM U-Net (Ho et al. 2020; Dhariwal & Nichol 2021) in Flax NNX, NHWC.

The module tree mirrors diffusers' `UNet2DModel` (`down_blocks[i].resnets[j]`, `.attentions[j]`,
`mid_block`, `up_blocks[i]`, `conv_norm_out`, `conv_out`) so that weight conversion is a name mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.layers import (
  Attention,
  Downsample,
  ResBlock,
  TimestepMLP,
  Upsample,
  check_remat,
  conv3x3,
  group_norm,
  label_embedding,
  sinusoidal_embedding,
)

MakeRes = Callable[[int, int], ResBlock]
MakeAttn = Callable[[int], Attention]


class DownBlock(nnx.Module):
  """One resolution level on the way down: res blocks (each followed by attention when the level has
  it), then an optional downsample. Returns every intermediate output as a skip for the up path.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    *,
    num_res_blocks: int,
    attention: bool,
    downsample: Downsample | None,
    make_res: MakeRes,
    make_attn: MakeAttn,
  ):
    self.resnets = nnx.List(
      [
        make_res(in_channels if i == 0 else out_channels, out_channels)
        for i in range(num_res_blocks)
      ]
    )
    self.attentions = (
      nnx.List([make_attn(out_channels) for _ in range(num_res_blocks)]) if attention else None
    )
    self.downsample = downsample

  def __call__(self, x: jax.Array, emb: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    skips = []
    for i, resnet in enumerate(self.resnets):
      x = resnet(x, emb)
      if self.attentions is not None:
        x = self.attentions[i](x)
      skips.append(x)
    if self.downsample is not None:
      x = self.downsample(x)
      skips.append(x)
    return x, skips


class MidBlock(nnx.Module):
  """Res block, attention, res block at the lowest resolution."""

  def __init__(self, channels: int, *, make_res: MakeRes, make_attn: MakeAttn):
    self.resnets = nnx.List([make_res(channels, channels), make_res(channels, channels)])
    self.attentions = nnx.List([make_attn(channels)])

  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    x = self.resnets[0](x, emb)
    x = self.attentions[0](x)
    return self.resnets[1](x, emb)


class UpBlock(nnx.Module):
  """One resolution level on the way up: each res block takes the previous output concatenated with
  the most recent unused skip; attention after each when the level has it; optional upsample."""

  def __init__(
    self,
    in_channels: Sequence[int],
    out_channels: int,
    *,
    attention: bool,
    upsample: Upsample | None,
    make_res: MakeRes,
    make_attn: MakeAttn,
  ):
    self.resnets = nnx.List([make_res(cin, out_channels) for cin in in_channels])
    self.attentions = (
      nnx.List([make_attn(out_channels) for _ in in_channels]) if attention else None
    )
    self.upsample = upsample

  def __call__(self, x: jax.Array, skips: list[jax.Array], emb: jax.Array) -> jax.Array:
    for i, resnet in enumerate(self.resnets):
      x = resnet(jnp.concatenate([x, skips.pop()], axis=-1), emb)
      if self.attentions is not None:
        x = self.attentions[i](x)
    return x if self.upsample is None else self.upsample(x)


class UNet(nnx.Module):
  """Noise-prediction U-Net: `model(x, t, y=None)` with x (B, H, W, C), t (B,) and y (B,) int labels.

  Defaults are DDPM's CIFAR-10 model except dropout (0.1 there). ADM options: `use_scale_shift_norm`,
  `learn_sigma` (doubles the output channels: the mean/eps prediction, then the variance
  interpolation), `num_heads` / `head_channels`, and `num_classes`, which adds an embedding table
  with one extra row: label `num_classes` (also used when `y` is None) is the null class of
  classifier-free guidance. `attention_resolutions` are feature-map sizes at which each level gets
  attention, given images of `image_size`. Params are float32; `dtype` is the compute dtype.
  `zero_init` zero-initialises every residual branch's last layer and the output conv (as DDPM and
  ADM do), so the untrained network outputs exactly zero. `patch_size` p > 1 folds each p×p patch
  into channels before `conv_in` and unfolds the output after `conv_out` (space-to-depth, as
  U-ViT / Simple Diffusion patchify), so the network runs at image_size/p for p²× less compute;
  `attention_resolutions` then refer to the patched feature maps. `remat` ('full' or 'dots',
  see layers.REMAT_POLICIES) recomputes each res/attention block's activations in the backward
  pass instead of storing them: the same outputs and gradients in less memory.
  """

  def __init__(
    self,
    *,
    in_channels: int = 3,
    out_channels: int | None = None,
    base_channels: int = 128,
    channel_mult: Sequence[int] = (1, 2, 2, 2),
    num_res_blocks: int = 2,
    attention_resolutions: Sequence[int] = (16,),
    image_size: int = 32,
    num_heads: int | None = None,
    head_channels: int | None = None,
    dropout: float = 0.0,
    num_classes: int | None = None,
    learn_sigma: bool = False,
    use_scale_shift_norm: bool = False,
    resample_with_conv: bool = True,
    downsample_padding: int = 0,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1,
    norm_eps: float = 1e-6,
    norm_groups: int = 32,
    zero_init: bool = True,
    patch_size: int = 1,
    remat: str = "",
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if patch_size < 1 or image_size % patch_size:
      raise ValueError(f"patch_size {patch_size} must be positive and divide {image_size}.")
    levels = [image_size // patch_size // 2**i for i in range(len(channel_mult))]
    unknown = sorted(set(attention_resolutions) - set(levels))
    if unknown:
      raise ValueError(
        f"attention_resolutions {unknown} match no level of a {image_size}px U-Net (levels: {levels})."
      )
    if num_heads is not None and head_channels is not None:
      raise ValueError("Set at most one of num_heads and head_channels.")
    if base_channels % 2:
      raise ValueError(
        f"base_channels must be even for the sinusoidal embedding, got {base_channels}."
      )

    self.dtype = dtype
    self.base_channels = base_channels
    self.flip_sin_to_cos = flip_sin_to_cos
    self.freq_shift = freq_shift
    self.num_classes = num_classes
    self.learn_sigma = learn_sigma
    self.out_channels = (out_channels or in_channels) * (2 if learn_sigma else 1)
    self.patch_size = patch_size
    emb_channels = 4 * base_channels

    def make_res(cin: int, cout: int) -> ResBlock:
      return ResBlock(
        cin,
        cout,
        emb_channels=emb_channels,
        dropout=dropout,
        use_scale_shift_norm=use_scale_shift_norm,
        groups=norm_groups,
        eps=norm_eps,
        zero_init=zero_init,
        dtype=dtype,
        rngs=rngs,
        remat=remat,
      )

    def make_attn(width: int) -> Attention:
      if head_channels is not None:
        heads, rest = divmod(width, head_channels)
      else:
        heads = num_heads or 1
        rest = width % heads
      if rest or not heads:
        raise ValueError(f"{width} attention channels do not split evenly into attention heads.")
      return Attention(
        width,
        num_heads=heads,
        groups=norm_groups,
        eps=norm_eps,
        zero_init=zero_init,
        dtype=dtype,
        rngs=rngs,
        remat=remat,
      )

    self.time_embedding = TimestepMLP(base_channels, emb_channels, dtype=dtype, rngs=rngs)
    self.class_embedding = (
      nnx.Embed(num_classes + 1, emb_channels, dtype=dtype, rngs=rngs)
      if num_classes is not None
      else None
    )
    channels = [base_channels * m for m in channel_mult]
    self.conv_in = conv3x3(in_channels * patch_size**2, channels[0], dtype=dtype, rngs=rngs)

    # Channels of every skip the down path emits, consumed last-first by the up path.
    skip_channels = [channels[0]]
    down_blocks = []
    for i, ch in enumerate(channels):
      last = i == len(channels) - 1
      downsample = (
        None
        if last
        else Downsample(
          ch,
          with_conv=resample_with_conv,
          padding=downsample_padding,
          dtype=dtype,
          rngs=rngs,
        )
      )
      down_blocks.append(
        DownBlock(
          skip_channels[-1],
          ch,
          num_res_blocks=num_res_blocks,
          attention=levels[i] in attention_resolutions,
          downsample=downsample,
          make_res=make_res,
          make_attn=make_attn,
        )
      )
      skip_channels += [ch] * (num_res_blocks + (0 if last else 1))
    self.down_blocks = nnx.List(down_blocks)
    self.mid_block = MidBlock(channels[-1], make_res=make_res, make_attn=make_attn)

    up_blocks = []
    ch = channels[-1]
    for i in reversed(range(len(channels))):
      in_channels_per_res = []
      for _ in range(num_res_blocks + 1):
        in_channels_per_res.append(ch + skip_channels.pop())
        ch = channels[i]
      up_blocks.append(
        UpBlock(
          in_channels_per_res,
          ch,
          attention=levels[i] in attention_resolutions,
          upsample=(
            None if i == 0 else Upsample(ch, with_conv=resample_with_conv, dtype=dtype, rngs=rngs)
          ),
          make_res=make_res,
          make_attn=make_attn,
        )
      )
    self.up_blocks = nnx.List(up_blocks)

    self.conv_norm_out = group_norm(
      channels[0], groups=norm_groups, eps=norm_eps, dtype=dtype, rngs=rngs
    )
    self.conv_out = conv3x3(
      channels[0], self.out_channels * patch_size**2, dtype=dtype, rngs=rngs, zero=zero_init
    )

  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """Returns float32 (B, H, W, out_channels) whatever the compute dtype, for the loss."""
    batch = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    temb = sinusoidal_embedding(
      t, self.base_channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
    )
    emb = self.time_embedding(temb.astype(self.dtype))
    labels = label_embedding(
      self.class_embedding, y, batch=batch, num_classes=self.num_classes, network="U-Net"
    )
    if labels is not None:
      emb = emb + labels

    h = self.conv_in(space_to_depth(x, self.patch_size).astype(self.dtype))
    skips = [h]
    for block in self.down_blocks:
      h, block_skips = block(h, emb)
      skips += block_skips
    h = self.mid_block(h, emb)
    for block in self.up_blocks:
      h = block(h, skips, emb)
    h = self.conv_out(nnx.silu(self.conv_norm_out(h)))
    return depth_to_space(h, self.patch_size).astype(jnp.float32)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p, W/p, p·p·C), each p×p patch flattened row-major, channels fastest."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """The inverse of `space_to_depth`."""
  if p == 1:
    return x
  b, h, w, pc = x.shape
  c = pc // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The U-Net's own `model.*` keys (model.arch = 'unet'); the rest of its arguments come from the
  data and the codec (`NetworkSpec`)."""

  base_channels: int = 32
  channel_mult: tuple[int, ...] = (1, 2)
  num_res_blocks: int = 1
  attention_resolutions: tuple[int, ...] = ()  # feature-map sizes that get self-attention
  num_heads: int | None = None
  head_channels: int | None = None
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  resample_with_conv: bool = True
  patch_size: int = 1  # >1 folds p×p pixel patches into channels (p² less compute)
  # Where diffusers' UNet2DModel configs differ from DDPM's original (the defaults here), so that a
  # converted diffusers U-Net (`init_from`) is a config too: the downsampling conv's padding, the
  # timestep sinusoids' order (cos first) and frequency shift, GroupNorm's eps and group count.
  downsample_padding: int = 0
  flip_sin_to_cos: bool = False
  freq_shift: float = 1.0
  norm_eps: float = 1e-6
  norm_groups: int = 32
  # activation rematerialization per res/attention block: '' off, 'full' (keep only block
  # inputs), 'dots' (keep conv/matmul outputs, recompute norms and activations)
  remat: str = ""

  def __post_init__(self):
    check_remat(self.remat, key="model.remat")


def build_unet(config: UNetConfig, spec, rngs: nnx.Rngs) -> UNet:
  """The U-Net of a run: `config` (model.*) on the diffusion space `spec` (a models.NetworkSpec)."""
  return UNet(
    in_channels=spec.in_channels,
    base_channels=config.base_channels,
    channel_mult=tuple(config.channel_mult),
    num_res_blocks=config.num_res_blocks,
    attention_resolutions=tuple(config.attention_resolutions),
    image_size=spec.image_size,
    num_heads=config.num_heads,
    head_channels=config.head_channels,
    dropout=config.dropout,
    num_classes=spec.num_classes,
    learn_sigma=spec.learn_sigma,
    use_scale_shift_norm=config.use_scale_shift_norm,
    resample_with_conv=config.resample_with_conv,
    downsample_padding=config.downsample_padding,
    flip_sin_to_cos=config.flip_sin_to_cos,
    freq_shift=config.freq_shift,
    norm_eps=config.norm_eps,
    norm_groups=config.norm_groups,
    patch_size=config.patch_size,
    remat=config.remat,
    dtype=spec.dtype,
    rngs=rngs,
  )
