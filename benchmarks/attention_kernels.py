"""The DiT's attention kernels side by side: cuDNN's fused kernel and XLA's, one JSON line each.

    python benchmarks/attention_kernels.py          # on an NVIDIA GPU: both; elsewhere XLA's only

What `model.attention` chooses between (jaxdiff/models/dit.py): jax.nn.dot_product_attention with
implementation 'cudnn' or 'xla', on bfloat16 q/k/v of DiT-XL/2's heads (16 × 72) over 256 tokens.
  accuracy   against softmax(q kᵀ/√d) v computed in float32 from the same bf16 inputs, for the
             output and the gradients of q, k, v (batch 8); bf16 keeps 8 significant bits, so
             either kernel is expected at a few 1e-3
  speed      forward + backward at the DiT-XL/2 train step's shape (batch 256 on a GPU, 2 on
             CPU): mean ms of 20 calls after one warm-up, with compile seconds and the device's
             peak memory (where the backend reports it)
  model      a random-weight DiT-S/2 (32×32×4, bf16 compute) with model.attention 'auto' and
             'xla': their outputs' relative difference, and each against the float32 model
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.models.dit import DiT, attention_implementation

ON_GPU = attention_implementation("auto", jnp.bfloat16, 72) == "cudnn"
KERNELS = ("xla", "cudnn") if ON_GPU else ("xla",)
HEADS, HEAD_DIM, TOKENS = 16, 72, 256  # DiT-XL/2: hidden 1152 = 16 × 72; 32×32 latents, patch 2


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def explicit(q, k, v):
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def attention(kernel):
  return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=kernel)


def weighted_sum(fn, w):
  return lambda q, k, v: (fn(q, k, v).astype(jnp.float32) * w).sum()


def qkvw(key, batch):
  keys = jax.random.split(key, 4)
  shape = (batch, TOKENS, HEADS, HEAD_DIM)
  q, k, v = (jax.random.normal(x, shape, jnp.bfloat16) for x in keys[:3])
  return q, k, v, jax.random.normal(keys[3], shape, jnp.float32)


def peak_memory_mb():
  stats = jax.devices()[0].memory_stats() or {}
  return round(stats["peak_bytes_in_use"] / 2**20, 1) if "peak_bytes_in_use" in stats else None


def accuracy():
  q, k, v, w = qkvw(jax.random.key(0), 8)
  ref = explicit(q, k, v)
  ref_grads = jax.grad(weighted_sum(explicit, w), argnums=(0, 1, 2))(q, k, v)
  for kernel in KERNELS:
    out = jax.jit(attention(kernel))(q, k, v)
    grads = jax.jit(jax.grad(weighted_sum(attention(kernel), w), argnums=(0, 1, 2)))(q, k, v)
    yield {
      "check": "accuracy vs float32",
      "kernel": kernel,
      "out_rel": rel(out, ref),
      "grad_rel_qkv": [rel(g, r) for g, r in zip(grads, ref_grads)],
    }


def speed():
  batch = 256 if ON_GPU else 2
  q, k, v, w = qkvw(jax.random.key(1), batch)
  for kernel in KERNELS:
    fn = jax.jit(jax.value_and_grad(weighted_sum(attention(kernel), w), argnums=(0, 1, 2)))
    start = time.perf_counter()
    compiled = fn.lower(q, k, v).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(q, k, v))
    start = time.perf_counter()
    for _ in range(20):
      result = compiled(q, k, v)
    jax.block_until_ready(result)
    yield {
      "check": "forward+backward",
      "kernel": kernel,
      "shape": [batch, TOKENS, HEADS, HEAD_DIM],
      "ms": round((time.perf_counter() - start) / 20 * 1000, 3),
      "compile_s": round(compile_s, 2),
      "peak_memory_mb": peak_memory_mb(),  # the process's peak so far, both kernels' runs included
    }


def model():
  def dit(choice, dtype):
    return DiT(
      in_channels=4, image_size=32, patch_size=2, hidden_size=384, depth=12, num_heads=6,
      num_classes=1000, learn_sigma=True, attention=choice, dtype=dtype, rngs=nnx.Rngs(0),
    )  # fmt: skip

  nets = {"auto": dit("auto", jnp.bfloat16), "xla": dit("xla", jnp.bfloat16)}
  nets["float32"] = dit("xla", jnp.float32)
  # random weights everywhere (adaLN-Zero starts the blocks at zero, which would hide attention)
  leaves, tree = jax.tree.flatten(nnx.state(nets["auto"], nnx.Param))
  noise = jax.random.split(jax.random.key(2), len(leaves))
  state = jax.tree.unflatten(
    tree, [p + 0.02 * jax.random.normal(n, p.shape, p.dtype) for p, n in zip(leaves, noise)]
  )
  x = jax.random.normal(jax.random.key(3), (8, 32, 32, 4))
  t, y = jnp.arange(8) * 100, jnp.arange(8)
  out = {}
  for name, net in nets.items():
    nnx.update(net, state)
    out[name] = nnx.jit(lambda m, x, t, y: m(x, t, y))(net, x, t, y)
  return {
    "check": "random-weight DiT-S/2, bf16 compute",
    "auto_kernel": attention_implementation("auto", jnp.bfloat16, 64),
    "auto_vs_xla_rel": rel(out["auto"], out["xla"]),
    "auto_vs_float32_rel": rel(out["auto"], out["float32"]),
    "xla_vs_float32_rel": rel(out["xla"], out["float32"]),
  }


def main():
  print(json.dumps({"devices": [d.device_kind for d in jax.devices()], "jax": jax.__version__}))
  for line in (*accuracy(), *speed(), model()):
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
