"""Flax NNX models."""

from jaxdiff.models.unet import UNet, abstract_unet

__all__ = ["UNet", "abstract_unet"]
