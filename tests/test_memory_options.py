"""The memory options through every mode of the CLI: a DiT trained with remat ('dots'), bf16
compute and FSDP trains with its grids, samples, evaluates and is described; remat changes how
the network computes, not what it computes (the 2-process test in test_multiprocess.py runs the
U-Net with remat 'full' and FSDP)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
from cluster import configured, copy_of_checkpoints, flags
from test_train import TINY, data_dir  # noqa: F401 — a fixture

from jaxdiff import sampling

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIT = ROOT / "configs" / "digits_dit.py"
OPTIONS = {"model.remat": "dots", "train.compute_dtype": "bfloat16", "train.fsdp": 2}


def test_a_remat_bf16_fsdp_dit_in_every_mode(tmp_path, data_dir):  # noqa: F811
  overrides = {
    **{k: v for k, v in TINY.items() if k.split(".")[0] != "model" and k != "train.num_devices"},
    "data.data_dir": str(data_dir),
    "model.hidden_size": 16,
    "model.depth": 2,
    "model.num_heads": 2,
    "train.num_steps": 4,
    "train.sample_every": 2,
    "eval.num_timesteps": 2,
    "eval.num_examples": 16,
    "eval.batch_size": 16,
    "eval.num_samples": 8,
  }
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "jaxdiff.main", f"--config={DIT}", f"--workdir={workdir}"]
  args += flags({**overrides, **OPTIONS})
  for mode in ("train", "sample", "eval", "describe"):
    done = subprocess.run([*args, f"--mode={mode}"], capture_output=True, text=True)
    assert done.returncode == 0, f"--mode={mode}:\n{done.stderr[-3000:]}"
  assert {p.name for p in (workdir / "samples").glob("grid_*.png")} == {"grid_2.png", "grid_4.png"}
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["step"] == 4 and np.isfinite(last["eval_bpd"]) and last["eval_samples"] == 8
  (npz,) = workdir.glob("samples/*/samples_8x16x16x1.npz")
  # the same checkpoint sampled without remat (a memory option: the workdir accepts the change)
  config = configured(DIT, {**overrides, **OPTIONS, "model.remat": ""})
  plain = np.load(sampling.sample(config, copy_of_checkpoints(workdir, tmp_path / "plain")))
  with_remat = np.load(npz)
  np.testing.assert_array_equal(plain["arr_1"], with_remat["arr_1"])
  # remat recomputes the same bf16 operations; XLA may fuse them differently: a rounding flip
  difference = np.abs(plain["arr_0"].astype(int) - with_remat["arr_0"].astype(int))
  assert difference.max() <= 1 and np.mean(difference > 0) < 0.01
