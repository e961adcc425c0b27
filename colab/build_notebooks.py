"""Builds colab/NN_name.ipynb from colab/src/NN_name.py, the notebooks' reviewable source.

    python colab/build_notebooks.py            # rewrite every notebook that has a source
    python colab/build_notebooks.py --check    # exit 1 if a committed notebook differs

A source is Python in the "percent" format: `# %% [markdown]` starts a prose cell (its lines
lose their leading "# "), `# %%` a code cell, `# %% [parameters]` the papermill parameters
cell (the first code cell; it must set QUICK = False), and `# %% [install]` stands for the
install cell every notebook shares (INSTALL below). Comments before the first marker (the
`# ruff: noqa: F821` that the install cell's names need) are not copied. The first markdown cell's title line gets
the "Open in Colab" badge. Notebooks are written without outputs; tests/test_notebooks.py checks
that the committed ones equal this script's output and executes them with QUICK = True.

A notebook written by hand (no source here) is fine too: the tests only ask it to follow the
same rules (badge, parameters cell, no outputs).
"""

from __future__ import annotations

import pathlib
import sys

import nbformat

# The GitHub account (or organisation) that hosts jaxdiff: the badges and the install cell name
# it. Change it here and rerun this script; README.md's "Notebooks" section says the same.
OWNER = "OWNER"
REPOSITORY = f"https://github.com/{OWNER}/jaxdiff"
COLAB = pathlib.Path(__file__).resolve().parent
SOURCES = COLAB / "src"


def badge_url(name: str) -> str:
  """The Colab link of colab/<name> on the main branch."""
  return f"https://colab.research.google.com/github/{OWNER}/jaxdiff/blob/main/colab/{name}"


def badge(name: str) -> str:
  image = "https://colab.research.google.com/assets/colab-badge.svg"
  return f"[![Open In Colab]({image})]({badge_url(name)})"


INSTALL = f'''\
# Where jaxdiff comes from: a git URL (a fork works too). Opened in Colab, this cell clones it and
# installs it; run inside a checkout of jaxdiff (as CI does), it uses that checkout instead, and
# where jaxdiff is installed already (a wheel) and no checkout is around, that installation.
JAXDIFF_SOURCE = "{REPOSITORY}"

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys


def is_checkout(path):
  return (path / "jaxdiff" / "__init__.py").is_file() and (path / "configs" / "digits.py").is_file()


here = pathlib.Path.cwd()
ROOT = next((p for p in (here, *here.parents, here / "jaxdiff-src") if is_checkout(p)), None)
if ROOT is None and importlib.util.find_spec("jaxdiff") is None:
  ROOT = here / "jaxdiff-src"
  subprocess.run(["git", "clone", "--depth=1", JAXDIFF_SOURCE, str(ROOT)], check=True)
if importlib.util.find_spec("jaxdiff") is None:
  extras = [] if importlib.util.find_spec("matplotlib") else ["matplotlib"]
  if os.path.exists("/dev/accel0") or "TPU_ACCELERATOR_TYPE" in os.environ:
    extras.append("jax[tpu]")  # a TPU VM runtime
  elif shutil.which("nvidia-smi"):
    extras.append("jax[cuda12]")  # a GPU runtime
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(ROOT), *extras], check=True)
  sys.path.insert(0, str(ROOT))  # an editable install is seen by new processes only

from jaxdiff import cpu

cpu.apply_xla_flags()  # jaxdiff's XLA:CPU flag, before the first JAX computation (GPUs/TPUs ignore it)
import jax


def load_config(name):
  """The shipped config <name> (configs/<name>.py), as --config=<name> reads it."""
  from jaxdiff import shipped_configs
  from jaxdiff.config import load_file

  path = shipped_configs.resolve(name)
  if path is None:
    raise ValueError(shipped_configs.not_found(name))
  return load_file(path)


def jaxdiff_main(*flags, interrupt_when=None):
  """Runs `python -m jaxdiff.main FLAGS` in the checkout (elsewhere, --config=configs/X.py is the
  installed jaxdiff's shipped X) and shows its output as it comes; once
  `interrupt_when()` is true the process gets SIGTERM, what a preempted machine sends. Returns
  the exit code."""
  import select
  import signal

  print("$ python -m jaxdiff.main", *flags, flush=True)
  command = [sys.executable, "-m", "jaxdiff.main", *flags]
  cwd = ROOT or here
  proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  interrupted = False
  while True:
    if select.select([proc.stdout], [], [], 1.0)[0]:
      chunk = os.read(proc.stdout.fileno(), 1 << 16)
      if not chunk:
        break
      print(chunk.decode(errors="replace"), end="", flush=True)
    if interrupt_when is not None and not interrupted and interrupt_when():
      print("\\n>>> sending SIGTERM", flush=True)
      proc.send_signal(signal.SIGTERM)
      interrupted = True
  return proc.wait()


where = ROOT or pathlib.Path(cpu.__file__).parent.parent  # the checkout, or the installed package
print("jaxdiff from", where, "| JAX", jax.__version__, "|", jax.devices())'''


def _cells(source: str):
  """(kind, text) of each cell of a percent-format source; kind is markdown/code/parameters/install."""
  cells, kind, lines = [], None, []
  for line in source.splitlines():
    if line.startswith("# %%"):
      if kind is not None:
        cells.append((kind, lines))
      marker = line[4:].strip()
      kind = {"": "code", "[markdown]": "markdown", "[parameters]": "parameters"}.get(marker)
      if marker == "[install]":
        kind = "install"
      if kind is None:
        raise ValueError(f"unknown cell marker {line!r}")
      lines = []
    elif kind is None:
      if line.strip() and not line.startswith("#"):  # comments there (a ruff directive) are dropped
        raise ValueError(f"code before the first cell marker: {line!r}")
    else:
      lines.append(line)
  if kind is not None:
    cells.append((kind, lines))
  out = []
  for kind, body in cells:
    if kind == "markdown":
      body = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body]
    out.append((kind, "\n".join(body).strip("\n")))
  return out


def build(source_path: pathlib.Path) -> nbformat.NotebookNode:
  name = source_path.with_suffix(".ipynb").name
  nb = nbformat.v4.new_notebook()
  nb.metadata = {
    "colab": {"provenance": [], "toc_visible": True},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
  }
  titled = False
  for i, (kind, text) in enumerate(_cells(source_path.read_text())):
    cell_id = f"c{i:02d}"
    if kind == "markdown":
      if not titled:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{badge(name)}\n{rest}".rstrip("\n")
        titled = True
      cell = nbformat.v4.new_markdown_cell(text, id=cell_id)
    else:
      cell = nbformat.v4.new_code_cell(INSTALL if kind == "install" else text, id=cell_id)
      if kind == "parameters":
        cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
  nbformat.validate(nb)
  return nb


def render(source_path: pathlib.Path) -> str:
  """The notebook's file contents, as written."""
  return nbformat.writes(build(source_path)) + "\n"


def targets() -> dict[pathlib.Path, str]:
  return {COLAB / s.with_suffix(".ipynb").name: render(s) for s in sorted(SOURCES.glob("*.py"))}


def main(argv) -> int:
  stale = [p for p, text in targets().items() if not p.exists() or p.read_text() != text]
  if "--check" in argv:
    for path in stale:
      print(f"{path} differs from its source: run python colab/build_notebooks.py")
    return 1 if stale else 0
  for path, text in targets().items():
    if path in stale:
      path.write_text(text)
      print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
