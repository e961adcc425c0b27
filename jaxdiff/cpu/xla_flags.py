"""XLA:CPU flags that make jaxdiff's programs faster on CPUs (`jaxdiff.cpu.apply_xla_flags`).

In jaxlib 0.10, XLA:CPU hands dots, convolutions, reductions and some elementwise ops to YNNPACK by
default. On the 2-core CI machine YNNPACK's convolutions and reductions were much slower than
XLA's own kernels for diffusion U-Nets (small channel counts, group norm), while its dots were
faster. `--xla_cpu_experimental_ynn_fusion_type=individual_dot` replaces that default list by the
dots alone: one training step of the 1.6M-parameter U-Net became 1.7x faster and DDIM sampling
1.9x faster (benchmarks/RESULTS.md has the A/B of each fusion type). Outputs and gradients agree
with the default to ~2e-6 relative, float32 reassociation (tests/test_xla_flags.py).

The flags only affect the CPU backend and must be in XLA_FLAGS before JAX creates it. Nothing adds
them at import: `jaxdiff.cpu.apply_xla_flags()` does, called by the command line
(`python -m jaxdiff.main`), tests/conftest.py and the benchmarks. It leaves XLA_FLAGS alone when:
  - JAXDIFF_DEFAULT_XLA_FLAGS=0 is set (read by jaxdiff.cpu);
  - XLA_FLAGS already names the flag (the user's value wins);
  - JAX's backends already exist (too late; nothing would change, so it warns);
  - the installed jaxlib is not a version the flag was checked with (an unknown flag in XLA_FLAGS
    aborts the process, and this one is experimental).
"""

from __future__ import annotations

import os
import re
import warnings

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_DEFAULTS = (f"{YNN_FUSION_FLAG}=individual_dot",)
# jaxlib versions [from, to) whose XLA:CPU has the flag and was measured with it.
CHECKED_JAXLIB = ((0, 10, 2), (0, 11, 0))


def _jaxlib_version() -> tuple[int, ...]:
  from jaxlib import version

  return tuple(int(re.match(r"\d+", part)[0]) for part in version.__version__.split(".")[:3])


def jaxlib_checked() -> bool:
  low, high = CHECKED_JAXLIB
  return low <= _jaxlib_version() < high


def _backends_initialized() -> bool:
  from jax._src import xla_bridge

  return bool(getattr(xla_bridge, "_backends", None))


def flags_to_add(environ=os.environ) -> list[str]:
  """The CPU_DEFAULTS whose flag environ["XLA_FLAGS"] does not name; none on an unchecked jaxlib."""
  if not jaxlib_checked():
    return []
  present = {f.split("=", 1)[0] for f in environ.get("XLA_FLAGS", "").split()}
  return [f for f in CPU_DEFAULTS if f.split("=", 1)[0] not in present]


def add(environ=os.environ) -> list[str]:
  """Appends `flags_to_add` to environ["XLA_FLAGS"]; the flags it added.

  Adds nothing, with a warning, once JAX's backends exist: XLA has read XLA_FLAGS by then, and a
  silent no-op would leave a notebook user measuring without the flag."""
  added = flags_to_add(environ)
  if added and _backends_initialized():
    warnings.warn(
      f"jaxdiff.cpu.apply_xla_flags: JAX's backend already exists, so {' '.join(added)} would "
      "not take effect; call it before the first JAX computation (e.g. first cell of a notebook).",
      stacklevel=3,
    )
    return []
  if added:
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", ""), *added]).strip()
  return added
