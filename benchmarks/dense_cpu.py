"""DiT-S/2's dense layers on a CPU: XLA:CPU's float32 matrix products, under each dot backend it
offers, against PyTorch's on the same shapes.

    python benchmarks/dense_cpu.py [--torch-python=/tmp/refvenv/bin/python] [--rounds=3]

The products of one DiT-S/2 block at batch 8 (2048 tokens × hidden 384: the q/k/v, output, and
the MLP's two projections), each in the three forms a train step runs: forward x·W, the input
gradient g·Wᵀ and the weight gradient xᵀ·g. jaxdiff's side runs each XLA:CPU dot backend in its
own process (XLA_FLAGS must be set before the backend exists): `jaxdiff` (the flag jaxdiff.cpu
applies, YNNPACK for dots alone), `ynn-default` (jaxlib's default YNNPACK fusions) and `eigen`
(YNNPACK off: XLA's own dot). (jaxlib 0.10.2 also accepts XNNPACK and oneDNN dot-fusion flags, but
its CPU build makes no such fusion: the dot stays XLA's own; `fusions` in the output shows which
custom fusions each program holds.) With --torch-python, torch.mm on the same shapes (2 threads).
Rounds alternate the processes; one JSON line per backend and round: the median GFLOP/s of 9
calls per product (one multiply-add = 2 flops), and their total time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

TOKENS, HIDDEN = 2048, 384  # batch 8 × 256 tokens; DiT-S/2's hidden size
SHAPES = {"qkv": (HIDDEN, 3 * HIDDEN), "proj": (HIDDEN, HIDDEN), "fc1": (HIDDEN, 4 * HIDDEN),
          "fc2": (4 * HIDDEN, HIDDEN)}  # fmt: skip
YNN = "--xla_cpu_experimental_ynn_fusion_type"
BACKENDS = {
  "jaxdiff": None,  # jaxdiff.cpu.apply_xla_flags()
  "ynn-default": "",
  "eigen": f"{YNN}=",
}

# Each side prints {"name", "gflops": {product: GFLOP/s}, "total_ms"}; `{tokens}`, `{shapes}` filled.
JAX_SIDE = """
import json, os, re, sys, time
if os.environ.get("DENSE_CPU_JAXDIFF_FLAGS") == "1":
  from jaxdiff import cpu
  cpu.apply_xla_flags()
import jax, jax.numpy as jnp, numpy as np
M, shapes, out, kinds = {tokens}, {shapes}, {{}}, set()
rng = np.random.default_rng(0)
def median_ms(f, *a):
  f = jax.jit(f).lower(*a).compile()
  kinds.update(re.findall(r'"kind":"(__\\w+)"', f.as_text()))
  jax.block_until_ready(f(*a)); jax.block_until_ready(f(*a)); t = []
  for _ in range(9):
    s = time.perf_counter(); jax.block_until_ready(f(*a)); t.append(time.perf_counter() - s)
  return 1e3 * sorted(t)[4]
for name, (k, n) in shapes.items():
  x, w, g = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((M, k), (k, n), (M, n)))
  flops = 2 * M * k * n
  for form, fn, args in (("forward", lambda x, w: x @ w, (x, w)), ("input_grad", lambda g, w: g @ w.T, (g, w)),
                         ("weight_grad", lambda x, g: x.T @ g, (x, g))):
    out[f"{{name}} {{form}}"] = flops / median_ms(fn, *args) / 1e6
print(json.dumps({{"gflops": out, "fusions": sorted(kinds), "xla_flags": os.environ.get("XLA_FLAGS", "")}}))
"""

TORCH_SIDE = """
import json, time, torch
torch.set_num_threads(2)
M, shapes, out = {tokens}, {shapes}, {{}}
def median_ms(f):
  f(); f(); t = []
  for _ in range(9):
    s = time.perf_counter(); f(); t.append(time.perf_counter() - s)
  return 1e3 * sorted(t)[4]
with torch.no_grad():
  for name, (k, n) in shapes.items():
    x, w, g = torch.randn(M, k), torch.randn(k, n), torch.randn(M, n)
    flops = 2 * M * k * n
    for form, fn in (("forward", lambda: x @ w), ("input_grad", lambda: g @ w.T), ("weight_grad", lambda: x.T @ g)):
      out[f"{{name}} {{form}}"] = flops / median_ms(fn) / 1e6
print(json.dumps({{"gflops": out, "torch": torch.__version__}}))
"""


def run_side(python: str, code: str, env: dict) -> dict:
  done = subprocess.run(
    [python, "-c", code], env=env, capture_output=True, text=True, check=False, timeout=600
  )
  if done.returncode:
    raise SystemExit(f"a benchmark process failed:\n{done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--torch-python", help="an interpreter with torch (PyTorch's side)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--backends", default=",".join(BACKENDS), help=f"of {', '.join(BACKENDS)}")
  args = parser.parse_args()
  backends = args.backends.split(",")
  unknown = sorted(set(backends) - set(BACKENDS))
  if unknown:
    parser.error(f"unknown backends {unknown}; choose from {list(BACKENDS)}.")
  fill = {"tokens": TOKENS, "shapes": repr(SHAPES)}
  for r in range(args.rounds):
    for name in backends:
      env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
      env["JAX_PLATFORMS"] = "cpu"
      if BACKENDS[name] is None:
        env["DENSE_CPU_JAXDIFF_FLAGS"] = "1"
      elif BACKENDS[name]:
        env["XLA_FLAGS"] = BACKENDS[name]
      report(r, name, run_side(sys.executable, JAX_SIDE.format(**fill), env))
    if args.torch_python:
      report(r, "torch", run_side(args.torch_python, TORCH_SIDE.format(**fill), dict(os.environ)))


def report(round_, name, result):
  gflops = result.pop("gflops")
  total_ms = sum(2 * TOKENS * k * n / 1e6 / gflops[f"{p} {f}"] for p, (k, n) in SHAPES.items()
                 for f in ("forward", "input_grad", "weight_grad"))  # fmt: skip
  row = {"round": round_, "backend": name, "total_ms": round(total_ms, 2)}
  row |= {p: round(v, 1) for p, v in gflops.items()} | result
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
