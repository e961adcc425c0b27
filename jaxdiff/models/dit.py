"""The Diffusion Transformer (DiT; Peebles & Xie 2023) in Flax NNX, NHWC.

Behaves as facebookresearch/DiT's `models.py`: p×p patches embedded by a stride-p conv plus a fixed
2-D sin-cos position embedding, a timestep embedding (256 sinusoids, cos first, then an MLP) added
to a class embedding, `depth` transformer blocks with adaLN-Zero conditioning, an adaLN final layer
and unpatchify. Initialization is the original's, so the untrained network outputs exactly zero.

Differences, all deliberate: the label table always has the null row (label `num_classes`, also
used when `y` is None), as jaxdiff's U-Net, because label dropout for guidance happens in the train
step (`model.class_dropout`), not in the network; the position embedding is a constant computed
at trace time, not a state variable, so it is never trained, checkpointed or sharded (the
original's parameter count includes it: see `tests/test_dit.py`).

Module names follow the original's where NNX allows (`x_embedder`, `t_embedder`, `y_embedder`,
`blocks[i].attn.qkv`, `.mlp.fc1`, `final_layer.linear`); `adaLN_modulation.1` is `modulation`.
`jaxdiff.convert.dit.load_dit_state_dict` maps a PyTorch state dict onto it. `timestep_freq_shift`
and `mlp_norm_eps` (the original's values by default) reproduce diffusers' `DiTTransformer2DModel`,
which changed both (`jaxdiff.convert.diffusers_dit`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import cpu
from jaxdiff.models.layers import (
  REMAT_POLICIES,
  check_remat,
  label_embedding,
  sinusoidal_embedding,
)

FREQUENCY_EMBEDDING_SIZE = 256
LAYER_NORM_EPS = 1e-6
# model.attention: how softmax(q kᵀ/√d) v is computed. 'auto' takes cuDNN's fused (flash) kernel
# where it applies (an NVIDIA GPU, bfloat16/float16 compute, a head dimension cuDNN takes) and XLA's
# otherwise; jax.nn.dot_product_attention itself defaults to XLA's on every backend.
ATTENTION_CHOICES = ("auto", "xla", "cudnn")

# Table 4 of the paper: DiT-{S,B,L,XL}/p is one of these with model.patch_size = p.
DIT_PRESETS = {
  "S": dict(hidden_size=384, depth=12, num_heads=6),
  "B": dict(hidden_size=768, depth=12, num_heads=12),
  "L": dict(hidden_size=1024, depth=24, num_heads=16),
  "XL": dict(hidden_size=1152, depth=28, num_heads=16),
}
# The paper's twelve configurations by name, "DiT-XL/2" and so on, for `model.preset`.
PRESET_NAMES = tuple(f"DiT-{size}/{p}" for size in DIT_PRESETS for p in (8, 4, 2))


def preset(name: str) -> dict:
  """The model.* values a paper configuration such as "DiT-XL/2" stands for."""
  if name not in PRESET_NAMES:
    raise ValueError(f"model.preset must be one of {list(PRESET_NAMES)}, got {name!r}.")
  size, patch_size = name.removeprefix("DiT-").split("/")
  return {**DIT_PRESETS[size], "patch_size": int(patch_size)}


_xavier = nnx.initializers.xavier_uniform()
_normal = nnx.initializers.normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()


def sincos_position_embedding(dim: int, grid_size: int) -> np.ndarray:
  """(grid_size², dim) fixed embedding of a square grid of patches, row-major, float32.

  As MAE's `get_2d_sincos_pos_embed`: the first half of the channels encodes the column, the second
  half the row, each as [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(-k/(dim/4)).
  """
  if dim % 4:
    raise ValueError(f"the position embedding needs hidden_size divisible by 4, got {dim}.")
  quarter = dim // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

  def embed(pos):
    angles = pos.reshape(-1, 1).astype(np.float64) * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([embed(cols), embed(rows)], axis=1).astype(np.float32)


def _layer_norm(x: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
  """LayerNorm without affine parameters (adaLN supplies scale and shift), statistics in float32
  (as dots on CPU: jaxdiff.cpu.layer_norm)."""
  return cpu.normalize_last(x, eps)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _linear(in_features, out_features, *, axes, dtype, rngs, zero=False, init=_xavier):
  """nnx.Linear whose kernel and bias carry logical axis names (`axes` = (input, output)), by
  which `jaxdiff.parallel` splits them under FSDP: "embed" the model width, "heads" the attention
  heads' channels, "mlp" a wide hidden or modulation layer, None a dimension kept whole."""
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=_zeros if zero else init,
    bias_init=_zeros,
    kernel_metadata={"logical_axes": axes},
    bias_metadata={"logical_axes": axes[1:]},
    dtype=dtype,
    rngs=rngs,
  )


