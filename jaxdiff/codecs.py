"""Codecs between data space (images in [-1, 1]) and diffusion space (what the network models).

Training encodes each batch before the objective sees it; sampling decodes the sampler's output
before images are written or scored; a pixel-space run uses the identity. A latent codec (an
autoencoder) is a new module with a `Codec` builder plus one entry in `CODECS`.

A codec's functions are pure: `encode(params, images, key)` and `decode(params, latents)`, with
its frozen parameters passed explicitly into the jitted programs (an autoencoder's weights would
otherwise be baked into every program as constants), `params` being None for the identity.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Codec:
  encode: Callable  # encode(params, images (B, H, W, C) in [-1, 1], key) -> latents
  decode: Callable  # decode(params, latents) -> images in [-1, 1]
  # (image_size, channels) of the data -> (size, channels) of the diffusion space
  latent_shape: Callable[[int, int], tuple[int, int]]
  pixel_space: bool  # latents are the pixels: bits/dim and pixel clipping apply
  params: Any = None


def identity() -> Codec:
  return Codec(
    encode=lambda params, images, key: images,
    decode=lambda params, latents: latents,
    latent_shape=lambda size, channels: (size, channels),
    pixel_space=True,
  )


CODECS: dict[str, Callable[[ml_collections.ConfigDict], Codec]] = {
  "identity": lambda config: identity(),
}


def build(config: ml_collections.ConfigDict) -> Codec:
  """The codec `config.codec.name` names, built (and its parameters loaded) from the config."""
  name = config.codec.name
  if name not in CODECS:
    raise ValueError(f"codec.name must be one of {list(CODECS)}, got {name!r}.")
  return CODECS[name](config)
