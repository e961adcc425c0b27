"""benchmarks/trilemma.py's --workdir FAMILY=DIR: a run of another family, another dataset or a
class-conditional model ends in one sentence before any work (nothing is made under --out)."""

import json
import pathlib
import subprocess
import sys

import pytest

from jaxdiff import config as config_lib
from jaxdiff import shipped_configs

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from trilemma import given_mismatch  # (the benchmark is a script, not a module)


def workdir_of(tmp_path, name, **overrides):
  """A workdir's config.json as a run writes it (jaxdiff/run.py: config.to_json) for the shipped
  config `name` with `overrides`: what the benchmark reads of a workdir before any work."""
  config = config_lib.load_file(shipped_configs.shipped(name))
  config.update_from_flattened_dict(overrides)
  folder = tmp_path / name
  folder.mkdir()
  (folder / "config.json").write_text(config.to_json(indent=2))
  return folder


STACKED = {"data.name": "stacked_digits", "data.channels": 3, "data.num_classes": None}
UNCONDITIONAL = {"model.class_conditional": False, "model.class_dropout": 0.0}


@pytest.mark.parametrize(
  "family, config, overrides, says",
  [
    ("GAN", "digits_vae", {**STACKED}, "is a 'autoencoder' run (model.arch), not the GAN"),
    ("latent diffusion", "digits", {**STACKED, **UNCONDITIONAL}, "(codec.name), not the latent"),
    ("flow matching", "digits", {**STACKED, **UNCONDITIONAL}, "(diffusion.loss), not the flow"),
    ("GAN", "digits_gan", {**UNCONDITIONAL}, "trained on data.name='digits', this table is on"),
    ("GAN", "digits_gan", {**STACKED, "data.num_classes": 1000}, "is class-conditional"),
  ],
)
def test_a_wrong_workdir_is_refused_in_one_sentence(tmp_path, family, config, overrides, says):
  assert says in given_mismatch(family, workdir_of(tmp_path, config, **overrides), "stacked_digits")


def test_the_right_workdir_is_accepted(tmp_path):
  folder = workdir_of(tmp_path, "stacked_digits_gan")
  assert given_mismatch("GAN", folder, "stacked_digits") is None


def test_through_the_command_line_before_any_work(tmp_path):
  folder = workdir_of(tmp_path, "digits_vae", **STACKED)
  out = tmp_path / "out"
  done = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / "trilemma.py"), f"--out={out}",
     "--workdir", f"GAN={folder}"],
    capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
  )  # fmt: skip
  assert done.returncode == 2, done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert "is a 'autoencoder' run (model.arch), not the GAN of configs/digits_gan.py" in last, last
  assert not out.exists()
  assert json.loads((folder / "config.json").read_text())["model"]["arch"] == "autoencoder"
