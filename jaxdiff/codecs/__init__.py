"""Codecs between data space (images in [-1, 1]) and diffusion space (what the network models).

Training encodes each batch before the objective sees it; sampling decodes the sampler's output
before images are written or scored; a pixel-space run uses the identity, a latent diffusion run
the autoencoder (codecs/autoencoder.py). A new codec is a module with a `Codec` builder plus one
entry in `CODECS`.

A codec's functions are pure: `encode(params, images, key)` and `decode(params, latents)`, with
its frozen parameters passed explicitly into the jitted programs (an autoencoder's weights would
otherwise be baked into every program as constants), `params` being None for the identity.

`shape(config)` is the diffusion space's shape without building the codec where building would
read weights: a codec whose builder loads any has an entry in `SHAPES` that reads only what the
shape needs (the autoencoder's config file); the others are built.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from jaxdiff.codecs import autoencoder
from jaxdiff.codecs.base import Codec, CodecShape, identity


def _identity(config: ml_collections.ConfigDict) -> Codec:
  if config.autoencoder.path:
    raise ValueError(
      "autoencoder.path is set but codec.name='identity' diffuses pixels: set "
      "--config.codec.name=autoencoder for latent diffusion, or clear autoencoder.path."
    )
  if config.autoencoder.downsampling_factor or config.autoencoder.latent_channels:
    raise ValueError(
      "autoencoder.downsampling_factor and autoencoder.latent_channels describe an autoencoder's "
      "latents but codec.name='identity' diffuses pixels: set --config.codec.name=autoencoder, or "
      "set both to 0."
    )
  if config.autoencoder.cache:
    raise ValueError(
      "autoencoder.cache caches an autoencoder's latents but codec.name='identity' diffuses "
      "pixels: set --config.codec.name=autoencoder, or clear autoencoder.cache."
    )
  return identity()


CODECS: dict[str, Callable[[ml_collections.ConfigDict], Codec]] = {
  "identity": _identity,
  "autoencoder": autoencoder.build,  # latent diffusion on a frozen KL-autoencoder's latents
}


# codecs whose builder loads weights: their shape from the config (and config files) alone
SHAPES: dict[str, Callable[[ml_collections.ConfigDict], CodecShape]] = {
  "autoencoder": autoencoder.shape,
}


def build(config: ml_collections.ConfigDict) -> Codec:
  """The codec `config.codec.name` names, built (and its parameters loaded) from the config."""
  name = config.codec.name
  if name not in CODECS:
    raise ValueError(f"codec.name must be one of {list(CODECS)}, got {name!r}.")
  return CODECS[name](config)


def shape(config: ml_collections.ConfigDict) -> CodecShape:
  """The shape of the codec `config.codec.name` names, reading no weights (`SHAPES`)."""
  name = config.codec.name
  if name in SHAPES:
    return SHAPES[name](config)
  return CodecShape(build(config).latent_shape)


__all__ = ["CODECS", "SHAPES", "Codec", "CodecShape", "build", "identity", "shape"]
