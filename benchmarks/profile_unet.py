"""Where an XLA program's time goes: jax.profiler events joined with the optimized HLO.

    python benchmarks/profile_unet.py --config=small --what=train
    python benchmarks/profile_unet.py --config=cifar10 --what=sample --sample-steps=5 --top=20
    python benchmarks/profile_unet.py --config=dit-s2 --what=train --dots --top=0   # DiT, per dot
    JAXDIFF_DEFAULT_XLA_FLAGS=0 python benchmarks/profile_unet.py ...   # without jaxdiff's flag
    JAXDIFF_WINOGRAD=1 python benchmarks/profile_unet.py ...            # with Winograd convolutions

Builds the network (a U-Net, or DiT-S/2 as `dit-s2`) of benchmarks/compare_pytorch.py's CONFIGS
(random weights: time does not depend on them; no torch needed), compiles the same train step
(ε-MSE, Adam, --steps-per-call unrolled) or DDIM sampler, runs it under jax.profiler, and attributes
every executed HLO instruction (XLA:CPU names each thunk's trace event after its instruction) to a
category by what its fused computation contains: convolution forward / input gradient / filter
gradient, dot forward / backward, reduction, transpose or copy, concat/slice/pad, elementwise;
YNNPACK fusions are marked. Prints JSON lines: one per category (ms per step, share of the summed op
time), with --dots one per float32 dot form (GFLOP/s; the weight gradients XLA runs as its own Eigen
dots report the time of their trace events, which do not cover the whole product: ignore their
rates), then the --top instructions, then a summary with wall-clock per step next to the summed op
time (the gap is scheduling, thunk dispatch and the host).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_pytorch import CONFIGS, fixed_labels  # noqa: E402
from compare_pytorch_jax import dit_from_diffusers_config, jax_programs  # noqa: E402

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\(")


def parse_hlo(text: str) -> tuple[dict, dict]:
  """({computation: body text}, {instruction: (computation, shape, opcode, line)})."""
  bodies, instructions, current = collections.defaultdict(str), {}, None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and not line.startswith(" "):
      current = head.group(1)
      continue
    if current is None:
      continue
    bodies[current] += line + "\n"
    found = _INSTRUCTION.match(line)
    if found:
      instructions[found.group(1)] = (current, found.group(2), found.group(3), line)
  return bodies, instructions


def classify(line: str, bodies: dict) -> str:
  """The category of one top-level instruction, from the ops of what it calls."""
  called = re.search(r"calls=%([\w.\-]+)", line)
  body = bodies.get(called.group(1), "") if called else line
  ops = set(re.findall(r"= [^=]*? ([\w\-]+)\(", body))
  backward = "transpose(" in line or "transpose(jvp" in body
  prefix = "ynn " if '"__ynn_fusion"' in line else ""
  if "convolution" in ops:
    conv = re.search(r"convolution\(.*?window=\{([^}]*)\}", body)
    size = re.search(r"size=(\d+x\d+)", conv.group(1)) if conv else None
    if size and size.group(1) not in ("1x1", "3x3"):
      kind = "filter_grad"  # the window runs over the activations: a weight gradient
    else:
      kind = "input_grad" if backward else "forward"
    return f"{prefix}conv {kind}"
  if "dot" in ops:
    return f"{prefix}dot " + ("backward" if backward else "forward")
  if ops & {"reduce", "reduce-window"}:
    return f"{prefix}reduce " + ("backward" if backward else "forward")
  if ops & {"transpose", "copy"}:
    return f"{prefix}transpose/copy"
  if ops & {"concatenate", "slice", "pad", "dynamic-slice", "dynamic-update-slice"}:
    return f"{prefix}concat/slice/pad"
  return f"{prefix}elementwise " + ("backward" if backward else "forward")


def op_times(trace_dir: pathlib.Path, instructions: dict) -> dict:
  """{instruction: total microseconds} over the trace's complete events."""
  path = next(trace_dir.rglob("perfetto_trace.json.gz"))
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals = collections.defaultdict(float)
  for e in events:
    if e.get("ph") == "X" and e.get("name") in instructions:
      totals[e["name"]] += e["dur"]
  return totals


def _unet(c: dict):
  from flax import nnx

  from jaxdiff.convert.diffusers_unet import unet_kwargs_from_diffusers_config
  from jaxdiff.models import UNet

  return UNet(**unet_kwargs_from_diffusers_config(c), rngs=nnx.Rngs(0))


def _dit(c: dict):
  from flax import nnx

  return dit_from_diffusers_config(c, nnx.Rngs(0))


_NETWORKS = {"unet": _unet, "dit": _dit}


_SHAPE = re.compile(r"f32\[([\d,]*)\]")
_DOT = re.compile(r"= (f32\[[\d,]*\])\S* dot\(%?([\w.\-]+), %?([\w.\-]+)\), (.*)")


def _dims(shape: str) -> list[int]:
  return [int(v) for v in _SHAPE.search(shape).group(1).split(",") if v]


