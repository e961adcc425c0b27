"""Samplers: each runs its whole loop as one `lax.scan`, given `model_fn(x, t) -> prediction`."""

from jaxdiff.samplers.ddim import ddim, ddim_timesteps
from jaxdiff.samplers.ddpm import ddpm

__all__ = ["ddim", "ddim_timesteps", "ddpm"]
