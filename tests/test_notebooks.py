"""The Colab notebooks in colab/: committed clean, built from their sources, and executed.

Every colab/*.ipynb is checked (a new notebook is covered by adding the file):
- committed without outputs or execution counts, with an "Open in Colab" badge pointing at
  itself, and a first code cell tagged `parameters` (papermill's convention) holding QUICK = False;
- equal to what colab/build_notebooks.py makes of its source in colab/src/, when it has one;
- linked from README.md;
- executed top to bottom in a fresh kernel with QUICK = True injected after the parameters cell
  (as papermill does), from colab/ as the working directory, failing on any error. The kernel gets
  this process's environment less the eight fake devices tests/conftest.py adds, so a notebook
  sees what a user's CPU shows, and a temporary folder of its own for its runs.
"""

import os
import pathlib
import re
import sys
import time

import nbformat
import pytest
from conftest import environment_of_one_device
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]

sys.path.insert(0, str(COLAB))
import build_notebooks

# Per cell; a whole notebook with QUICK = True takes one to two minutes on 2 CPU cores.
TIMEOUT_S = 600
# A folder to keep the executed notebooks in, outputs included, for a look at their figures.
OUTPUT_DIR = os.environ.get("JAXDIFF_NOTEBOOK_OUTPUT_DIR")


def _read(path):
  return nbformat.read(path, as_version=4)


def _parameters_cell(nb):
  return next(cell for cell in nb.cells if cell.cell_type == "code")


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 5, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(path):
  nb = _read(path)
  nbformat.validate(nb)
  dirty = [
    i
    for i, cell in enumerate(nb.cells)
    if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
  ]
  assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_cell_and_badge(path):
  nb = _read(path)
  cell = _parameters_cell(nb)
  assert "parameters" in cell.metadata.get("tags", []), "the first code cell must be tagged"
  assert re.search(r"^QUICK = False\b", cell.source, re.MULTILINE), cell.source
  first = nb.cells[0]
  assert first.cell_type == "markdown" and build_notebooks.badge_url(path.name) in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_linked_from_readme(path):
  assert f"(colab/{path.name})" in (ROOT / "README.md").read_text()


def test_notebooks_equal_their_sources():
  targets = build_notebooks.targets()
  assert targets, "colab/src/ has no notebook sources"
  stale = [p.name for p, text in targets.items() if not p.exists() or p.read_text() != text]
  assert not stale, f"{stale} differ from colab/src/: run python colab/build_notebooks.py"


def _kernel_env(tmp_path):
  env = environment_of_one_device()
  env.pop("PYTEST_CURRENT_TEST", None)
  env["TMPDIR"] = str(tmp_path)  # the notebooks' temporary workdirs, cleaned up by pytest
  return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_executes_with_quick(path, tmp_path):
  nb = _read(path)
  index = nb.cells.index(_parameters_cell(nb))
  injected = nbformat.v4.new_code_cell("QUICK = True", id="injected-parameters")
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, injected)
  client = NotebookClient(
    nb,
    timeout=TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(COLAB)}},
  )
  start = time.perf_counter()
  try:
    client.execute(env=_kernel_env(tmp_path))
  finally:
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    if OUTPUT_DIR:
      pathlib.Path(OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
      nbformat.write(nb, pathlib.Path(OUTPUT_DIR) / path.name)
