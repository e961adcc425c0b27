"""Flax NNX networks and the table that builds them from a run's `model` section."""

from jaxdiff.models.autoencoder import AutoencoderConfig, AutoencoderKL
from jaxdiff.models.dit import DiT, DiTConfig
from jaxdiff.models.table import (
  ARCHITECTURES,
  NetworkSpec,
  abstract,
  abstract_unet,
  architecture,
  build,
  parameter_count,
)
from jaxdiff.models.unet import UNet, UNetConfig

__all__ = [
  "ARCHITECTURES",
  "AutoencoderConfig",
  "AutoencoderKL",
  "DiT",
  "DiTConfig",
  "NetworkSpec",
  "UNet",
  "UNetConfig",
  "abstract",
  "abstract_unet",
  "architecture",
  "build",
  "parameter_count",
]
