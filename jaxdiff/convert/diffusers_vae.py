"""Import a diffusers `AutoencoderKL` folder (config.json + diffusion_pytorch_model.safetensors).

jaxdiff's `AutoencoderKL` mirrors diffusers' module tree, so each parameter's diffusers name is
derived from its own path exactly as for the U-Net (`diffusers_unet.assign_diffusers_weights`,
which also reads the legacy query/key/value/proj_attn attention names of older checkpoints); only
the layouts change. Reading needs no torch.

The config's `scaling_factor` and `shift_factor` (diffusers' latent normalisation,
(z − shift)·scale; 0.18215 for Stable Diffusion 1/2, 0.13025 for SDXL) become attributes of the
module and keyword arguments in the converted folder, so `load_converted(dst).scaling_factor`
gives them back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp

from jaxdiff.convert.converted import new_output_folder, save_converted
from jaxdiff.convert.diffusers_unet import assign_diffusers_weights, read_diffusers_folder
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.table import abstract_module

# `AutoencoderKL.__init__` defaults (diffusers 0.42): a key missing from config.json takes these,
# as in diffusers itself. Keys outside this table are refused: a newer one could change the network.
_DIFFUSERS_DEFAULTS = {
  "in_channels": 3,
  "out_channels": 3,
  "down_block_types": ("DownEncoderBlock2D",),
  "up_block_types": ("UpDecoderBlock2D",),
  "block_out_channels": (64,),
  "layers_per_block": 1,
  "act_fn": "silu",
  "latent_channels": 4,
  "norm_num_groups": 32,
  "sample_size": 32,  # only sets diffusers' tile size
  "scaling_factor": 0.18215,
  "shift_factor": None,
  "latents_mean": None,
  "latents_std": None,
  "force_upcast": True,  # only about float16 pipelines
  "use_quant_conv": True,
  "use_post_quant_conv": True,
  "mid_block_add_attention": True,
}


def _require(condition: bool, sentence: str) -> None:
  if not condition:
    raise ValueError(sentence)


def vae_kwargs_from_diffusers_config(cfg: Mapping) -> dict:
  """`AutoencoderKL` keyword arguments (JSON-serialisable, without dtype/rngs) equivalent to a
  diffusers `AutoencoderKL` config; ValueError naming the setting for anything jaxdiff's cannot
  express."""
  kind = cfg.get("_class_name", "AutoencoderKL")
  _require(
    kind == "AutoencoderKL",
    f"This is a {kind} folder, not an AutoencoderKL one: pass a diffusers AutoencoderKL folder.",
  )
  unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_DEFAULTS)
  _require(
    not unknown, f"Unsupported AutoencoderKL config keys {unknown}: remove them if irrelevant."
  )
  c = {**_DIFFUSERS_DEFAULTS, **cfg}
  channels = list(c["block_out_channels"])
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  _require(
    down == ["DownEncoderBlock2D"] * len(channels) and up == ["UpDecoderBlock2D"] * len(channels),
    f"Unsupported block types {down} / {up}: one DownEncoderBlock2D and one UpDecoderBlock2D per "
    f"block_out_channels entry are.",
  )
  _require(
    c["act_fn"] in ("silu", "swish"), f"Unsupported act_fn={c['act_fn']!r}: jaxdiff uses silu."
  )
  _require(
    c["mid_block_add_attention"] is True,
    "Unsupported mid_block_add_attention=False: jaxdiff's autoencoder has mid-block attention.",
  )
  # Per-channel statistics would make the latent normalisation more than one scale and shift.
  _require(
    c["latents_mean"] is None and c["latents_std"] is None,
    "Unsupported latents_mean/latents_std: jaxdiff normalises latents by scaling_factor only.",
  )
  return {
    "in_channels": c["in_channels"],
    "out_channels": c["out_channels"],
    "block_out_channels": channels,
    "layers_per_block": c["layers_per_block"],
    "latent_channels": c["latent_channels"],
    "norm_num_groups": c["norm_num_groups"],
    "use_quant_conv": c["use_quant_conv"],
    "use_post_quant_conv": c["use_post_quant_conv"],
    "scaling_factor": c["scaling_factor"],
    "shift_factor": c["shift_factor"] or 0.0,
  }


def _convert_folder(path: str | os.PathLike, *, dtype) -> tuple[dict, AutoencoderKL]:
  kwargs, tensors = read_diffusers_folder(path, "AutoencoderKL", vae_kwargs_from_diffusers_config)
  # Shapes only until the weights arrive: a random init would cost compile time for nothing.
  model = abstract_module(lambda rngs: AutoencoderKL(**kwargs, dtype=dtype, rngs=rngs))
  assign_diffusers_weights(model, tensors)
  return kwargs, model


def load_diffusers_vae(path: str | os.PathLike, *, dtype=jnp.float32) -> AutoencoderKL:
  """jaxdiff's `AutoencoderKL` from a diffusers `AutoencoderKL` folder; its `scaling_factor`
  and `shift_factor` are the folder's."""
  return _convert_folder(path, dtype=dtype)[1]


def convert_diffusers_vae(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Convert the diffusers AutoencoderKL folder `src` into a new jaxdiff folder `dst`, readable
  with `jaxdiff.convert.load_converted(dst)`."""
  new_output_folder(dst)  # refused before the conversion
  kwargs, model = _convert_folder(src, dtype=jnp.float32)
  save_converted(dst, "autoencoder", kwargs, model)
