"""`python -m jaxdiff.main` as several processes on this machine, as BUILD.md's cluster command runs
it: every process gets the same flags plus --coordinator_address=127.0.0.1:PORT, --num_processes
and --process_id, and four fake CPU devices of its own (collectives over gloo on loopback)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import environment_of_one_device


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(devices: int = 4) -> dict:
  """A CLI process's environment: `devices` fake CPU devices, unbuffered output."""
  env = environment_of_one_device()
  env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
  return {**env, "PYTHONUNBUFFERED": "1"}


def command(args, *, port: int, process: int, processes: int = 2) -> list[str]:
  return [
    sys.executable,
    "-m",
    "jaxdiff.main",
    *args,
    f"--coordinator_address=127.0.0.1:{port}",
    f"--num_processes={processes}",
    f"--process_id={process}",
  ]


def start(
  args, *, processes: int = 2, devices: int = 4, log_dir=None, bucket=None
) -> list[subprocess.Popen]:
  """The processes of one job, started; their output goes to log_dir/process_I.log (or is
  captured when log_dir is None). With `bucket` (tests/bucket.py), they run in its loopback-only
  network namespace with every storage client pointed at it."""
  port, env = free_port(), environment(devices)
  wrap = lambda cmd: cmd
  if bucket is not None:
    env, wrap = bucket.environment(env), bucket.command
  procs = []
  for i in range(processes):
    if log_dir is None:
      out = subprocess.PIPE
    else:
      os.makedirs(log_dir, exist_ok=True)
      out = open(os.path.join(log_dir, f"process_{i}.log"), "w")
    procs.append(
      subprocess.Popen(
        wrap(command(args, port=port, process=i, processes=processes)),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  return procs


def run(
  args, *, processes: int = 2, devices: int = 4, timeout: float = 600, bucket=None
) -> list[str]:
  """Runs one job to its end; the processes' outputs. Fails the test, with every process's
  output, unless all of them exit 0."""
  procs = start(args, processes=processes, devices=devices, bucket=bucket)
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=timeout)[0])
  finally:
    for proc in procs:
      proc.kill()
  codes = [proc.returncode for proc in procs]
  assert codes == [0] * processes, "\n\n".join(
    f"process {i} exited {c}:\n{o[-3000:]}" for i, (c, o) in enumerate(zip(codes, outputs))
  )
  return outputs


def flags(overrides: dict) -> list[str]:
  """--config.KEY=VALUE for each override; tuples in config_flags' (a,b,) form."""
  out = []
  for key, value in overrides.items():
    if isinstance(value, tuple):
      value = f"({','.join(map(str, value))},)"
    out.append(f"--config.{key}={value}")
  return out


def every_mode(config_file, workdir, overrides: dict, *, bucket=None) -> tuple[pathlib.Path, dict]:
  """Train (with its final grid), sample and eval on 2 processes × 4 devices, through the CLI;
  (the samples' npz, eval's JSON line). Asserts the grid and one npz were written. With `bucket`,
  `workdir` is a key in it, and the files are read where the emulator keeps them."""
  url = workdir if bucket is None else bucket.url(workdir)
  args = [f"--config={config_file}", f"--workdir={url}", *flags(overrides)]
  workdir = workdir if bucket is None else bucket.local(workdir)
  run(args, bucket=bucket)
  steps = overrides["train.num_steps"]
  assert (workdir / "samples" / f"grid_{steps}.png").is_file()
  run([*args, "--mode=sample"], bucket=bucket)
  outputs = run([*args, "--mode=eval"], bucket=bucket)
  (npz,) = workdir.glob("samples/*/samples_*.npz")
  result = json.loads(outputs[0].strip().splitlines()[-1])  # process 0 reports
  assert result["step"] == steps
  assert not any(line.startswith("{") for line in outputs[1].splitlines())  # reported once
  return npz, result


def copy_of_checkpoints(workdir, to) -> pathlib.Path:
  """A new workdir with `workdir`'s config and checkpoints only (no samples, no metrics)."""
  to.mkdir()
  shutil.copytree(workdir / "checkpoints", to / "checkpoints")
  for name in ("config.json", "codec.json"):
    if (workdir / name).exists():
      shutil.copy(workdir / name, to / name)
  return to


def configured(config_file, overrides: dict):
  """The config the CLI builds from `config_file` and these overrides (for in-process runs)."""
  from jaxdiff import config as config_lib

  config = config_lib.load_file(config_file)
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[last] = value
  return config


def same_as_one_process(
  config_file, overrides, workdir, tmp_path, npz, result, *, rtol=1e-6, here=None
):
  """Sample and eval the 2-process run's checkpoint in this process (8 devices): the same
  per-device programs on the same rows, so the same images and the same scores. `here` replaces
  overrides for this process (local copies of what the run read from a bucket). `rtol` > 1e-6
  for programs whose float32 reductions XLA:CPU may split over threads differently in a process
  of 8 devices than in one of 4 (a decoder's GroupNorm): images then differ by a rounding flip
  (one level) at a few pixels, and the scores by as little."""
  from jaxdiff import evaluation, sampling

  config = configured(config_file, {**overrides, **(here or {})})
  alone = copy_of_checkpoints(workdir, tmp_path / "alone")
  one_images = np.load(sampling.sample(config, alone))["arr_0"].astype(np.int32)
  two_images = np.load(npz)["arr_0"].astype(np.int32)
  if rtol <= 1e-6:
    np.testing.assert_array_equal(two_images, one_images)
  else:
    assert np.abs(two_images - one_images).max() <= 1
    assert np.mean(two_images != one_images) < 0.01
  one = evaluation.evaluate(config, alone)
  for key, value in result.items():
    if isinstance(value, float):  # the same sums; only their order across processes differs
      assert value == pytest.approx(one[key], rel=rtol), (key, value, one[key])
    else:
      assert value == one[key], key