class TimestepEmbedder(nnx.Module):
  """t -> 256 sinusoids (cos half first, frequencies 10000^(-k/(128 - freq_shift))) -> Linear-SiLU-
  Linear. The original has freq_shift 0; diffusers' DiTTransformer2DModel has 1."""

  def __init__(self, hidden_size: int, *, freq_shift: float = 0.0, dtype, rngs: nnx.Rngs):
    self.freq_shift = freq_shift
    self.linear_1 = _linear(
      FREQUENCY_EMBEDDING_SIZE,
      hidden_size,
      axes=(None, "embed"),
      dtype=dtype,
      rngs=rngs,
      init=_normal,
    )
    self.linear_2 = _linear(
      hidden_size, hidden_size, axes=("embed", "embed"), dtype=dtype, rngs=rngs, init=_normal
    )

  def __call__(self, t: jax.Array) -> jax.Array:
    freq = sinusoidal_embedding(
      t, FREQUENCY_EMBEDDING_SIZE, flip_sin_to_cos=True, freq_shift=self.freq_shift
    )
    return self.linear_2(nnx.silu(self.linear_1(freq)))


def _on_nvidia_gpu() -> bool:
  device = jax.devices()[0]
  return device.platform == "gpu" and "nvidia" in device.device_kind.lower()


def attention_implementation(choice: str, dtype, head_dim: int) -> str:
  """The `implementation` of jax.nn.dot_product_attention that `model.attention=choice` means for
  q/k/v of `dtype` and `head_dim` on the default backend (decided at trace time)."""
  if choice == "auto":
    fused = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
    return "cudnn" if fused and head_dim <= 128 and _on_nvidia_gpu() else "xla"
  if choice == "cudnn" and not _on_nvidia_gpu():
    raise ValueError(
      "model.attention='cudnn' needs an NVIDIA GPU; use 'auto' (cuDNN where it applies, else XLA)."
    )
  return choice


