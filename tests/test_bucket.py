"""A run whose workdir is a `gs://` URL, against a GCS emulator on loopback (tests/bucket.py):
train, SIGKILL, resume bit-identically, sample and eval, all through the CLI, with nothing written
to the local disk under a `gs:` name; a URL nobody can serve ends in one sentence."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_train import cli, data_dir, read_params, tiny_config  # noqa: F401 — a fixture

from jaxdiff import sampling
from jaxdiff.train import loop


# bits/dim from 2 random steps of 32 test digits, and 8 samples scored
EVAL = {"eval.num_timesteps": 2, "eval.num_examples": 32, "eval.num_samples": 8}


def test_a_run_in_a_bucket_resumes_after_sigkill_samples_and_evaluates(
  bucket,
  data_dir,  # noqa: F811
  tmp_path,
):
  straight = tmp_path / "straight"
  loop.train(tiny_config(data_dir), straight)
  env = bucket.environment(dict(os.environ))  # the straight run's devices: the same programs
  workdir = bucket.url("run")
  proc = subprocess.Popen(
    bucket.command(cli(workdir, data_dir)),
    env=env,
    cwd=tmp_path,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  # Orbax marks a finished checkpoint in a bucket with commit_success.txt (no rename there)
  while not bucket.local("run/checkpoints/4/commit_success.txt").exists():
    assert proc.poll() is None and time.time() < deadline, "the run ended before checkpoint 4"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not bucket.local("run/checkpoints/8").exists()
  for mode in ("train", "sample", "eval"):
    done = subprocess.run(
      bucket.command(cli(workdir, data_dir, mode=mode, **EVAL)),
      env=env,
      cwd=tmp_path,
      capture_output=True,
      text=True,
    )
    assert done.returncode == 0, f"--mode={mode}:\n{done.stderr[-3000:]}"
  # the resumed run ends where the uninterrupted one does
  a, b = read_params(straight, 8), read_params(bucket.local("run"), 8)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # its samples are the local run's
  (npz,) = bucket.local("run/samples").glob("step8_*/samples_8x16x16x1.npz")
  expected = np.load(sampling.sample(tiny_config(data_dir), straight))["arr_0"]
  np.testing.assert_array_equal(np.load(npz)["arr_0"], expected)
  assert (npz.parent / "grid.png").is_file()
  lines = [json.loads(x) for x in bucket.local("run/metrics.jsonl").read_text().splitlines()]
  # both starts' lines are kept (an object cannot be appended to: it is rewritten whole)
  logged = [x["step"] for x in lines if "loss" in x]
  assert logged[:2] == [2, 4] and logged[-2:] == [6, 8] and sum("params" in x for x in lines) == 2
  assert lines[-1]["step"] == 8 and np.isfinite(lines[-1]["eval_bpd"])
  assert list(bucket.local("run/tensorboard").glob("events.out.tfevents.*"))
  assert not list(tmp_path.glob("gs:*"))  # nothing local under the URL's name


@pytest.mark.parametrize(
  "workdir, blocked, message",
  [
    ("ftp://host/run", None, "has the URL scheme 'ftp://', which jaxdiff cannot read or write"),
    ("gs://bucket/run", "gcsfs", "needs the package gcsfs: pip install gcsfs"),
  ],
)
def test_a_url_without_a_backend_ends_in_one_sentence(
  tmp_path,
  data_dir,  # noqa: F811
  workdir,
  blocked,
  message,
):
  # the CLI as installed, with the backend's package made unimportable when `blocked`
  block = f"sys.modules[{blocked!r}] = None; " if blocked else ""
  program = f"import runpy, sys; {block}runpy.run_module('jaxdiff.main', run_name='__main__')"
  args = cli(workdir, data_dir)[3:]  # the flags, after `python -m jaxdiff.main`
  done = subprocess.run(
    [sys.executable, "-c", program, *args], cwd=tmp_path, capture_output=True, text=True
  )
  assert done.returncode == 1 and "Traceback" not in done.stderr
  (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
  assert message in line and "--workdir" in line
  assert list(tmp_path.iterdir()) == []  # nothing created locally
