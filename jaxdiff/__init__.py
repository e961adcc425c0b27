"""jaxdiff: diffusion models in JAX."""

from jaxdiff import diffusion, guidance, samplers, schedules

__version__ = "0.1.0"
__all__ = ["diffusion", "guidance", "samplers", "schedules"]
