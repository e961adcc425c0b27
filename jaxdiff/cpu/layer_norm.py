"""Layer normalization over the last axis without affine parameters (the DiT's, whose adaLN
supplies scale and shift), and its statistics as dots for XLA:CPU.

`forward` is the definition: two-pass variance in float32, the means as reductions over the last
axis. Its program (and autodiff's gradient of it) is what GPUs and TPUs run.

`dots` computes the same values with both means as matrix-vector products x · (1/C): XLA:CPU's
reductions over the channel axis of a (tokens, C) tensor, and the broadcasts autodiff makes of
them, were a third of the digits DiT's train step (165 ms a step at hidden 64; 110 ms with the
means as dots, against 104 ms with no LayerNorm at all; benchmarks/RESULTS.md). Autodiff of the
dots is dots again, so no hand-written backward is needed. Measured on CPU only, so
`layer_norm` uses it only there (`lax.platform_dependent`, resolved when lowering;
tests/test_dit.py checks the GPU and TPU programs hold `forward`'s reductions alone).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def forward(x: jax.Array, eps: float) -> jax.Array:
  """(x − mean) / sqrt(var + eps) over the last axis, float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * lax.rsqrt(var + eps)


def dots(x: jax.Array, eps: float) -> jax.Array:
  """`forward`'s values with the two means over the last axis as dots with a 1/C column."""
  x32 = x.astype(jnp.float32)
  average = jnp.full((x32.shape[-1], 1), 1.0 / x32.shape[-1], jnp.float32)
  centered = x32 - x32 @ average
  return centered * lax.rsqrt((centered * centered) @ average + eps)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """`dots` on CPU, `forward` on every other platform."""
  return lax.platform_dependent(x, cpu=lambda x: dots(x, eps), default=lambda x: forward(x, eps))
