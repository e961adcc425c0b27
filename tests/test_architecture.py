"""Imports go one way (ARCHITECTURE.md): each module of jaxdiff imports only from its own layer or
the layers below it, and no module outside a table dispatches on the names that table holds."""

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxdiff"
# The shipped configs: the top-level configs/ folder, installed as jaxdiff.configs (pyproject.toml).
CONFIGS = PACKAGE.parent / "configs"

# Lowest first. A module may import from its own layer and any earlier one.
LAYERS = [
  ["cpu"],
  [
    "schedules",
    "diffusion",
    "flow",
    "likelihood",
    "likelihood_ode",
    "guidance",
    "importance",
    "preconditioning",
    "samplers",
  ],
  ["models", "objectives", "metrics", "parallel", "checkpoint", "data", "storage"],
  ["config", "shipped_configs", "configs", "state", "convert", "codecs"],
  ["run"],
  ["generate"],
  ["sampling", "evaluation", "describe", "train"],
  ["main"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(path: pathlib.Path) -> str:
  """The top-level module or package under jaxdiff/ that a file belongs to."""
  if path.parent == CONFIGS:
    return "configs"
  return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _name(path: pathlib.Path) -> str:
  return str(path.relative_to(PACKAGE if _unit(path) != "configs" else PACKAGE.parent))


def _imported_units(path: pathlib.Path) -> set[str]:
  units = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxdiff"):
      parts = node.module.split(".")
      if len(parts) > 1:
        units.add(parts[1])
      else:  # from jaxdiff import a, b
        units.update(alias.name for alias in node.names)
    elif isinstance(node, ast.Import):
      units.update(a.name.split(".")[1] for a in node.names if a.name.startswith("jaxdiff."))
  return units


FILES = sorted(
  [p for p in PACKAGE.rglob("*.py") if _unit(p) not in ("__init__", "__main__")]
  + list(CONFIGS.glob("*.py"))
)


def test_every_unit_has_a_layer():
  assert {_unit(p) for p in FILES} <= set(LAYER)


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_imports_point_down(path):
  unit = _unit(path)
  above = sorted(u for u in _imported_units(path) if u in LAYER and LAYER[u] > LAYER[unit])
  assert not above, f"{_name(path)} imports {above} from a layer above {unit!r}"


def test_no_dispatch_on_table_names_outside_the_tables():
  # `config.model.arch == "unet"`, `sampler == "ddim"`, `loss == "hybrid"` and the like
  pattern = re.compile(r"\b(arch|sampler|loss|codec\.name)\s*(==|!=|in)\s*[\"'(]")
  offenders = [
    f"{_name(p)}:{i}"
    for p in FILES
    for i, line in enumerate(p.read_text().splitlines(), 1)
    if pattern.search(line)
  ]
  assert not offenders
