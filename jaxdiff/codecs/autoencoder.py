"""The autoencoder codec (`codec.name='autoencoder'`): latent diffusion (Rombach et al. 2022).

Training encodes each batch with the frozen autoencoder named by `autoencoder.path` — a jaxdiff
autoencoder workdir (its newest checkpoint's EMA weights) or a folder written by
`python -m jaxdiff.convert diffusers-vae` — drawing z ~ q(z|x) (or its mean), and the network
diffuses latents = (z − shift)·scale; sampling decodes z = latents/scale + shift.

The scale makes the latents roughly unit-variance, as the schedules assume. `autoencoder.scale_factor`
> 0 is used as given; unset takes the autoencoder's own (a converted Stable Diffusion VAE carries its
0.18215), and for an autoencoder without one, 1/std of the training latents, measured once when
the run is built (`Codec.calibrate`) and stored with the run (`Codec.info` → workdir/codec.json).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff import models
from jaxdiff.checkpoint import read_latest
from jaxdiff.codecs.base import Codec
from jaxdiff.convert.converted import CONFIG_FILE, load_converted
from jaxdiff.models.autoencoder import AutoencoderKL, sample_posterior

HINT = (
  "train one (configs/digits_vae.py) or convert one (python -m jaxdiff.convert diffusers-vae) and "
  "pass its folder as --config.autoencoder.path"
)


def load_autoencoder(path) -> AutoencoderKL:
  """The autoencoder in `path`: a converted folder or a jaxdiff autoencoder workdir (EMA weights).
  ValueError, one sentence, for anything else."""
  folder = pathlib.Path(path).expanduser()
  if not str(path) or not folder.is_dir():
    raise ValueError(f"autoencoder.path {str(path)!r} is not a folder: {HINT}.")
  if (folder / CONFIG_FILE).is_file():
    model = load_converted(folder)
  elif (folder / "config.json").is_file() and (folder / "checkpoints").is_dir():
    model = _from_workdir(folder)
  else:
    raise ValueError(
      f"{folder} is neither a jaxdiff workdir (config.json + checkpoints/) nor a converted "
      f"network folder ({CONFIG_FILE}): {HINT}."
    )
  if not isinstance(model, AutoencoderKL):
    raise ValueError(f"{folder} holds a {type(model).__name__}, not an autoencoder: {HINT}.")
  return model


def _from_workdir(folder: pathlib.Path) -> AutoencoderKL:
  config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text()))
  network = models.ARCHITECTURES.get(config.model.arch)
  if network is None or network.module is not AutoencoderKL:
    # a diffusion workdir by mistake: say so rather than failing on a parameter mismatch
    raise ValueError(f"{folder} is a {config.model.arch!r} run, not an autoencoder: {HINT}.")
  spec = models.NetworkSpec(in_channels=config.data.channels, image_size=config.data.image_size)
  model = models.abstract(config.model, spec)
  read = read_latest(folder / "checkpoints", {"ema_params": nnx.state(model, nnx.Param)})
  if read is None:
    raise ValueError(f"{folder} has no checkpoint yet: train the autoencoder first.")
  nnx.update(model, read[1]["ema_params"])
  return model


def fingerprint(params) -> str:
  """A short hash of an autoencoder's parameters: which autoencoder a run's latents came from."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return digest.hexdigest()[:16]


def build(config: ml_collections.ConfigDict) -> Codec:
  """The codec of `config.autoencoder`; uncalibrated (`calibrate` set) when its scale is measured."""
  a = config.autoencoder
  if a.scale_factor is not None and not a.scale_factor > 0:
    raise ValueError(
      f"autoencoder.scale_factor must be > 0 (or unset: automatic), got {a.scale_factor}."
    )
  model = load_autoencoder(a.path)
  # the parameters travel as an argument of the jitted programs; the rest (RNG streams the encoder
  # and decoder never draw from) is merged back as it is
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  f, latent_channels = model.downsampling_factor, model.latent_channels
  in_channels = model.encoder.conv_in.in_features
  shift = model.shift_factor
  info = {"autoencoder": str(a.path), "fingerprint": fingerprint(params), "shift_factor": shift}

  def latent_shape(size, channels):
    if channels != in_channels or size % f:
      raise ValueError(
        f"the autoencoder in {a.path} takes {in_channels}-channel images whose size is a multiple "
        f"of {f}, and the data are {size}×{size}×{channels}: use a matching autoencoder."
      )
    return size // f, latent_channels

  def moments(params, images):
    mean, logvar = nnx.merge(graphdef, params, rest).encode(images)
    return jnp.concatenate([mean, logvar], axis=-1)

  def with_scale(scale: float) -> Codec:
    def from_moments(moments, key):
      mean, logvar = jnp.split(moments, 2, axis=-1)
      z = mean
      if a.sample_posterior:
        z = sample_posterior(mean, logvar, jax.random.normal(key, mean.shape, jnp.float32))
      return (z - shift) * scale

    def encode(params, images, key):
      return from_moments(moments(params, images), key)

    def decode(params, latents):
      images = nnx.merge(graphdef, params, rest).decode(latents / scale + shift)
      return jnp.clip(images, -1.0, 1.0)

    return Codec(
      encode=encode,
      decode=decode,
      latent_shape=latent_shape,
      pixel_space=False,
      params=params,
      info={**info, "scale_factor": float(scale)},
      moments=moments,
      from_moments=from_moments,
    )

  scale = a.scale_factor or (model.scaling_factor if model.scaling_factor != 1.0 else None)
  if scale:
    return with_scale(scale)

  def calibrate(images) -> Codec:
    """The codec with scale 1/std of the latents of `images` (a batch of training images)."""
    unscaled = with_scale(1.0)
    latents = jax.jit(unscaled.encode)(params, jnp.asarray(images), jax.random.key(0))
    return with_scale(float(1.0 / np.std(np.asarray(latents, np.float64))))

  return Codec(
    encode=None,
    decode=None,
    latent_shape=latent_shape,
    pixel_space=False,
    params=params,
    calibrate=calibrate,
    moments=moments,
  )
