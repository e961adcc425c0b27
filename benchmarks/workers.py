"""Worker processes for side-by-side benchmarks, and timing that sees other processes' load.

A benchmark starts one worker process per framework (`Worker`), each answering JSON requests one
line at a time (`serve`), and times the same request on each in turn (`alternate`), measuring the
CPU other processes used meanwhile so that rounds disturbed by other jobs can be repeated. Only
the standard library and numpy: the PyTorch worker imports this too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
  with open("/proc/self/status") as f:
    return int(re.search(r"VmHWM:\s+(\d+)", f.read())[1]) / 1024


def reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def serve(make_side):
  """Answers JSON requests from stdin on stdout (the protocol is described in
  compare_pytorch_torch.py); make_side(setup request) builds the side (JaxSide, TorchSide)."""
  out = sys.stdout
  sys.stdout = sys.stderr
  side = None
  for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "setup":
      side = make_side(request)
      answer = side.setup_info()
    elif op == "train":
      answer = {"seconds": side.train(request["steps"])}
    elif op == "forward":
      np.save(request["out"], side.forward(np.load(request["x"]), request["t"]))
      answer = {}
    elif op == "sample":
      seconds, x0 = side.sample(np.load(request["x_T"]))
      np.save(request["out"], x0)
      answer = {"seconds": seconds}
    elif op == "reset_peak":
      answer = {"reset": reset_peak_rss()}
    elif op == "peak":
      answer = {"peak_rss_mb": peak_rss_mb()}
    elif op == "info":
      answer = side.setup_info()
    else:
      raise ValueError(f"unknown op {op!r}")
    out.write(json.dumps(answer) + "\n")
    out.flush()


class Worker:
  """A worker process spoken to one JSON line at a time."""

  def __init__(self, name: str, command: list, env: dict | None = None):
    self.name = name
    self.proc = subprocess.Popen(
      command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )

  def ask(self, **request) -> dict:
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      sys.exit(f"error: the {self.name} worker died (exit code {self.proc.wait()}); see above.")
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def busy_cpu_seconds() -> float:
  """CPU seconds the whole machine has spent busy (any process), from /proc/stat."""
  with open("/proc/stat") as f:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
  return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, all threads


def timed(workers: dict, name: str, request: dict) -> tuple[float, float]:
  """Runs a timed request on one worker: (its seconds, cores other processes kept busy meanwhile,
  i.e. machine-wide busy CPU time minus this benchmark's own, per second of wall-clock)."""
  ours = [os.getpid()] + [w.proc.pid for w in workers.values()]
  busy, mine, start = busy_cpu_seconds(), sum(map(process_cpu_seconds, ours)), time.perf_counter()
  seconds = workers[name].ask(**request)["seconds"]
  wall = time.perf_counter() - start
  others = busy_cpu_seconds() - busy - (sum(map(process_cpu_seconds, ours)) - mine)
  return seconds, max(others, 0.0) / wall


def alternate(workers: dict, rounds: int, request: dict, max_other_cores: float) -> dict:
  """Times `request` on every worker, rotating who goes first, until `rounds` rounds ran with
  other processes below `max_other_cores` (at most `rounds` rounds are repeated; if too few are
  clean, all are kept). {"seconds": {name: [...]}, "other_cores": [...], "repeated": n}."""
  names, kept, rejected = list(workers), [], []
  for r in range(2 * rounds):
    order = names[r % len(names) :] + names[: r % len(names)]
    results = {name: timed(workers, name, request) for name in order}
    other = max(o for _, o in results.values())
    (kept if other <= max_other_cores else rejected).append((results, other))
    if len(kept) == rounds:
      break
  if len(kept) < rounds:
    print(f"warning: other processes kept the CPU busy in {len(rejected)} rounds.", file=sys.stderr)
    kept += rejected
  return {
    "seconds": {name: [res[name][0] for res, _ in kept] for name in names},
    "other_cores": [round(other, 2) for _, other in kept],
    "repeated": len(rejected),
  }


def median_ratio(numerator: list, denominator: list) -> float:
  return float(np.median(numerator) / np.median(denominator))
