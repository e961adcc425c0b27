"""Codecs between data space (images in [-1, 1]) and diffusion space (what the network models).

Training encodes each batch before the objective sees it; sampling decodes the sampler's output
before images are written or scored; a pixel-space run uses the identity, a latent diffusion run
the autoencoder (codecs/autoencoder.py). A new codec is a module with a `Codec` builder plus one
entry in `CODECS`.

A codec's functions are pure: `encode(params, images, key)` and `decode(params, latents)`, with
its frozen parameters passed explicitly into the jitted programs (an autoencoder's weights would
otherwise be baked into every program as constants), `params` being None for the identity.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from jaxdiff.codecs import autoencoder
from jaxdiff.codecs.base import Codec, identity


def _identity(config: ml_collections.ConfigDict) -> Codec:
  if config.autoencoder.path:
    raise ValueError(
      "autoencoder.path is set but codec.name='identity' diffuses pixels: set "
      "--config.codec.name=autoencoder for latent diffusion, or clear autoencoder.path."
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


def build(config: ml_collections.ConfigDict) -> Codec:
  """The codec `config.codec.name` names, built (and its parameters loaded) from the config."""
  name = config.codec.name
  if name not in CODECS:
    raise ValueError(f"codec.name must be one of {list(CODECS)}, got {name!r}.")
  return CODECS[name](config)


__all__ = ["CODECS", "Codec", "build", "identity"]
