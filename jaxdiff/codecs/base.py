"""What a codec is to the pipeline, and the identity codec of pixel-space runs."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Codec:
  encode: Callable  # encode(params, images (B, H, W, C) in [-1, 1], key) -> latents
  decode: Callable  # decode(params, latents) -> images in [-1, 1]
  # (image_size, channels) of the data -> (size, channels) of the diffusion space
  latent_shape: Callable[[int, int], tuple[int, int]]
  pixel_space: bool  # latents are the pixels: bits/dim and pixel clipping apply
  params: Any = None
  # what a run must stay consistent with (the autoencoder's fingerprint, the latent scale); the
  # run stores it in its workdir (codec.json) and refuses a codec that differs on resume
  info: dict = dataclasses.field(default_factory=dict)
  # calibrate(images) -> Codec, when the codec needs a batch of training images to be complete
  # (a latent scale measured from the data); encode/decode are None until then
  calibrate: Callable | None = None
  # a codec whose encoder draws from a posterior it can cache (codecs/cache.py):
  # moments(params, images) -> (B, h, w, 2c) parameters of q(z|x) (mean and log-variance), and
  # from_moments(moments, key) -> latents, what encode(params, images, key) returns from them
  moments: Callable | None = None
  from_moments: Callable | None = None


@dataclasses.dataclass(frozen=True)
class CodecShape:
  """A codec's shape alone, for what needs no weights (`--mode=describe`): `latent_shape` as the
  built codec's, and where it came from in words ('' when there is nothing to say)."""

  latent_shape: Callable[[int, int], tuple[int, int]]
  source: str = ""


def identity() -> Codec:
  return Codec(
    encode=lambda params, images, key: images,
    decode=lambda params, latents: latents,
    latent_shape=lambda size, channels: (size, channels),
    pixel_space=True,
  )
