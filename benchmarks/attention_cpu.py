"""Where DiT-S/2's attention loses to PyTorch on a CPU: the layouts XLA can be given, and SDPA.

    python benchmarks/attention_cpu.py [--torch-python=/tmp/refvenv/bin/python] [--batch=8]

The attention core of one DiT-S/2 block (6 heads × 64 over 256 tokens, float32), from the fused
q/k/v projection's output (B, T, 3, heads, head_dim) to (B, T, hidden), as the DiT calls it
(`current`: jax.nn.dot_product_attention, XLA's implementation) and as jaxdiff runs it on CPU
(`head_major`, jaxdiff/cpu/attention.py); then its parts alone on (B, heads, T, T) scores: the two products,
softmax, and softmax's exp and row max. With --torch-python, PyTorch's
scaled_dot_product_attention on the same shapes in that interpreter (2 threads). One JSON line
each: median ms of 7 calls after a warm-up, forward and forward + backward (the gradient of
Σ out·g with respect to q/k/v), and each layout's relative difference from `current`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxdiff.cpu import attention  # noqa: E402

TOKENS, HEADS, HEAD_DIM = 256, 6, 64  # DiT-S/2 on 32×32×4 latents: hidden 384 = 6 × 64

TORCH = """
import json, sys, time, torch
torch.set_num_threads(2)
B, T, H, D = {batch}, {tokens}, {heads}, {head_dim}
x = torch.randn(B, T, 3, H, D, requires_grad=True)
g = torch.randn(B, T, H * D)
def f(x):
  q, k, v = x.permute(2, 0, 3, 1, 4)
  return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, H * D)
def fwd():
  with torch.no_grad():
    f(x)
def fwd_bwd():
  (f(x) * g).sum().backward()
out = {{"name": "torch_sdpa"}}
for tag, fn in (("forward_ms", fwd), ("forward_backward_ms", fwd_bwd)):
  fn()
  times = []
  for _ in range(7):
    start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
  out[tag] = round(1e3 * sorted(times)[3], 2)
print(json.dumps(out))
"""


def median_ms(fn, *args):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(7):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return round(1e3 * float(np.median(times)), 2)


def layouts(batch):
  """(B, T, 3, heads, head_dim) → (B, T, hidden) through each of jaxdiff.cpu.attention's two."""

  def through(attend):
    def run(x):
      out = attend(x[:, :, 0], x[:, :, 1], x[:, :, 2])
      return out.reshape(batch, TOKENS, HEADS * HEAD_DIM)

    return run

  return {"current": through(attention.forward), "head_major": through(attention.head_major)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--torch-python", help="an interpreter with torch, for SDPA alongside")
  args = parser.parse_args()
  b = args.batch
  x = jax.random.normal(jax.random.key(0), (b, TOKENS, 3, HEADS, HEAD_DIM), jnp.float32)
  g = jax.random.normal(jax.random.key(1), (b, TOKENS, HEADS * HEAD_DIM), jnp.float32)
  fns = layouts(b)
  reference = jax.jit(fns["current"])(x)
  for name, f in fns.items():
    out = jax.jit(f)(x)
    diff = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
    line = {"name": name, "relative_difference": diff, "forward_ms": median_ms(f, x)}
    line["forward_backward_ms"] = median_ms(jax.grad(lambda x, f=f: jnp.sum(f(x) * g)), x)
    print(json.dumps(line), flush=True)
  q = jax.random.normal(jax.random.key(2), (b, HEADS, TOKENS, HEAD_DIM))
  k_t = jax.random.normal(jax.random.key(3), (b, HEADS, HEAD_DIM, TOKENS))
  scores = jax.random.normal(jax.random.key(4), (b, HEADS, TOKENS, TOKENS))
  parts = {
    "q @ kᵀ": median_ms(jnp.matmul, q, k_t),
    "p @ v": median_ms(jnp.matmul, scores, q),
    "softmax": median_ms(lambda s: jax.nn.softmax(s, axis=-1), scores),
    "exp": median_ms(jnp.exp, scores),
    "row max": median_ms(lambda s: s.max(-1), scores),
  }
  print(json.dumps({"name": "parts (forward)", **{f"{k}_ms": v for k, v in parts.items()}}))
  if args.torch_python:
    code = TORCH.format(batch=b, tokens=TOKENS, heads=HEADS, head_dim=HEAD_DIM)
    command = [args.torch_python, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    print(result.stdout.strip() or result.stderr.strip().splitlines()[-1], flush=True)
  sys.stdout.flush()


if __name__ == "__main__":
  main()
