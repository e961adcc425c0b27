"""Where an XLA program's time goes: jax.profiler events joined with the optimized HLO.

    python benchmarks/profile_unet.py --config=small --what=train
    python benchmarks/profile_unet.py --config=cifar10 --what=sample --sample-steps=5 --top=20
    JAXDIFF_DEFAULT_XLA_FLAGS=0 python benchmarks/profile_unet.py ...   # without jaxdiff's flag
    JAXDIFF_WINOGRAD=1 python benchmarks/profile_unet.py ...            # with Winograd convolutions

Builds the U-Net of benchmarks/compare_pytorch.py's CONFIGS (random weights: time does not depend
on them; no torch needed), compiles the same train step (ε-MSE, Adam, --steps-per-call unrolled) or
DDIM sampler, runs it under jax.profiler, and attributes every executed HLO instruction (XLA:CPU
names each thunk's trace event after its instruction) to a category by what its fused
computation contains: convolution forward / input gradient / filter gradient, dot forward /
backward, reduction, transpose or copy, concat/slice/pad, elementwise; YNNPACK fusions are marked.
Prints JSON lines: one per category (ms per step, share of the summed op time), then the --top
instructions, then a summary with wall-clock per step next to the summed op time (the gap is
scheduling, thunk dispatch and the host).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_pytorch import CONFIGS  # noqa: E402
from compare_pytorch_jax import jax_programs  # noqa: E402

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


def build(name: str, what: str, steps_per_call: int, sample_steps: int):
  """(compiled fn, its arguments, model steps per call)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxdiff.convert.diffusers_unet import unet_kwargs_from_diffusers_config
  from jaxdiff.models import UNet

  spec = CONFIGS[name]
  model = UNet(**unet_kwargs_from_diffusers_config(spec["config"]), rngs=nnx.Rngs(0))
  params, tx, train_call, sample, _ = jax_programs(
    model, steps_per_call=steps_per_call, sample_steps=sample_steps
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
  unets = sorted(name for name, c in CONFIGS.items() if c["network"] == "unet")
  parser.add_argument("--config", default="small", choices=unets)
  parser.add_argument("--what", default="train", choices=["train", "sample"])
  parser.add_argument("--steps-per-call", type=int, default=1)
  parser.add_argument("--sample-steps", type=int, default=10)
  parser.add_argument("--calls", type=int, default=2, help="profiled calls (after 2 warm-up calls)")
  parser.add_argument("--top", type=int, default=10, help="slowest instructions to list")
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