def dot_rows(totals: dict, instructions: dict, bodies: dict, calls: int, steps: int) -> list[dict]:
  """Every float32 dot by its form (output = lhs · rhs, contracting dims, YNNPACK or not): ms per
  model step, count, GFLOP per model step (2 per multiply-add) and GFLOP/s, slowest first. An
  instruction's time covers its whole fusion (a dot and what XLA fused into it)."""
  rows = collections.defaultdict(lambda: [0.0, 0.0, 0])
  for name, us in totals.items():
    line = instructions[name][3]
    called = re.search(r"calls=%([\w.\-]+)", line)
    body = bodies.get(called.group(1), "") if called else line
    local = dict(re.findall(r"%([\w.\-]+) = (f32\[[\d,]*\])", body))

    def shape(v, local=local):
      return local.get(v) or instructions.get(v, (0, "?"))[1]

    dots = [m for m in map(_DOT.search, body.splitlines()) if m and "f32[" in shape(m.group(2))]
    for found in dots:
      out, lhs, rhs, dims = (
        found.group(1),
        shape(found.group(2)),
        shape(found.group(3)),
        found.group(4),
      )
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", dims).group(1)
      k = math.prod(_dims(lhs)[int(c)] for c in contracting.split(","))
      dims = re.sub(r", (metadata|backend_config)=.*", "", dims)
      form = f"{out} = {lhs.split('{')[0]} · {rhs.split('{')[0]}, {dims}"
      form += " (ynn)" if '"__ynn_fusion"' in line else ""
      row = rows[form]
      row[0] += us / (calls * steps * 1e3) / len(dots)  # a fusion of several dots: shared evenly
      row[1] += 2 * math.prod(_dims(out)) * k / 1e9 / steps
      row[2] += 1
  return [
    {"dot": form, "ms_per_step": round(ms, 2), "count": n, "gflop": round(gf, 3),
     "gflops_per_s": round(gf / ms * 1e3, 1) if ms else None}
    for form, (ms, gf, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])
  ]  # fmt: skip


def build(name: str, what: str, steps_per_call: int, sample_steps: int):
  """(compiled fn, its arguments, model steps per call)."""
  import jax
  import jax.numpy as jnp

  spec = CONFIGS[name]
  model = _NETWORKS[spec["network"]](spec["config"])
  # the class labels compare_pytorch conditions on (None for an unconditional network)
  train_labels, sample_labels = (
    None if labels is None else jnp.asarray(labels, jnp.int32)
    for labels in (
      fixed_labels(spec, spec["train_batch"], seed=2),
      fixed_labels(spec, spec["sample_batch"], seed=3),
    )
  )
  params, tx, train_call, sample, _ = jax_programs(
    model,
    steps_per_call=steps_per_call,
    sample_steps=sample_steps,
    train_labels=train_labels,
    sample_labels=sample_labels,
  )
  size, channels = spec["config"]["sample_size"], spec["config"]["in_channels"]
  if what == "sample":
    x_T = jax.random.normal(jax.random.key(0), (spec["sample_batch"], size, size, channels))
    return jax.jit(sample).lower(params, x_T).compile(), (params, x_T), sample_steps
  shape = (spec["train_batch"], size, size, channels)
  x0 = jax.random.uniform(jax.random.key(0), shape, jnp.float32, -1, 1)
  args = (params, tx.init(params), x0, jax.random.key(1))
  return jax.jit(train_call).lower(*args).compile(), args, steps_per_call


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
  parser.add_argument("--what", default="train", choices=["train", "sample"])
  parser.add_argument("--steps-per-call", type=int, default=1)
  parser.add_argument("--sample-steps", type=int, default=10)
  parser.add_argument("--calls", type=int, default=2, help="profiled calls (after 2 warm-up calls)")
  parser.add_argument("--top", type=int, default=10, help="slowest instructions to list")
  parser.add_argument("--dots", action="store_true", help="also one line per float32 dot form")
  args = parser.parse_args()

  import jax

  fn, fn_args, steps = build(args.config, args.what, args.steps_per_call, args.sample_steps)
  bodies, instructions = parse_hlo(fn.as_text())
  for _ in range(2):
    jax.block_until_ready(fn(*fn_args))
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(args.calls):
      jax.block_until_ready(fn(*fn_args))
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    totals = op_times(pathlib.Path(tmp), instructions)

  per_step = args.calls * steps * 1e3  # microseconds -> ms per model step
  categories, counts = collections.defaultdict(float), collections.Counter()
  for name, us in totals.items():
    category = classify(instructions[name][3], bodies)
    categories[category] += us / per_step
    counts[category] += 1
  summed = sum(categories.values())
  for category, ms in sorted(categories.items(), key=lambda kv: -kv[1]):
    share = round(ms / summed, 3)
    print(
      json.dumps(
        {
          "category": category,
          "ms_per_step": round(ms, 2),
          "share": share,
          "instructions": counts[category],
        }
      )
    )
  if args.dots:
    for row in dot_rows(totals, instructions, bodies, args.calls, steps):
      print(json.dumps(row))
  for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
    _, shape, opcode, line = instructions[name]
    print(
      json.dumps(
        {
          "instruction": name,
          "ms_per_step": round(us / per_step, 2),
          "category": classify(line, bodies),
          "opcode": opcode,
          "shape": shape,
        }
      )
    )
  print(
    json.dumps(
      {
        "config": args.config,
        "what": args.what,
        "steps_per_call": args.steps_per_call,
        "wall_ms_per_step": round(wall / (args.calls * steps) * 1e3, 1),
        "op_ms_per_step": round(summed, 1),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_fast_paths": cpu.status(),
      }
    )
  )


if __name__ == "__main__":
  main()
