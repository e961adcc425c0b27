"""What a checkpoint save costs the training loop: the stall per save, local and in a bucket.

    python benchmarks/checkpoint_stall.py [--config=configs/cifar10.py] [--saves=5]

The state is the real TrainState of the config (parameters, EMA, Adam moments, step, key; for
CIFAR-10 the 35.7M-parameter U-Net), built from the config alone (`run.build`: no data is read).
Each case runs in a process of its own (a clean peak memory): a local folder, and an emulated GCS
bucket (tests/bucket.py: gcp-storage-emulator on loopback inside a network namespace of its own,
the case's process entering it), each with Orbax's async saving on and off. A case calls
`Checkpointer.save(step, state, data_state, force=True)` `--saves` times, as the loop does:

  stall_s   the time save() takes to return: what the step loop waits (the loop saves, then goes
            on stepping). Measured with the previous save finished, as in training, where saves
            are thousands of steps apart.
  write_s   save() + wait(): until the checkpoint is complete (finalized) where it is written.
  copy_s    the floor: `jax.device_get(state)` alone, and a copy of every array into fresh host
            memory (`np.array(copy=True)`; on CPU device_get may alias the buffers, and an async
            save must copy them, as the next step donates them).

After each save the state goes through a jitted step that donates its buffers and changes every
float array, as the train step does; one more save at the end is restored and compared with the
state it was given, so a save that kept references instead of copying fails. compile_s is the XLA
compilation measured by JAX's monitoring events during the build and during the saves.
peak_rss_mb is the case process's max RSS over the timed saves. One JSON line per case, then a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASES = [("local", True), ("local", False), ("bucket", True), ("bucket", False)]


def arguments(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/cifar10.py")
  parser.add_argument("--saves", type=int, default=5, help="timed saves per case")
  parser.add_argument(
    "--cases",
    default=",".join(f"{w}:{'async' if a else 'sync'}" for w, a in CASES),
    help="comma-separated WHERE:MODE, WHERE local or bucket, MODE async or sync",
  )
  parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a process of its own
  parser.add_argument("--folder", help=argparse.SUPPRESS)  # where the case writes
  return parser.parse_args(argv)


def run_case(args):
  """One case in this process: build the state, measure the copy floor and the saves."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import monitoring

  compile_s = {"now": 0.0}

  def listen(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compile_s["now"] += duration

  monitoring.register_event_duration_secs_listener(listen)

  from jaxdiff import cpu
  from jaxdiff import run as run_lib
  from jaxdiff.checkpoint import Checkpointer, abstract

  cpu.apply_xla_flags()
  config = load_config(args.config)
  run_lib.enable_compilation_cache(config)
  mode = args.case.split(":")[1]
  start = time.perf_counter()
  state = run_lib.build(config).state
  state = jax.block_until_ready(state)
  build_s, build_compile_s = time.perf_counter() - start, compile_s["now"]
  leaves = jax.tree.leaves(state)
  size_mb = sum(x.nbytes for x in leaves) / 2**20

  def _advance(state):  # every float array changes, in the buffers of the state it is given
    bump = lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.inexact) else x
    return jax.tree.map(bump, state.replace(step=state.step + 1))

  advance = jax.jit(_advance, donate_argnums=0)  # the train step donates the state it is given

  def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

  device_get = [timed(lambda: jax.device_get(state)) for _ in range(3)]
  host_copy = [timed(lambda: [np.array(x, copy=True) for x in leaves]) for _ in range(3)]

  checkpointer = Checkpointer(args.folder, keep=3, async_save=mode == "async")
  data_state = {"next_index": 0}
  stalls, writes = [], []
  state = advance(state)  # compiled before the saves, outside the timed part
  jax.block_until_ready(state)
  before_saves = compile_s["now"]
  for i in range(args.saves):
    step = int(state.step)
    start = time.perf_counter()
    checkpointer.save(step, state, {**data_state, "next_index": step}, force=True)
    stalls.append(time.perf_counter() - start)
    state = advance(state)  # donates the saved buffers, as the next train step would
    jax.block_until_ready(state)
    checkpointer.wait()
    writes.append(time.perf_counter() - start)
  saves_compile_s = compile_s["now"] - before_saves
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  # One more save, checked: the checkpoint holds the state as it was when save() returned, although
  # its buffers were donated and overwritten right after.
  expected = [np.array(x, copy=True) for x in jax.tree.leaves(state)]
  checkpointer.save(int(state.step), state, data_state, force=True)
  state = jax.block_until_ready(advance(state))
  checkpointer.wait()
  step, restored, _ = checkpointer.restore_latest(abstract(state))
  for a, b in zip(expected, jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))
  steps = checkpointer.steps()
  checkpointer.close()
  result = {
    "case": args.case,
    "config": args.config,
    "backend": jax.default_backend(),
    "state_mb": round(size_mb, 1),
    "saves": args.saves,
    "stall_s_median": round(statistics.median(stalls), 3),
    "stall_s_first": round(stalls[0], 3),
    "stall_s": [round(s, 3) for s in stalls],
    "write_s_median": round(statistics.median(writes), 3),
    "write_s": [round(s, 3) for s in writes],
    "device_get_s": round(min(device_get), 3),
    "host_copy_s": round(min(host_copy), 3),
    "build_s": round(build_s, 2),
    "compile_s_build": round(build_compile_s, 2),
    "compile_s_saves": round(saves_compile_s, 3),
    "peak_rss_mb": round(peak_rss_mb, 1),
    "kept_steps": steps,
  }
  print("RESULT " + json.dumps(result), flush=True)


def load_config(path):
  import importlib.util

  spec = importlib.util.spec_from_file_location("benchmark_config", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run_all(args):
  """Every case in a process of its own; the bucket cases inside the emulator's namespace."""
  sys.path.insert(0, str(ROOT / "tests"))
  import bucket as bucket_lib

  results = []
  with tempfile.TemporaryDirectory(prefix="checkpoint-stall-") as scratch:
    scratch = pathlib.Path(scratch)
    served = None
    try:
      for case in args.cases.split(","):
        where, _ = case.split(":")
        command = [sys.executable, __file__, f"--config={args.config}", f"--saves={args.saves}"]
        command.append(f"--case={case}")
        env = dict(os.environ)
        if where == "bucket":
          if served is None:
            (scratch / "emulator").mkdir()
            served = bucket_lib.start(scratch / "emulator" / "data")
          command.append(f"--folder={served.url(case.replace(':', '-'))}/checkpoints")
          command, env = served.command(command), served.environment(env)
        else:
          command.append(f"--folder={scratch / case.replace(':', '-') / 'checkpoints'}")
        done = subprocess.run(
          command, env=env, capture_output=True, text=True, cwd=ROOT, check=False
        )
        if done.returncode != 0:
          sys.exit(f"case {case} failed:\n{done.stderr[-4000:]}")
        (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        results.append(json.loads(line[len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
    finally:
      if served is not None:
        served.stop()
  print()
  print(
    "| case | state MB | stall per save, median (first) s | write (save + wait), median s "
    "| device_get s | host copy s | compile s (build / saves) | peak RSS MB |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    print(
      f"| {r['case']} | {r['state_mb']} | {r['stall_s_median']} ({r['stall_s_first']}) "
      f"| {r['write_s_median']} | {r['device_get_s']} | {r['host_copy_s']} "
      f"| {r['compile_s_build']} / {r['compile_s_saves']} | {r['peak_rss_mb']} |"
    )


if __name__ == "__main__":
  parsed = arguments()
  if parsed.case:
    run_case(parsed)
  else:
    run_all(parsed)
