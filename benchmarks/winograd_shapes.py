"""Forward time of a 3x3 convolution: XLA's direct one against Winograd F(2x2) and F(4x4).

    python benchmarks/winograd_shapes.py                  # the CIFAR-10 U-Net's shapes
    python benchmarks/winograd_shapes.py --batch=8 --shapes=16x256x256,32x64x64 --rounds=15

Each shape (spatial x in-channels x out-channels) is compiled three ways, the three are timed in
alternation (medians over --rounds), and one JSON line per shape gives ms and the speedup of each
tile over the direct convolution, with the relative error against the direct result. This is the
evidence behind `jaxdiff.cpu.winograd.tile_size`.
"""

from __future__ import annotations

import argparse
import json
import time

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend

UNET_SHAPES = (
  "32x128x128,32x256x128,32x384x128,32x256x256,16x256x256,16x384x256,16x512x256,"
  "8x256x256,8x512x256,4x256x256,4x512x256,16x64x64,16x32x32"
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--shapes", default=UNET_SHAPES, help="comma-separated HxCINxCOUT")
  parser.add_argument("--rounds", type=int, default=9)
  args = parser.parse_args()

  import jax
  import numpy as np

  from jaxdiff.cpu import winograd

  def direct(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  for shape in args.shapes.split(","):
    size, cin, cout = (int(v) for v in shape.split("x"))
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (args.batch, size, size, cin))
    w = jax.random.normal(kw, (3, 3, cin, cout)) / np.sqrt(9 * cin)
    fns = {"direct": jax.jit(direct)}
    for m in winograd.TILES:
      fns[f"F{m}x{m}"] = jax.jit(lambda x, w, m=m: winograd.winograd_conv3x3(x, w, m))
    outputs = {k: jax.block_until_ready(f(x, w)) for k, f in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
      for k, f in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(f(x, w))
        times[k].append(time.perf_counter() - start)
    ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    ref = np.asarray(outputs["direct"], np.float64)
    line = {
      "batch": args.batch,
      "size": size,
      "in": cin,
      "out": cout,
      "direct_ms": round(ms["direct"], 2),
    }
    for k in fns:
      if k != "direct":
        err = np.linalg.norm(np.asarray(outputs[k], np.float64) - ref) / np.linalg.norm(ref)
        line[f"{k}_ms"] = round(ms[k], 2)
        line[f"{k}_speedup"] = round(ms["direct"] / ms[k], 2)
        line[f"{k}_rel_err"] = float(f"{err:.2g}")
    line["tile_size"] = winograd.tile_size(size, size, cin, cout)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
