"""Flax NNX networks and the table that builds them from a run's `model` section."""

from jaxdiff.models.table import (
  ARCHITECTURES,
  NetworkSpec,
  abstract,
  abstract_unet,
  build,
  parameter_count,
)
from jaxdiff.models.unet import UNet, UNetConfig

__all__ = [
  "ARCHITECTURES",
  "NetworkSpec",
  "UNet",
  "UNetConfig",
  "abstract",
  "abstract_unet",
  "build",
  "parameter_count",
]
