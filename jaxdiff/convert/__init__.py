"""Weight import from other formats into jaxdiff models."""

from jaxdiff.convert.diffusers_unet import (
  convert_diffusers_unet,
  load_converted,
  load_diffusers_unet,
  unet_kwargs_from_diffusers_config,
)

__all__ = [
  "convert_diffusers_unet",
  "load_converted",
  "load_diffusers_unet",
  "unet_kwargs_from_diffusers_config",
]
