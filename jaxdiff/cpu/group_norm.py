"""Group normalization of x (B, P, C) over all positions and the channels of a group, and a
closed-form backward for XLA:CPU.

`forward` is the definition: two-pass variance, statistics in float32, scale and bias float32.
Its gradient is whatever autodiff makes of it, which is what GPUs and TPUs run.

`closed_form` computes the same values with a hand-written VJP. Autodiff left XLA:CPU several
reductions over positions, each fused with its own recomputed copy of the elementwise backward
chain, and XLA:CPU lowers a reduction over the positions of a channels-last tensor (minor axis
kept) to a scalar loop with strided reads: GroupNorm's backward reductions were a third of the
CIFAR-10 U-Net's visible train-step op time. The closed form needs two sums over positions, done
as batched matrix-vector products ones(B, P) . x, dots that XLA:CPU hands to YNNPACK (with the
flag of jaxdiff/cpu/xla_flags.py). The U-Net's train step became 10-15% faster on a 2-core CPU
(benchmarks/RESULTS.md). That was measured on CPU only, and the dots are a CPU workaround, so
`group_norm` uses it only there: `lax.platform_dependent` is resolved when lowering, and a
GPU or TPU program holds autodiff's backward of `forward` alone (tests/test_layers.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _group_sum(v: jax.Array, groups: int) -> jax.Array:
  """(B, C) -> (B, C): each channel gets the sum over the channels of its group."""
  b, c = v.shape
  return jnp.repeat(v.reshape(b, groups, c // groups).sum(-1), c // groups, axis=1)


def _forward_with_residuals(x, scale, bias, eps, groups):
  """Two-pass group norm of x (B, P, C) in float32; (y, what the closed-form backward needs)."""
  xf = x.astype(jnp.float32)
  n = xf.shape[1] * (xf.shape[2] // groups)
  mean = _group_sum(xf.sum(1), groups) / n
  centered = xf - mean[:, None, :]
  inv = lax.rsqrt(_group_sum((centered * centered).sum(1), groups) / n + eps)
  return centered * (inv * scale)[:, None, :] + bias, (x, mean, inv, scale)


def forward(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, groups: int) -> jax.Array:
  """y (B, P, C) float32 = (x - mean) / sqrt(var + eps) * scale + bias, per sample and group."""
  return _forward_with_residuals(x, scale, bias, eps, groups)[0]


def sum_positions(x: jax.Array) -> jax.Array:
  """(B, P, C) -> (B, C), the sum over positions as a batched matrix-vector product (a dot, not
  XLA:CPU's slow minor-axis-kept reduce loop). Only `closed_form` uses it, which runs on CPU."""
  ones = jnp.ones(x.shape[:2], x.dtype)
  return lax.dot_general(ones, x, (((1,), (1,)), ((0,), (0,))))


def _backward(eps, groups, residuals, dy):
  """The closed-form gradient: with g = dy * scale and x^ the normalized input, per group,
  dx = (g - mean(g) - x^ mean(g x^)) / sigma; dscale = sum dy x^; dbias = sum dy."""
  del eps  # already in `inv`
  x, mean, inv, scale = residuals
  n = x.shape[1] * (x.shape[2] // groups)
  xhat = (x.astype(jnp.float32) - mean[:, None, :]) * inv[:, None, :]
  sum_dy = sum_positions(dy)  # (B, C)
  sum_dy_xhat = sum_positions(dy * xhat)
  mean_g = _group_sum(sum_dy * scale, groups) / n
  mean_gx = _group_sum(sum_dy_xhat * scale, groups) / n
  dx = (dy * scale - mean_g[:, None, :] - xhat * mean_gx[:, None, :]) * inv[:, None, :]
  return dx.astype(x.dtype), sum_dy_xhat.sum(0), sum_dy.sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def closed_form(x, scale, bias, eps, groups):
  """`forward`, differentiated by `_backward` instead of autodiff."""
  return forward(x, scale, bias, eps, groups)


closed_form.defvjp(_forward_with_residuals, _backward)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, groups: int):
  """`forward` whose backward is `closed_form`'s on CPU and autodiff's on other platforms."""
  return lax.platform_dependent(
    x,
    scale,
    bias,
    cpu=lambda *a: closed_form(*a, eps, groups),
    default=lambda *a: forward(*a, eps, groups),
  )
