"""3x3 convolutions as Winograd F(m x m, 3 x 3) on XLA:CPU.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): a 3x3 correlation
over an (m + 2)^2 input tile that yields an m x m output tile is
    Y = A^T [ (G g G^T) * (B^T d B) ] A,
so the channel contraction becomes (m + 2)^2 independent matrix products, one per point of the
transformed tile, with (m + 2)^2 / (9 m^2) of the direct convolution's multiplies: 0.44 for
F(2x2, 3x3), 0.25 for F(4x4, 3x3). The transforms are additions and a few scalings; they cost
memory traffic, so the method pays where the convolution is compute-bound (many channels).

Why here: XLA:CPU runs convolutions through Eigen at about the machine's matmul peak, so nothing
is left in the direct method; fewer multiplies are the remaining lever. Measured on a 2-core
AVX2 CPU (benchmarks/RESULTS.md), the forward of the CIFAR-10 DDPM U-Net's 3x3 convolutions was
1.4-2x faster at 16x16 and 1.1-1.4x at 32x32 with 128-512 channels (0.8-1.3x, varying between
runs, where 256-384 channels go to 128), and slower at 4x4 or with 32 channels; `tile_size`
encodes that. The U-Net's train step got ~1.1x faster, DDIM ~1.3x. Only the forward uses
Winograd: the backward is XLA's own convolution gradients (`conv3x3_winograd`'s custom VJP),
since the transforms' transposes ran slower there than Eigen's kernels.

Accuracy: float32 results differ from the direct convolution by ~5e-7 (F(2x2)) and ~3e-6
(F(4x4)) relative (tests/test_winograd.py checks both against float64). Only float32 takes this
path; other dtypes, other platforms (`lax.platform_dependent`, resolved when lowering, so GPU and
TPU programs contain the plain convolution) and other shapes use `lax.conv_general_dilated`.

Cost: XLA:CPU compiles the transforms slowly. The CIFAR-10 U-Net's train step took 188-237 s to
compile instead of 44-66 s, and peak RSS grew (3.9x PyTorch's in training, 7.6x in sampling), for
~1.1x / ~1.3x throughput. So it is opt-in: `jaxdiff.cpu.winograd_enabled()` decides, and
`jaxdiff.cpu.conv_general_dilated` calls this module's only when it is on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# (B^T, G, A^T) of F(m x m, 3 x 3), interpolation points 0, +-1 (m = 2) and 0, +-1, +-2, inf (m = 4),
# as published by Lavin & Gray (2016).
_MATRICES = {
  2: (
    ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
    ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
    ((1, 1, 1, 0), (0, 1, -1, -1)),
  ),
  4: (
    (
      (4, 0, -5, 0, 1, 0),
      (0, -4, -4, 1, 1, 0),
      (0, 4, -4, -1, 1, 0),
      (0, -2, -1, 2, 1, 0),
      (0, 2, -1, -2, 1, 0),
      (0, 4, 0, -5, 0, 1),
    ),
    (
      (1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1),
    ),
    ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
  ),
}
TILES = tuple(_MATRICES)

# Below these, the direct convolution won every measured shape (benchmarks/RESULTS.md).
MIN_CHANNELS = 128
MIN_SPATIAL = 8

_NHWC = ("NHWC", "HWIO", "NHWC")


def _combine(matrix: Sequence[Sequence[float]], terms: Sequence[jax.Array]) -> list[jax.Array]:
  """[sum_j matrix[i][j] * terms[j] for each row i], skipping zeros and unit multiplies, so XLA
  fuses each into one elementwise loop."""
  out = []
  for row in matrix:
    acc = None
    for c, t in zip(row, terms):
      if c == 0:
        continue
      t = t if c == 1 else -t if c == -1 else t * c
      acc = t if acc is None else acc + t
    out.append(acc)
  return out


def _taps(xp: jax.Array, axis: int, m: int, n: int) -> list[jax.Array]:
  """The m + 2 views along `axis` whose t-th entry is xp[t*m + i] (i = 0..m+1), each n long.

  xp has (n + 1) * m entries along `axis`; reshaping to (n + 1, m) makes every view a plain slice
  (tile t, offset i) or (tile t + 1, offset i - m), with no strided gather.
  """
  split = xp.reshape(xp.shape[:axis] + (n + 1, m) + xp.shape[axis + 1 :])
  views = []
  for i in range(m + 2):
    start = int(i >= m)
    rows = lax.slice_in_dim(split, start, start + n, axis=axis)
    views.append(lax.index_in_dim(rows, i % m, axis=axis + 1, keepdims=False))
  return views


def input_transform(x: jax.Array, m: int) -> list[jax.Array]:
  """B^T d B of every (m + 2)^2 tile of x (N, H, W, C) zero-padded by one pixel: (m + 2)^2 arrays
  (N, ceil(H / m), ceil(W / m), C), the tile point (p, q) at index p * (m + 2) + q."""
  bt = _MATRICES[m][0]
  _, h, w, _ = x.shape
  nh, nw = -(-h // m), -(-w // m)
  xp = jnp.pad(x, ((0, 0), (1, (nh + 1) * m - h - 1), (1, (nw + 1) * m - w - 1), (0, 0)))
  rows = _combine(bt, _taps(xp, 1, m, nh))
  return [v for r in rows for v in _combine(bt, _taps(r, 2, m, nw))]


def weight_transform(w: jax.Array, m: int) -> jax.Array:
  """G g G^T of a (3, 3, C, D) kernel: ((m + 2)^2, C, D), in input_transform's order.

  One matrix product kron(G, G) (w flattened to (9, C * D)) rather than (m + 2)^2 elementwise
  sums: the same arithmetic, half the XLA:CPU compile time of a U-Net with F(4x4) convolutions.
  """
  g = np.asarray(_MATRICES[m][1], np.float64)
  kron = jnp.asarray(np.kron(g, g), w.dtype)  # ((m + 2)^2, 9), rows p * (m + 2) + q
  flat = w.reshape(9, *w.shape[2:])
  return jnp.einsum("pk,kcd->pcd", kron, flat, precision=lax.Precision.HIGHEST)


def output_transform(products: Sequence[jax.Array], m: int, h: int, w: int) -> jax.Array:
  """A^T M A of the per-point products (N, nh, nw, D), assembled into (N, h, w, D)."""
  at = _MATRICES[m][2]
  a = m + 2
  n, nh, nw, d = products[0].shape
  cols = [_combine(at, products[p * a : (p + 1) * a]) for p in range(a)]  # [p][j]
  tiles = [_combine(at, [cols[p][j] for p in range(a)]) for j in range(m)]  # [j][i]
  y = jnp.stack([jnp.stack([tiles[j][i] for j in range(m)], axis=3) for i in range(m)], axis=2)
  return y.reshape(n, nh * m, nw * m, d)[:, :h, :w]


def winograd_conv3x3(x: jax.Array, w: jax.Array, m: int) -> jax.Array:
  """The 3x3, stride 1, one-pixel zero-padded correlation of x (N, H, W, C) with w (3, 3, C, D)
  (what `lax.conv_general_dilated` computes for NHWC/HWIO) by Winograd F(m x m, 3 x 3)."""
  if m not in _MATRICES:
    raise ValueError(f"Winograd tile size must be one of {TILES}, got {m}")
  if x.ndim != 4 or w.shape[:2] != (3, 3) or w.shape[2] != x.shape[3]:
    raise ValueError(f"expected x (N, H, W, C) and w (3, 3, C, D), got {x.shape} and {w.shape}")
  products = [
    jnp.einsum("nhwc,cd->nhwd", v, u) for v, u in zip(input_transform(x, m), weight_transform(w, m))
  ]
  return output_transform(products, m, x.shape[1], x.shape[2])


def _direct(x: jax.Array, w: jax.Array) -> jax.Array:
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_winograd(x: jax.Array, w: jax.Array, m: int) -> jax.Array:
  """`winograd_conv3x3` whose gradient is the direct convolution's (XLA's input- and
  filter-gradient convolutions): the exact gradient of the convolution it computes to rounding."""
  return winograd_conv3x3(x, w, m)


def _conv3x3_winograd_fwd(x, w, m):
  return winograd_conv3x3(x, w, m), (x, w)


def _conv3x3_winograd_bwd(m, residuals, dy):
  return jax.vjp(_direct, *residuals)[1](dy)


conv3x3_winograd.defvjp(_conv3x3_winograd_fwd, _conv3x3_winograd_bwd)


def tile_size(height: int, width: int, in_channels: int, out_channels: int) -> int:
  """The Winograd tile for a float32 3x3 convolution of this shape on CPU; 0: the direct one.

  F(4x4) from 16x16 up, F(2x2) at 8x8 (F(4x4)'s 6x6 tiles are mostly padding there), direct
  below 8x8 or under MIN_CHANNELS channels, where the transforms' memory traffic outweighs the
  saved multiplies (benchmarks/RESULTS.md).
  """
  if min(in_channels, out_channels) < MIN_CHANNELS or min(height, width) < MIN_SPATIAL:
    return 0
  return 4 if min(height, width) >= 16 else 2


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
  **kwargs,
):
  """`lax.conv_general_dilated`, with the 3x3, stride 1, one-pixel padded, float32 NHWC/HWIO
  case done by Winograd on CPU where `tile_size` says it pays. A drop-in for `nnx.Conv`'s
  `conv_general_dilated=` argument; parameters and results (to rounding) are unchanged."""
  direct = functools.partial(
    lax.conv_general_dilated,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
    **kwargs,
  )
  plain = (
    lhs.ndim == 4
    and rhs.shape[:2] == (3, 3)
    and lhs.dtype == rhs.dtype == jnp.float32
    and preferred_element_type in (None, jnp.float32)
    and tuple(window_strides) == (1, 1)
    and _one_pixel_padding(padding)
    and all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
    and feature_group_count == 1
    and batch_group_count == 1
    and kwargs.get("out_sharding") is None
    and _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
  )
  m = tile_size(lhs.shape[1], lhs.shape[2], rhs.shape[2], rhs.shape[3]) if plain else 0
  if not m:
    return direct(lhs, rhs)
  return lax.platform_dependent(
    lhs, rhs, cpu=lambda x, w: conv3x3_winograd(x, w, m), default=direct
  )


def _one_pixel_padding(padding) -> bool:
  if isinstance(padding, str):
    return padding.upper() == "SAME"  # for a 3x3 window at stride 1: one pixel on every side
  return [tuple(p) for p in padding] == [(1, 1), (1, 1)]


def _is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  return dn == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
