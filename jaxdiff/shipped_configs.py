"""The configs jaxdiff ships, and which file a --config= value names.

The files of the repository's top-level configs/ folder install as the package jaxdiff.configs
(pyproject.toml maps it), so a wheel install has them too. --config= takes a config file's path,
a shipped config's bare name (`digits`), or `configs/NAME.py` from a folder that holds no such
file (README's commands, run outside a clone), which also means the shipped config NAME.
"""

import difflib
import importlib.util
import pathlib


def folder() -> pathlib.Path | None:
  """The folder of the shipped configs: the package jaxdiff.configs where jaxdiff is installed
  from a wheel, else the configs/ folder beside jaxdiff/ (a clone, installed editable or not).

  configs/ has no __init__.py (tests/test_configs.py takes every configs/*.py for a config), so
  jaxdiff.configs is a namespace package: a wheel's jaxdiff/configs/ imports as one, but an
  editable install's finder does not map a namespace package inside a regular one.
  """
  spec = importlib.util.find_spec("jaxdiff.configs")
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(next(iter(spec.submodule_search_locations)))
  checkout = pathlib.Path(__file__).resolve().parent.parent / "configs"
  return checkout if checkout.is_dir() else None


def names() -> list[str]:
  """The names of the shipped configs (digits, digits_dit, …), sorted."""
  found = folder()
  return sorted(p.stem for p in found.glob("[!_]*.py")) if found is not None else []


def shipped(name: str) -> pathlib.Path | None:
  """The file of the shipped config `name`, or None if jaxdiff ships none of that name."""
  return folder() / f"{name}.py" if name in names() else None


def resolve(value: str) -> str | None:
  """The config file that --config=VALUE reads (VALUE without a `:args` suffix), or None.

  VALUE itself when it is a file (a user's config, or configs/X.py in a clone); else the shipped
  config that a bare name (`digits`) or a `configs/NAME.py` that is not here names; else VALUE if
  it exists (a folder, which the caller refuses) and None if it names nothing.
  """
  path = pathlib.PurePath(value)
  if pathlib.Path(value).is_file():
    return value
  if value and "/" not in value and "\\" not in value and path.suffix != ".py":
    name = value  # a bare name
  elif len(path.parts) == 2 and path.parts[0] == "configs" and path.suffix == ".py":
    name = path.stem  # configs/NAME.py outside a clone
  else:
    name = None
  found = shipped(name) if name is not None else None
  if found is not None:
    return str(found)
  return value if pathlib.Path(value).exists() else None


def not_found(value: str) -> str:
  """One sentence: VALUE names neither a config file nor a shipped config, and which ones exist."""
  stem = pathlib.PurePath(value).stem
  close = difflib.get_close_matches(stem, names(), n=1)
  hint = f" (did you mean '{close[0]}'?)" if close else ""
  listed = ", ".join(names()) or "none here"
  return (
    f"'{value}' does not exist as a config file and is not a config jaxdiff ships{hint}; "
    f"the shipped configs, named like --config=digits, are: {listed}"
  )
