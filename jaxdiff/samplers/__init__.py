"""Samplers: each runs its whole loop as one `lax.scan`, given `model_fn(x, t) -> prediction`.

`SAMPLERS` (jaxdiff/samplers/table.py) maps the names `sample.sampler` accepts to them.
"""

from jaxdiff.samplers.consistency import consistency
from jaxdiff.samplers.ddim import ddim, ddim_timesteps
from jaxdiff.samplers.ddpm import ddpm
from jaxdiff.samplers.dpm_solver import dpm_solver
from jaxdiff.samplers.flow import flow_euler, flow_heun
from jaxdiff.samplers.karras import euler, euler_ancestral, heun
from jaxdiff.samplers.table import OPTIONS, SAMPLERS
from jaxdiff.samplers.unipc import unipc

__all__ = [
  "OPTIONS",
  "SAMPLERS",
  "consistency",
  "ddim",
  "ddim_timesteps",
  "ddpm",
  "dpm_solver",
  "euler",
  "euler_ancestral",
  "flow_euler",
  "flow_heun",
  "heun",
  "unipc",
]
