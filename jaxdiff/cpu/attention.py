"""softmax(q kᵀ/√d) v for XLA:CPU as head-major matmuls with k transposed once.

`forward` is the definition the DiT runs everywhere else: `jax.nn.dot_product_attention` with
XLA's implementation on (B, T, heads, head_dim) q/k/v. On XLA:CPU its batched products over the
head axis in the middle cost layout copies around each dot. `head_major` moves the heads in front
once, scales q, transposes k to (B, heads, d, T) so both products are plain row-major matmuls,
normalises the softmax after the second product, and moves the heads back; same values up to
float32 rounding, the softmax in float32 as XLA's. At DiT-S/2's attention (batch 8, 6 heads × 64,
256 tokens, float32, from the fused projection's output) the forward took 20–25 ms and forward +
backward 54–71 ms, against 12–19 ms and 41–58 ms for `head_major` (several noisy runs of
benchmarks/attention_cpu.py; PyTorch's SDPA: 5–6 and 19–23 ms). DiT-S/2's DDIM sampling went
from 12.3 s to 10.2 s (0.90× PyTorch's throughput → 1.05×), its train step from 2338 to 2199 ms
(0.63× → 0.68×; benchmarks/compare_pytorch.py, benchmarks/RESULTS.md). With few tokens it does
not pay: at 128 tokens forward and backward were 1.4× and 1.3× faster, at 64 the backward 5%
slower, and the digits DiT's train step (16 tokens) 2–5% slower, so `jaxdiff.cpu` uses it from
HEAD_MAJOR_MIN_TOKENS on. Measured on CPU only, so `attention` uses it only there
(`lax.platform_dependent`, resolved when lowering; tests/test_dit.py checks that the GPU and TPU
programs are `forward`'s).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

HEAD_MAJOR_MIN_TOKENS = 128  # below it, XLA's layout (the digits DiT's 16 tokens: 2–5% faster)


def forward(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """XLA's dot_product_attention of (B, T, heads, head_dim) q, k, v."""
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def head_major(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`forward`'s values as (B, heads, T, d) @ (B, heads, d, T) and (B, heads, T, T) @ (B, heads,
  T, d) matmuls, the logits and exponentials in float32. The softmax is normalised after the
  second product: e = exp(l − max l), out = (e v) / Σe divides (T, d) rather than (T, T) values,
  and the max, which cancels, is held out of autodiff (its gradient is zero, so this drops only a
  term that sums to 0); backward then never differentiates the normalised weights."""
  scale = q.shape[-1] ** -0.5
  q_h = jnp.transpose(q, (0, 2, 1, 3)) * jnp.asarray(scale, q.dtype)
  k_t = jnp.transpose(k, (0, 2, 3, 1))
  v_h = jnp.transpose(v, (0, 2, 1, 3))
  logits = jnp.matmul(q_h, k_t, preferred_element_type=jnp.float32)
  e = jnp.exp(logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  out = jnp.matmul(e.astype(v.dtype), v_h, preferred_element_type=jnp.float32)
  out = out / jnp.sum(e, axis=-1, keepdims=True)
  return jnp.transpose(out.astype(v.dtype), (0, 2, 1, 3))


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`head_major` on CPU, `forward` on every other platform."""
  return lax.platform_dependent(q, k, v, cpu=head_major, default=forward)
