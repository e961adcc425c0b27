"""A wheel install (not editable) reaches the shipped configs: the wheel holds configs/*.py as
jaxdiff/configs/ (pyproject.toml's package-dir) next to every module of jaxdiff/, and
`python -m jaxdiff.main` run from an empty folder reads --config=digits, --config=configs/X.py and
the default from there. The wheel is built from a copy of the checkout (no build/ or egg-info left
here), unpacked, and put first on PYTHONPATH: the venv gives the dependencies, and the editable
install's finder, which Python asks only after sys.path, cannot shadow it."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# Runs jaxdiff.main as `python -m` does, after saying which jaxdiff it is (on stderr).
AS_MAIN = (
  "import runpy, sys, jaxdiff; print('jaxdiff from', jaxdiff.__file__, file=sys.stderr); "
  "runpy.run_module('jaxdiff.main', run_name='__main__', alter_sys=True)"
)


def _builds_wheels() -> bool:
  """Whether this venv's setuptools builds a wheel without build isolation (70.1+, or `wheel`)."""
  try:
    import setuptools.command.bdist_wheel  # noqa: F401
  except ImportError:
    try:
      import wheel.bdist_wheel  # noqa: F401
    except ImportError:
      return False
  return True


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """(the built wheel, the folder it is unpacked in)."""
  # the test extra asks for setuptools 70.1+: an older one is an install that did not follow
  # the README
  assert _builds_wheels(), "this venv's setuptools cannot build wheels: pip install -e '.[test]'"
  tmp = tmp_path_factory.mktemp("wheel")
  source = tmp / "source"
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
  for name in ("jaxdiff", "configs"):
    shutil.copytree(REPO / name, source / name, ignore=ignore)
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, source / name)
  command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
  result = subprocess.run(
    [*command, "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stdout + result.stderr
  (built,) = (tmp / "dist").glob("jaxdiff-*.whl")
  with zipfile.ZipFile(built) as archive:
    archive.extractall(tmp / "site")
  return built, tmp / "site"


def _from_the_wheel(site, cwd, *flags):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
  result = subprocess.run(
    [sys.executable, "-c", AS_MAIN, *flags],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert f"jaxdiff from {site / 'jaxdiff' / '__init__.py'}" in result.stderr, result.stderr
  return result


def test_the_wheel_holds_jaxdiff_and_the_shipped_configs(wheel):
  built, _ = wheel
  names = set(zipfile.ZipFile(built).namelist())
  configs = {f"jaxdiff/configs/{p.name}" for p in (REPO / "configs").glob("*.py")}
  assert configs and configs <= names
  # pyproject.toml lists jaxdiff's packages by hand: a subpackage left out is missing here
  modules = {
    p.relative_to(REPO).as_posix()
    for p in (REPO / "jaxdiff").rglob("*.py")
    if "__pycache__" not in p.parts
  }
  assert not modules - names


@pytest.mark.parametrize(
  "flag, name, arch",
  [("--config=digits", "digits", "unet"), ("--config=configs/digits_dit.py", "digits_dit", "dit")],
)
def test_the_wheel_describes_a_shipped_config_from_any_folder(wheel, tmp_path, flag, name, arch):
  from flax import nnx

  from jaxdiff import config as config_lib
  from jaxdiff.models import table

  _, site = wheel
  result = _from_the_wheel(site, tmp_path, "--mode=describe", flag)
  assert result.returncode == 0, result.stderr
  *summary, last = result.stdout.strip().splitlines()
  info = json.loads(last)
  # the network of the checkout's config file of that name, counted from shapes here
  config = config_lib.load_file(REPO / "configs" / f"{name}.py")
  spec = table.NetworkSpec(in_channels=1, image_size=16, num_classes=10)
  count = table.parameter_count(nnx.state(table.abstract(config.model, spec), nnx.Param))
  assert info["arch"] == arch and info["trainable_parameters"] == count  # the DiT's + fixed ones
  assert any(f"{info['parameters']:,}" in line for line in summary)
  assert list(tmp_path.iterdir()) == []


def test_the_wheel_defaults_to_the_shipped_digits_config(wheel, tmp_path):
  # config_flags reads the default config before main() asks for a workdir: it loaded
  _, site = wheel
  result = _from_the_wheel(site, tmp_path, "--mode=sample", "--config.train.num_steps=3")
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: --mode=sample needs --workdir")


def test_the_wheel_names_its_configs_for_an_unknown_one(wheel, tmp_path):
  _, site = wheel
  result = _from_the_wheel(site, tmp_path, "--mode=describe", "--config=digitz")
  assert result.returncode == 1, result.stderr
  (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
  assert "'digitz'" in line and "did you mean 'digits'?" in line
  assert "digits_dit" in line and "imagenet64" in line and "Traceback" not in result.stderr
