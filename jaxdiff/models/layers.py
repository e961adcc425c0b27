"""U-Net building blocks: time embedding, residual block, self-attention, resampling (NHWC).

Attribute names follow diffusers (`norm1`, `conv1`, `time_emb_proj`, `to_q`, ...) so that
`jaxdiff.convert` maps a diffusers state dict onto these modules by name alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff import cpu


def sinusoidal_embedding(
  t: jax.Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> jax.Array:
  """DDPM's sinusoidal timestep embedding, (B,) -> (B, dim), always float32.

  `freq_shift` is diffusers' `downscale_freq_shift`: 1 reproduces DDPM (the lowest frequency is
  exactly 1/max_period), 0 reproduces ADM and most later models.
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  angles = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  parts = (
    (jnp.cos(angles), jnp.sin(angles)) if flip_sin_to_cos else (jnp.sin(angles), jnp.cos(angles))
  )
  return jnp.concatenate(parts, axis=-1)


class TimestepMLP(nnx.Module):
  """Sinusoid -> Linear -> SiLU -> Linear, as diffusers' `TimestepEmbedding`."""

  def __init__(self, in_features: int, features: int, *, dtype, rngs: nnx.Rngs):
    self.linear_1 = nnx.Linear(in_features, features, dtype=dtype, rngs=rngs)
    self.linear_2 = nnx.Linear(features, features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(nnx.silu(self.linear_1(x)))


class GroupNorm(nnx.GroupNorm):
  """`nnx.GroupNorm` with two-pass variance, statistics in float32 and, on CPU, a hand-written
  backward.

  Same parameters (`scale`, `bias`, float32), same forward to float32 rounding as
  `nnx.GroupNorm(use_fast_variance=False)`, over all positions and the channels of a group. On
  CPU the gradient is a closed form that XLA:CPU runs faster than autodiff's; other platforms get
  autodiff's (`jaxdiff.cpu.normalize_groups`, where it is switched). Scale and bias stay float32
  in the arithmetic, also with a bfloat16 compute `dtype`, which only sets the output's dtype.
  """

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    fallback = self.use_fast_variance or self.reduction_axes is not None or self.axis_name
    if mask is not None or fallback:
      return super().__call__(x, mask=mask)
    shape, channels = x.shape, x.shape[-1]
    scale = self.scale[...] if self.scale is not None else jnp.ones((channels,), jnp.float32)
    bias = self.bias[...] if self.bias is not None else jnp.zeros((channels,), jnp.float32)
    y = cpu.normalize_groups(
      x.reshape(shape[0], -1, channels),
      scale.astype(jnp.float32),
      bias.astype(jnp.float32),
      self.epsilon,
      self.num_groups,
    )
    return y.reshape(shape).astype(self.dtype or jnp.result_type(x, scale))


def group_norm(channels: int, *, groups: int, eps: float, dtype, rngs: nnx.Rngs) -> GroupNorm:
  # Two-pass variance: the fast E[x^2] - E[x]^2 form cancels catastrophically when an activation's
  # mean is large next to its spread; PyTorch, whose weights we import, computes it stably too.
  return GroupNorm(
    channels, num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs
  )


def conv3x3(cin: int, cout: int, *, dtype, rngs: nnx.Rngs, zero: bool = False) -> nnx.Conv:
  """A 3x3 `nnx.Conv` (one-pixel padding). With Winograd switched on (`jaxdiff.cpu`, off by
  default) its float32 forward runs as Winograd on CPU where that is faster; same parameters."""
  init = {"kernel_init": nnx.initializers.zeros_init()} if zero else {}
  return nnx.Conv(
    cin,
    cout,
    (3, 3),
    padding=((1, 1), (1, 1)),
    dtype=dtype,
    rngs=rngs,
    conv_general_dilated=cpu.conv_general_dilated,
    **init,
  )


# Activation rematerialization per block (`remat=`): the backward pass recomputes what the
# policy did not save instead of keeping it from the forward pass, trading compute for memory.
REMAT_POLICIES = {
  "": None,  # keep every activation
  "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's inputs
  "dots": jax.checkpoint_policies.dots_saveable,  # keep conv/matmul outputs; redo norms, SiLU
}


def check_remat(policy: str, *, key: str = "remat") -> None:
  """ValueError unless `policy` names a REMAT_POLICIES entry; `key` is what the message calls it
  (the networks' config dataclasses pass 'model.remat')."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"{key} must be one of {list(REMAT_POLICIES)}, got {policy!r}.")


def label_embedding(table: nnx.Embed | None, y, *, batch: int, num_classes: int | None, network):
  """The class embedding to add to a network's time embedding, or None for an unconditional one.

  Labels `num_classes` (also when `y` is None) are the null class of classifier-free guidance;
  labels given to a network built without classes are a mistake, named in the error.
  """
  if table is None:
    if y is not None:
      raise ValueError(f"Labels y were given to a {network} built without num_classes.")
    return None
  if y is None:
    y = jnp.full((batch,), num_classes, jnp.int32)
  return table(y)


def _call(module, forward, *args):
  """forward(module, *args), under jax.checkpoint with the module's remat policy if it has one."""
  if not module.remat:
    return forward(module, *args)
  return nnx.remat(forward, policy=REMAT_POLICIES[module.remat])(module, *args)


class ResBlock(nnx.Module):
  """GroupNorm-SiLU-conv, add (or scale-shift by) the time embedding, GroupNorm-SiLU-dropout-conv, skip.

  With `use_scale_shift_norm` (ADM) the embedding is projected to 2*out channels and applied as
  norm2(h) * (1 + scale) + shift; otherwise (DDPM) it is added before norm2. With `emb_channels`
  None the block has no embedding projection and takes no embedding (the autoencoder's blocks).
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    *,
    emb_channels: int | None,
    dropout: float,
    use_scale_shift_norm: bool,
    groups: int,
    eps: float,
    zero_init: bool,
    dtype,
    rngs: nnx.Rngs,
    remat: str = "",
  ):
    check_remat(remat)
    if use_scale_shift_norm and emb_channels is None:
      raise ValueError("use_scale_shift_norm needs an embedding: give emb_channels.")
    self.remat = remat
    self.use_scale_shift_norm = use_scale_shift_norm
    self.norm1 = group_norm(in_channels, groups=groups, eps=eps, dtype=dtype, rngs=rngs)
    self.conv1 = conv3x3(in_channels, out_channels, dtype=dtype, rngs=rngs)
    proj_out = 2 * out_channels if use_scale_shift_norm else out_channels
    self.time_emb_proj = (
      None if emb_channels is None else nnx.Linear(emb_channels, proj_out, dtype=dtype, rngs=rngs)
    )
    self.norm2 = group_norm(out_channels, groups=groups, eps=eps, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    # Zero-initialising the last conv makes the block start as the identity (ADM).
    self.conv2 = conv3x3(out_channels, out_channels, dtype=dtype, rngs=rngs, zero=zero_init)
    self.conv_shortcut = (
      nnx.Conv(in_channels, out_channels, (1, 1), dtype=dtype, rngs=rngs)
      if in_channels != out_channels
      else None
    )

  def __call__(self, x: jax.Array, emb: jax.Array | None = None) -> jax.Array:
    if (emb is None) != (self.time_emb_proj is None):
      raise ValueError("ResBlock takes an embedding exactly when built with emb_channels.")
    return _call(self, ResBlock._forward, x, emb)

  def _forward(self, x: jax.Array, emb: jax.Array | None) -> jax.Array:
    h = self.conv1(nnx.silu(self.norm1(x)))
    if emb is None:
      h = self.norm2(h)
    elif self.use_scale_shift_norm:
      scale, shift = jnp.split(self.time_emb_proj(nnx.silu(emb))[:, None, None, :], 2, axis=-1)
      h = self.norm2(h) * (1 + scale) + shift
    else:
      h = self.norm2(h + self.time_emb_proj(nnx.silu(emb))[:, None, None, :])
    h = self.conv2(self.dropout(nnx.silu(h)))
    skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
    return skip + h


class Attention(nnx.Module):
  """Multi-head self-attention over the H*W positions with a residual, as in diffusers' `Attention`
  built by `UNet2DModel` (GroupNorm, q/k/v linear, softmax(q k^T / sqrt(d)) v, linear out)."""

  def __init__(
    self,
    channels: int,
    *,
    num_heads: int,
    groups: int,
    eps: float,
    zero_init: bool,
    dtype,
    rngs: nnx.Rngs,
    remat: str = "",
  ):
    check_remat(remat)
    self.remat = remat
    self.num_heads = num_heads
    self.group_norm = group_norm(channels, groups=groups, eps=eps, dtype=dtype, rngs=rngs)
    self.to_q = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
    self.to_k = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
    self.to_v = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
    init = {"kernel_init": nnx.initializers.zeros_init()} if zero_init else {}
    self.to_out = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs, **init)

  def __call__(self, x: jax.Array) -> jax.Array:
    return _call(self, Attention._forward, x)

  def _forward(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(b, h * w, c)

    def heads(t: jax.Array) -> jax.Array:
      # Softmax over up to 4096 positions in bf16 loses too much; attention runs in float32.
      return t.reshape(b, h * w, self.num_heads, c // self.num_heads).astype(jnp.float32)

    q, k, v = heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(self.to_v(tokens))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c // self.num_heads)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h * w, c).astype(tokens.dtype)
    return x + self.to_out(out).reshape(b, h, w, c)


class Downsample(nnx.Module):
  """Halve H and W: a stride-2 3x3 conv, or 2x2 average pooling when `with_conv` is False.

  `padding` follows diffusers' `downsample_padding`: 1 pads one pixel on every side (ADM);
  0 pads only bottom/right, as TensorFlow's SAME does for stride 2 (the original DDPM).
  """

  def __init__(self, channels: int, *, with_conv: bool, padding: int, dtype, rngs: nnx.Rngs):
    if padding not in (0, 1):
      raise ValueError(f"downsample_padding must be 0 or 1, got {padding}.")
    pads = ((1, 1), (1, 1)) if padding == 1 else ((0, 1), (0, 1))
    self.conv = (
      nnx.Conv(channels, channels, (3, 3), strides=2, padding=pads, dtype=dtype, rngs=rngs)
      if with_conv
      else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.conv is None:
      b, h, w, c = x.shape
      return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return self.conv(x)


class Upsample(nnx.Module):
  """Double H and W by nearest-neighbour repetition, then (optionally) a 3x3 conv."""

  def __init__(self, channels: int, *, with_conv: bool, dtype, rngs: nnx.Rngs):
    self.conv = conv3x3(channels, channels, dtype=dtype, rngs=rngs) if with_conv else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x if self.conv is None else self.conv(x)
