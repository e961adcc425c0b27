"""Samplers: each runs its whole loop as one `lax.scan`, given `model_fn(x, t) -> prediction`.

`SAMPLERS` (jaxdiff/samplers/table.py) maps the names `sample.sampler` accepts to them.
"""

from jaxdiff.samplers.ddim import ddim, ddim_timesteps
from jaxdiff.samplers.ddpm import ddpm
from jaxdiff.samplers.table import OPTIONS, SAMPLERS

__all__ = ["OPTIONS", "SAMPLERS", "ddim", "ddim_timesteps", "ddpm"]