class SelfAttention(nnx.Module):
  """timm's `Attention` with qkv_bias: one fused q/k/v projection, softmax(q kᵀ/√d) v, output."""

  def __init__(
    self, hidden_size: int, num_heads: int, *, attention: str = "auto", dtype, rngs: nnx.Rngs
  ):
    self.num_heads = num_heads
    self.attention = attention
    self.qkv = _linear(
      hidden_size, 3 * hidden_size, axes=("embed", "heads"), dtype=dtype, rngs=rngs
    )
    self.proj = _linear(hidden_size, hidden_size, axes=("heads", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    head_dim = d // self.num_heads
    # the fused projection's outputs are [q | k | v], each head-major, as timm splits them
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # (B, N, heads, head_dim) in; XLA's path does its softmax in float32, cuDNN's accumulates in it
    implementation = attention_implementation(self.attention, qkv.dtype, head_dim)
    if implementation == "xla":  # as head-major matmuls on CPU (jaxdiff.cpu.attention)
      out = cpu.dot_product_attention(q, k, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    return self.proj(out.reshape(b, n, d))


class Mlp(nnx.Module):
  """Linear -> GELU (tanh approximation, as the original) -> Linear."""

  def __init__(self, hidden_size: int, mlp_hidden: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = _linear(hidden_size, mlp_hidden, axes=("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = _linear(mlp_hidden, hidden_size, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class DiTBlock(nnx.Module):
  """Pre-norm transformer block with adaLN-Zero: shift/scale/gate for attention and MLP from c."""

  def __init__(
    self,
    hidden_size: int,
    num_heads: int,
    mlp_ratio: float,
    *,
    mlp_norm_eps: float = LAYER_NORM_EPS,
    remat: str,
    attention: str = "auto",
    dtype,
    rngs: nnx.Rngs,
  ):
    self.remat = remat
    self.mlp_norm_eps = mlp_norm_eps
    self.attn = SelfAttention(hidden_size, num_heads, attention=attention, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), dtype=dtype, rngs=rngs)
    # zero-initialised so that every block starts as the identity (the "Zero" of adaLN-Zero)
    self.modulation = _linear(
      hidden_size, 6 * hidden_size, axes=("embed", "mlp"), dtype=dtype, rngs=rngs, zero=True
    )

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    if not self.remat:
      return self._forward(x, c)
    return nnx.remat(DiTBlock._forward, policy=REMAT_POLICIES[self.remat])(self, x, c)

  def _forward(self, x: jax.Array, c: jax.Array) -> jax.Array:
    mod = self.modulation(nnx.silu(c)).astype(jnp.float32)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = self.attn(_modulate(_layer_norm(x), shift_msa, scale_msa))
    x = x + gate_msa[:, None, :] * h
    h = self.mlp(_modulate(_layer_norm(x, self.mlp_norm_eps), shift_mlp, scale_mlp))
    return x + gate_mlp[:, None, :] * h


class FinalLayer(nnx.Module):
  """adaLN (shift, scale) then a linear map of each token to its p·p·C output pixels."""

  def __init__(self, hidden_size: int, out_features: int, *, dtype, rngs: nnx.Rngs):
    self.modulation = _linear(
      hidden_size, 2 * hidden_size, axes=("embed", "mlp"), dtype=dtype, rngs=rngs, zero=True
    )
    self.linear = _linear(
      hidden_size, out_features, axes=("embed", None), dtype=dtype, rngs=rngs, zero=True
    )

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    shift, scale = jnp.split(self.modulation(nnx.silu(c)).astype(jnp.float32), 2, axis=-1)
    return self.linear(_modulate(_layer_norm(x), shift, scale))


class DiT(nnx.Module):
  """`model(x, t, y=None)`: x (B, H, W, C), t (B,) or a scalar, y (B,) int labels; float32 out,
  (B, H, W, C), or 2C channels (the prediction, then the variance) with `learn_sigma`.

  The residual stream stays float32 whatever `dtype` (the compute dtype of the linear layers).
  """

  def __init__(
    self,
    *,
    in_channels: int,
    image_size: int,
    patch_size: int = 2,
    hidden_size: int = 384,
    depth: int = 12,
    num_heads: int = 6,
    mlp_ratio: float = 4.0,
    num_classes: int | None = None,
    learn_sigma: bool = False,
    timestep_freq_shift: float = 0.0,
    mlp_norm_eps: float = LAYER_NORM_EPS,
    remat: str = "",
    attention: str = "auto",
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if image_size % patch_size:
      raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}.")
    if hidden_size % num_heads:
      raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}.")
    self.in_channels = in_channels
    self.out_channels = 2 * in_channels if learn_sigma else in_channels
    self.patch_size = patch_size
    self.hidden_size = hidden_size
    self.num_classes = num_classes
    self.grid_size = image_size // patch_size
    sincos_position_embedding(hidden_size, self.grid_size)  # refuse a bad size at build time
    p = patch_size
    # Xavier on the kernel seen as a (p·p·C_in, hidden) matrix, as the original does for its
    # conv: the fans count the patch's pixels once, not the receptive field on top.
    self.x_embedder = nnx.Conv(
      in_channels,
      hidden_size,
      (p, p),
      strides=(p, p),
      padding="VALID",
      kernel_init=nnx.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3),
      bias_init=_zeros,
      kernel_metadata={"logical_axes": (None, None, None, "embed")},
      bias_metadata={"logical_axes": ("embed",)},
      dtype=dtype,
      rngs=rngs,
    )
    self.t_embedder = TimestepEmbedder(
      hidden_size, freq_shift=timestep_freq_shift, dtype=dtype, rngs=rngs
    )
    self.y_embedder = (
      nnx.Embed(
        num_classes + 1,
        hidden_size,
        embedding_init=_normal,
        embedding_metadata={"logical_axes": ("vocab", "embed")},
        dtype=dtype,
        rngs=rngs,
      )
      if num_classes is not None
      else None
    )
    self.blocks = nnx.List(
      [
        DiTBlock(
          hidden_size,
          num_heads,
          mlp_ratio,
          mlp_norm_eps=mlp_norm_eps,
          remat=remat,
          attention=attention,
          dtype=dtype,
          rngs=rngs,
        )
        for _ in range(depth)
      ]
    )
    self.final_layer = FinalLayer(hidden_size, p * p * self.out_channels, dtype=dtype, rngs=rngs)

  def fixed_parameter_count(self) -> int:
    """Values the original stores as a (frozen) parameter and jaxdiff computes: its pos_embed.
    Added to the trainable count, this gives the parameter counts the paper reports."""
    return self.grid_size**2 * self.hidden_size

  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
    batch, p, g = x.shape[0], self.patch_size, self.grid_size
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    tokens = self.x_embedder(x).reshape(batch, g * g, self.hidden_size).astype(jnp.float32)
    # a trace-time constant: fixed, so it is no parameter (never trained, saved or sharded)
    tokens = tokens + jnp.asarray(sincos_position_embedding(self.hidden_size, g))[None]
    c = self.t_embedder(t)
    labels = label_embedding(
      self.y_embedder, y, batch=batch, num_classes=self.num_classes, network="DiT"
    )
    if labels is not None:
      c = c + labels
    for block in self.blocks:
      tokens = block(tokens, c)
    out = self.final_layer(tokens, c).astype(jnp.float32)
    # unpatchify: token (i, j) holds its p×p×C pixels row-major, as the original's einsum reads them
    out = out.reshape(batch, g, g, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(batch, g * p, g * p, self.out_channels)


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """The DiT's own `model.*` keys (model.arch = 'dit'); defaults are DiT-S/2 (`DIT_PRESETS`).

  No dropout key: the original's only dropout is label dropout, which is `model.class_dropout`.
  `preset` ("DiT-XL/2", …; `PRESET_NAMES`) sets hidden_size, depth, num_heads and patch_size; a
  config that also gives one of them a value other than its default and the preset's is refused.
  """

  preset: str = ""
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  patch_size: int = 2
  mlp_ratio: float = 4.0
  # What diffusers' DiTTransformer2DModel changed (the original's values here; a converted diffusers
  # checkpoint has 1 and its config's norm_eps): the timestep sinusoids' downscale_freq_shift and the
  # eps of the LayerNorm before each block's MLP.
  timestep_freq_shift: float = 0.0
  mlp_norm_eps: float = LAYER_NORM_EPS
  # activation rematerialization per block: '' off, 'full' (keep only block inputs), 'dots'
  remat: str = ""
  # softmax(q kᵀ/√d) v: 'auto' (cuDNN's fused kernel on NVIDIA GPUs in bfloat16/float16, else
  # XLA's), 'xla' or 'cudnn' (ATTENTION_CHOICES)
  attention: str = "auto"

  def __post_init__(self):
    check_remat(self.remat, key="model.remat")
    if self.attention not in ATTENTION_CHOICES:
      raise ValueError(
        f"model.attention must be one of {ATTENTION_CHOICES}, got {self.attention!r}."
      )
    for key, value in (preset(self.preset) if self.preset else {}).items():
      # A config section cannot tell a default from an explicit value, so only a value that is
      # neither the default nor the preset's is known to conflict.
      given, default = getattr(self, key), type(self).__dataclass_fields__[key].default
      if given not in (default, value):
        raise ValueError(
          f"model.preset={self.preset!r} sets model.{key}={value}, but the config gives "
          f"model.{key}={given}; drop one of the two."
        )
      object.__setattr__(self, key, value)  # frozen dataclass: the preset fills the fields once
    if self.hidden_size % self.num_heads or self.hidden_size % 4:
      raise ValueError(
        f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_heads "
        f"({self.num_heads}) and of 4 (the 2-D position embedding)."
      )
    if min(self.depth, self.num_heads, self.patch_size) < 1 or self.mlp_ratio <= 0:
      raise ValueError("model.depth, num_heads, patch_size and mlp_ratio must be positive.")
    if self.mlp_norm_eps <= 0:
      raise ValueError(f"model.mlp_norm_eps must be positive, got {self.mlp_norm_eps}.")


def build_dit(config: DiTConfig, spec, rngs: nnx.Rngs) -> DiT:
  """The DiT of a run: `config` (model.*) on the diffusion space `spec` (a models.NetworkSpec)."""
  return DiT(
    in_channels=spec.in_channels,
    image_size=spec.image_size,
    patch_size=config.patch_size,
    hidden_size=config.hidden_size,
    depth=config.depth,
    num_heads=config.num_heads,
    mlp_ratio=config.mlp_ratio,
    num_classes=spec.num_classes,
    learn_sigma=spec.learn_sigma,
    timestep_freq_shift=config.timestep_freq_shift,
    mlp_norm_eps=config.mlp_norm_eps,
    remat=config.remat,
    attention=config.attention,
    dtype=spec.dtype,
    rngs=rngs,
  )
