"""The documentation is checked like code: the site (mkdocs.yml, docs/) builds in strict mode with
its API reference, pictures and formulas; the Python snippets of its pages run; every config key
a page or the README names exists; the README's links point at files that exist.

Snippets: every ```python block of a page under docs/ runs, the blocks of one page in order in one
namespace (so a page reads as one script), from the repository root. A block that is not meant to
run (it needs downloaded weights, or shows the shape of code rather than code) is preceded by an
HTML comment that starts with `<!-- not run` and says why; the comment is invisible on the site.
A page whose snippets use names it does not define gets them from SETUP below. Pages that only
include a file of the repository (`--8<--`) are not scanned for snippets: those files
(ARCHITECTURE.md's sketches of a table entry) are prose about the code.
"""

import html
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "benchmarks" not in p.relative_to(DOCS).parts)
FENCE = re.compile(r"(<!--(?P<note>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)
# Pages whose snippets are fragments that use names the page does not define (a network function
# and x_T, as in the API tour): what the test defines first, as doctest's globs would. A page that
# defines its names itself needs no entry.
SETUP = {
  "guides/flow_samplers.md": (
    "import jax\n"
    "model_fn = lambda x, t: 0.5 * x  # a velocity network's function in practice\n"
    "x_T = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))\n"
  ),
}
# The files the site includes as pages (--8<-- "FILE"): they are pages too, for their config keys.
INCLUDED = sorted(
  {
    ROOT / name
    for page in PAGES
    for name in re.findall(r'^--8<-- "([^"]+)"', page.read_text(), re.MULTILINE)
  }
)


def _snippets(page: pathlib.Path) -> list[str]:
  """The page's ```python blocks that are meant to run, in order."""
  return [
    m["code"]
    for m in FENCE.finditer(page.read_text())
    if not (m["note"] or "").strip().startswith("not run")
  ]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """The site as `mkdocs build --strict` builds it (strict: a warning fails the build)."""
  out = tmp_path_factory.mktemp("site")
  env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor
  result = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
    cwd=ROOT,
    env=env,
    check=False,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  return out


def test_the_site_builds_strictly_with_the_api_reference(site):
  # every public module named in the issue has its page, rendered from the docstrings
  samplers = (site / "api" / "samplers" / "index.html").read_text()
  for name in ("ddpm.ddpm", "ddim.ddim", "dpm_solver.dpm_solver", "unipc.unipc", "karras.heun"):
    assert f'id="jaxdiff.samplers.{name}"' in samplers
  for module in (
    "schedules",
    "diffusion",
    "likelihood",
    "guidance",
    "preconditioning",
    "objectives",
    "models",
    "codecs",
    "metrics",
    "convert",
    "config",
  ):
    assert f'id="jaxdiff.{module}' in (site / "api" / module / "index.html").read_text()
  # a docstring's subscripts reach the page as written (β̃_{t−1}, not emphasis or attributes:
  # docs/hooks.py), so a docstring renders as its plain text reads
  from jaxdiff.samplers import ddpm

  subscripts = re.findall(r"\S+_\{[^}]*\}\S*", ddpm.__doc__)
  assert subscripts and all(html.escape(s, quote=False) in samplers for s in subscripts)
  assert "<em" not in samplers


def test_the_site_includes_the_repository_files_and_pictures(site):
  # ARCHITECTURE.md and benchmarks/RESULTS.md are pages of the site, not copies of them
  architecture = (site / "architecture" / "index.html").read_text()
  assert "How jaxdiff is put together" in architecture and "--8&lt;--" not in architecture
  results = (site / "benchmarks" / "RESULTS" / "index.html").read_text()
  assert "Benchmark results" in results
  # every picture a page shows is in the site, and formulas are marked up for MathJax
  for page in site.rglob("*.html"):
    for src in re.findall(r'<img[^>]* src="([^"]+)"', page.read_text()):
      if "://" not in src:
        assert (page.parent / src).resolve().is_file(), (page, src)
  samplers = (site / "guides" / "samplers" / "index.html").read_text()
  assert 'class="arithmatex"' in samplers and "sampler_nfe.png" in samplers


@pytest.mark.parametrize(
  "page", [p for p in PAGES if _snippets(p)], ids=lambda p: str(p.relative_to(DOCS))
)
def test_the_python_snippets_of_a_page_run(page, monkeypatch):
  monkeypatch.chdir(ROOT)  # snippets name files as a user in a clone would: tests/data/…
  namespace = {"__name__": "__docs__"}
  name = page.relative_to(DOCS).as_posix()
  exec(SETUP.get(name, ""), namespace)  # noqa: S102 — see SETUP
  for i, code in enumerate(_snippets(page)):
    where = f"{page.relative_to(ROOT)} (python block {i + 1})"
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 — the page's code is under test


def _config_keys() -> set[str]:
  """Every key path of the schema: default_config of each network, and each shipped config."""
  from jaxdiff import config as config_lib
  from jaxdiff.models import table

  def paths(section, prefix=""):
    for key, value in section.items():
      path = prefix + key
      yield path
      if hasattr(value, "items"):
        yield from paths(value, path + ".")

  keys = set()
  for arch in table.ARCHITECTURES:
    keys |= set(paths(config_lib.default_config(arch=arch)))
  for path in (ROOT / "configs").glob("*.py"):
    keys |= set(paths(config_lib.load_file(path)))
  return keys


# What looks like a key but is not one: file names (`codec.json`, `train.py`) and ARCHITECTURE.md's
# placeholder for any key (`--config.x=y`).
FILE_SUFFIXES = {"json", "jsonl", "md", "npz", "png", "pt", "py", "safetensors", "txt", "yml"}
PLACEHOLDERS = {"x"}


def _named_keys(text: str, sections: set[str]) -> set[str]:
  """`--config.a.b` flags, and code spans `a.b` / `a.b=v` whose first part is a config section."""
  named = set(re.findall(r"--(?:no)?config\.([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)", text))
  for span in re.findall(r"`([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?:=[^`]*)?`", text):
    if span.split(".")[0] in sections:
      named.add(span)
  return {k for k in named if k.split(".")[-1] not in FILE_SUFFIXES and k not in PLACEHOLDERS}


def test_every_config_key_the_docs_name_exists():
  from jaxdiff import config as config_lib

  keys = _config_keys()
  sections = {k for k, v in config_lib.default_config().items() if hasattr(v, "items")}
  # benchmarks/RESULTS.md is a record of past runs (it may name a key as it was then): not scanned
  documents = [*PAGES, *INCLUDED, ROOT / "README.md"]
  documents = [d for d in documents if d.name != "RESULTS.md"]
  unknown = {
    f"{d.relative_to(ROOT)}: {key}"
    for d in documents
    for key in _named_keys(d.read_text(), sections)
    if key not in keys
  }
  assert not unknown, sorted(unknown)
  # the check sees the keys it should: a page's flags and code spans
  assert {"sample.gamma", "model.preset", "train.fsdp"} <= _named_keys(
    "`sample.gamma` --config.model.preset=DiT-XL/2 `train.fsdp=8` `jaxdiff.config` `codec.json`",
    sections,
  )


def test_the_readmes_links_point_at_files_that_exist():
  # mkdocs --strict checks the links of the site; the README is read on its own, on GitHub
  readme = (ROOT / "README.md").read_text()
  links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
  missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
  assert links and not missing, missing


def test_the_training_guide_names_every_entry_of_the_tables():
  # the table of what a config chooses lists every network, objective, sampler and codec
  from jaxdiff import config as config_lib

  guide = (DOCS / "guides" / "training.md").read_text()
  choices = config_lib.choices()
  for key in ("model.arch", "diffusion.loss", "sample.sampler", "codec.name"):
    missing = [name for name in choices[key] if f"`{name}`" not in guide]
    assert not missing, (key, missing)


def test_the_readme_and_getting_started_give_the_same_set_up_commands():
  def set_up(text):
    return re.search(r"```bash\n(# 1\. install.*?)```", text, re.DOTALL)[1]

  readme = set_up((ROOT / "README.md").read_text())
  assert "pip install -e . && python -m jaxdiff.main --workdir=workdir/digits" in readme
  assert readme == set_up((DOCS / "getting_started.md").read_text())
