"""Every mode of `python -m jaxdiff.main` on 2 processes × 4 CPU devices, as BUILD.md's cluster
command runs it: train with its grids, sample, eval and describe, equal to 1 process × 8 devices
where the maths says so; preemption notices that every process agrees on, with the workdir in a
bucket as on a pod."""

import json
import pathlib
import signal
import time

import jax
import numpy as np
from cluster import every_mode, flags, run, same_as_one_process, start
from test_train import TINY, data_dir, read_params  # noqa: F401 — a fixture

from jaxdiff.train import loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
# TINY on every device of every process; 12 samples in batches of 6, which 8 devices do not
# divide (the generator pads them), bits/dim from 2 random steps of the whole test split.
PIXEL = {
  **{k: v for k, v in TINY.items() if k != "train.num_devices"},
  "train.num_steps": 4,
  "train.sample_every": 4,
  "sample.num_samples": 12,
  "sample.batch_size": 6,
  "eval.num_timesteps": 2,
  "eval.num_samples": 12,
  # the memory options (recomputed activations, parameters split in 2) change no result
  "model.remat": "full",
  "train.fsdp": 2,
}


def test_a_pixel_run_in_every_mode_on_two_processes_equals_one(tmp_path, data_dir):  # noqa: F811
  overrides = {**PIXEL, "data.data_dir": str(data_dir)}
  workdir = tmp_path / "run"
  npz, result = every_mode(ROOT / "configs" / "digits.py", workdir, overrides)
  images = np.load(npz)
  assert images["arr_0"].shape == (12, 16, 16, 1)
  np.testing.assert_array_equal(images["arr_1"], np.arange(12) % 10)
  assert result["eval_examples"] == 270 and result["eval_samples"] == 12
  same_as_one_process(ROOT / "configs" / "digits.py", overrides, workdir, tmp_path, npz, result)
  # describe: process 0 reports, once
  outputs = run([f"--config={ROOT / 'configs' / 'digits.py'}", "--mode=describe"])
  assert json.loads(outputs[0].strip().splitlines()[-1])["parameters"] > 0
  assert outputs[1].strip() == "" or "parameters" not in outputs[1]


# --- preemption --------------------------------------------------------------------------------

# One step per call, so an interrupted run and a straight one make the same calls; checkpoints
# only at the end (or at the agreed step).
LONG = {
  **{k: v for k, v in TINY.items() if k != "train.num_devices"},
  "train.num_steps": 2000,
  "train.steps_per_call": 1,
  "train.checkpoint_every": 100000,
  "train.log_every": 1,
}


def _train_until_signalled(bucket, data_dir, signalled):  # noqa: F811
  """Starts 2 processes on LONG with the workdir in `bucket`, sends SIGTERM to processes
  `signalled` (twice to the first: a second notice while saving changes nothing) once both are
  stepping; the checkpoints' steps."""
  args = [f"--config={ROOT / 'configs' / 'digits.py'}", f"--workdir={bucket.url('term/run')}"]
  procs = start(
    [*args, *flags({**LONG, "data.data_dir": str(data_dir)})],
    log_dir=bucket.objects.parent / "term-logs",
    bucket=bucket,
  )
  workdir = bucket.local("term/run")
  metrics = workdir / "metrics.jsonl"
  first = len(metrics.read_text().splitlines()) if metrics.exists() else 0
  deadline = time.time() + 300
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= first + 4):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, "training did not start"
    time.sleep(0.05)
  for i in signalled:
    procs[i].send_signal(signal.SIGTERM)
  procs[signalled[0]].send_signal(signal.SIGTERM)
  sent = time.time()
  codes = [p.wait(timeout=120) for p in procs]
  assert time.time() - sent < 60, "a process took more than 60 s to stop"
  assert codes == [loop.PREEMPTED_EXIT_CODE] * 2, codes
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  # each saved step is complete (a bucket has no rename: Orbax marks it so)
  assert all((workdir / "checkpoints" / str(s) / "commit_success.txt").exists() for s in steps)
  logged = json.loads(metrics.read_text().splitlines()[-1])
  assert logged["step"] == steps[-1]  # metrics flushed at the agreed step
  return steps


def test_a_sigterm_to_one_or_both_processes_in_a_bucket_saves_at_one_agreed_step(
  tmp_path,
  data_dir,  # noqa: F811
  bucket,
):
  # As a preempted pod slice: the workdir in a bucket, every process told or only one.
  # SIGTERM to process 1 only: both save at the step the preemption sync point names, and stop
  (first,) = _train_until_signalled(bucket, data_dir, [1])
  assert 0 < first < LONG["train.num_steps"]
  # resumed from the bucket, then SIGTERM to both
  steps = _train_until_signalled(bucket, data_dir, [0, 1])
  assert steps[0] == first and first < steps[-1] < LONG["train.num_steps"]
  # the restart to 2 steps past it ends where an uninterrupted (local) run of as many steps ends
  final = {**LONG, "data.data_dir": str(data_dir), "train.num_steps": steps[-1] + 2}
  args = [f"--config={ROOT / 'configs' / 'digits.py'}", *flags(final)]
  run([*args, f"--workdir={bucket.url('term/run')}"], bucket=bucket)
  run([*args, f"--workdir={tmp_path / 'straight'}"])
  end = steps[-1] + 2
  a, b = read_params(bucket.local("term/run"), end), read_params(tmp_path / "straight", end)
  jax.tree.map(np.testing.assert_array_equal, a, b)
