"""jaxdiff: diffusion models in JAX."""

from jaxdiff import xla_flags

xla_flags.apply_defaults()  # before anything creates a JAX backend; see jaxdiff/xla_flags.py

from jaxdiff import diffusion, guidance, samplers, schedules

__version__ = "0.1.0"
__all__ = ["diffusion", "guidance", "samplers", "schedules"]
