"""The command line's answers to bad input, and its quiet first use of the digits dataset.

Every case runs `python -m jaxdiff.main` (or the data function it calls) in a subprocess, as a user
would; all of them fail or finish before any training, so they stay cheap.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CURSOR_UP = "\x1b[A"  # what tqdm's nested bars leave behind when they close


def _cli(tmp_path, *args, config=None):
  command = [sys.executable, "-m", "jaxdiff.main", f"--workdir={tmp_path / 'work'}"]
  command += [f"--config={config}"] if config is not None else []  # before its overrides
  command += [f"--config.data.data_dir={tmp_path / 'data'}", *args]
  return subprocess.run(
    command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ)
  )


def _the_error(result, *needles):
  """The one stderr line that names every needle; the run must have failed cleanly with it."""
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if all(n in line for n in needles)]
  assert len(lines) == 1, result.stderr  # printed once: not also through absl's logging
  assert lines[0].startswith("error: "), result.stderr
  return lines[0]


def test_missing_config_file_is_named_in_one_line(tmp_path):
  result = _cli(tmp_path, "--config=configs/does_not_exist.py")
  _the_error(result, "configs/does_not_exist.py", "does not exist")
  assert result.stderr.strip().count("\n") == 0, result.stderr


def test_missing_config_file_with_overrides_is_named_in_one_line(tmp_path):
  # With an override, config_flags reads the missing config while parsing (an OSError there).
  result = _cli(tmp_path, "--config=nowhere.py", "--config.train.num_steps=3")
  _the_error(result, "nowhere.py", "does not exist")


def test_unknown_config_name_lists_the_shipped_configs(tmp_path):
  result = _cli(tmp_path, "--config=digitz")
  line = _the_error(result, "'digitz'", "did you mean 'digits'?")
  assert "digits_dit" in line and "imagenet64" in line  # the shipped configs, by name
  assert result.stderr.strip().count("\n") == 0, result.stderr


def test_readme_config_path_falls_back_to_the_shipped_config(tmp_path):
  # tmp_path has no configs/ folder: configs/digits.py is the shipped digits config, as after a
  # wheel install (tests/test_install.py runs the wheel itself)
  assert not (tmp_path / "configs").exists()
  result = _cli(tmp_path, "--mode=describe", config="configs/digits.py")
  assert result.returncode == 0, result.stderr
  info = json.loads(result.stdout.strip().splitlines()[-1])
  assert info["arch"] == "unet" and info["diffusion_shape"] == [16, 16, 1]


def test_a_shipped_config_name_keeps_its_colon_arguments(tmp_path):
  # config_flags passes what follows ':' to get_config (the digits config takes none)
  result = _cli(tmp_path, "--config.train.num_steps=3", config="digits:oops")
  assert result.returncode == 1
  assert "get_config() takes 0 positional arguments but 1 was given" in result.stderr


@pytest.mark.parametrize("explicit_config", [False, True])
def test_unknown_key_names_key_and_section(tmp_path, explicit_config):
  # Without --config the default config takes the overrides when the flag is defined; with it,
  # during flag parsing: two places in config_flags, one message.
  config = [f"--config={REPO / 'configs' / 'digits.py'}"] if explicit_config else []
  result = _cli(tmp_path, *config, "--config.train.nonexistent_key=3")
  line = _the_error(result, "'nonexistent_key'", "'train'")
  assert "--config.train.nonexistent_key" in line
  assert result.stderr.strip().count("\n") == 0, result.stderr


def test_unknown_section_and_near_miss(tmp_path):
  _the_error(_cli(tmp_path, "--config.nonexistent_section.x=1"), "'nonexistent_section'")
  line = _the_error(_cli(tmp_path, "--config.train.num_step=3"), "'num_step'", "'train'")
  assert "did you mean 'num_steps'" in line


@pytest.mark.parametrize(
  "override, words",
  [
    ("--config.train.num_steps=abc", ("train.num_steps", "an integer", "'abc'")),
    ("--config.optim.learning_rate=fast", ("optim.learning_rate", "a number", "'fast'")),
    ("--config.train.ema_warmup=maybe", ("train.ema_warmup", "true or false", "'maybe'")),
  ],
)
def test_wrong_value_type_is_one_sentence(tmp_path, override, words):
  result = _cli(tmp_path, override)
  _the_error(result, *words)
  assert result.stderr.strip().count("\n") == 0, result.stderr  # no "Pass --helpfull" either


def test_user_error_in_main_is_printed_once(tmp_path):
  # Raised inside main() (after flag parsing): sampling before any training.
  result = _cli(tmp_path, "--mode=sample")
  _the_error(result, "no checkpoint")


def _run_python(code, *args):
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code), *args],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ),
  )


def test_building_digits_shows_one_line_of_ours_and_no_tfds_noise(tmp_path):
  # open_source is what the CLI's input pipeline calls: it builds `digits` on first use; reading
  # an element decodes an image, where tfds warns about OpenCV.
  code = """
    import sys
    from jaxdiff.data import open_source

    source = open_source("digits", "train", sys.argv[1])
    assert source[0]["image"].shape == (16, 16, 1)
    print("--- second call")
    open_source("digits", "test", sys.argv[1])[0]
  """
  result = _run_python(code, str(tmp_path / "data"))
  assert result.returncode == 0, result.stderr
  first, second = result.stdout.split("--- second call")
  for stream in (result.stdout, result.stderr):
    assert "OpenCV" not in stream
    assert CURSOR_UP not in stream and "\r" not in stream  # no progress bars
    assert "Downloading and preparing" not in stream and "Subsequent calls" not in stream
    assert "dataset_info.json" not in stream
  assert first.count("Preparing the digits dataset") == 1, result.stdout
  assert str(tmp_path / "data") in first
  assert second.strip() == "", result.stdout  # already prepared: nothing to say


def test_quiet_build_restores_tfds_progress_bars(tmp_path):
  code = """
    import sys
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils
    from jaxdiff.data import ensure_digits_prepared

    for setting in (True, False):
      tfds.display_progress_bar(setting)
      ensure_digits_prepared(sys.argv[1])
      assert tqdm_utils._active is setting
  """
  result = _run_python(code, str(tmp_path / "data"))
  assert result.returncode == 0, result.stderr
