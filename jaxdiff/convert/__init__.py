"""Weight import from other formats into jaxdiff models."""

from jaxdiff.convert.converted import folder_prediction, load_converted
from jaxdiff.convert.diffusers_dit import (
  convert_diffusers_dit,
  dit_kwargs_from_diffusers_config,
  load_diffusers_dit,
)
from jaxdiff.convert.diffusers_unet import (
  convert_diffusers_unet,
  load_diffusers_unet,
  unet_kwargs_from_diffusers_config,
)
from jaxdiff.convert.diffusers_vae import (
  convert_diffusers_vae,
  load_diffusers_vae,
  vae_kwargs_from_diffusers_config,
)
from jaxdiff.convert.dit import (
  convert_dit_checkpoint,
  dit_from_state_dict,
  dit_kwargs_from_state_dict,
  load_dit_checkpoint,
)
from jaxdiff.convert.lpips import convert_lpips

__all__ = [
  "convert_diffusers_dit",
  "convert_diffusers_unet",
  "convert_diffusers_vae",
  "convert_dit_checkpoint",
  "convert_lpips",
  "dit_from_state_dict",
  "dit_kwargs_from_diffusers_config",
  "dit_kwargs_from_state_dict",
  "folder_prediction",
  "load_converted",
  "load_diffusers_dit",
  "load_diffusers_unet",
  "load_diffusers_vae",
  "load_dit_checkpoint",
  "unet_kwargs_from_diffusers_config",
  "vae_kwargs_from_diffusers_config",
]
