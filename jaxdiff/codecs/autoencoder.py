"""The autoencoder codec (`codec.name='autoencoder'`): latent diffusion (Rombach et al. 2022).

Training encodes each batch with the frozen autoencoder named by `autoencoder.path` — a jaxdiff
autoencoder workdir (its newest checkpoint's EMA weights) or a folder written by
`python -m jaxdiff.convert diffusers-vae` — drawing z ~ q(z|x) (or its mean), and the network
diffuses latents = (z − shift)·scale; sampling decodes z = latents/scale + shift.

The scale makes the latents roughly unit-variance, as the schedules assume. `autoencoder.scale_factor`
> 0 is used as given; unset takes the autoencoder's own (a converted Stable Diffusion VAE carries its
0.18215), and for an autoencoder without one, 1/std of the training latents, measured once when
the run is built (`Codec.calibrate`) and stored with the run (`Codec.info` → workdir/codec.json).

The latent shape alone (`shape`, for `--mode=describe`) needs no weights: it is read from the
folder's network_config.json or the workdir's config.json, or, without `autoencoder.path`, from
`autoencoder.downsampling_factor` and `autoencoder.latent_channels`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from jaxdiff import models, storage
from jaxdiff.checkpoint import read_latest
from jaxdiff.codecs.base import Codec, CodecShape
from jaxdiff.convert.converted import CONFIG_FILE, load_converted
from jaxdiff.models.autoencoder import AutoencoderKL, sample_posterior

HINT = (
  "train one (configs/digits_vae.py) or convert one (python -m jaxdiff.convert diffusers-vae) and "
  "pass its folder as --config.autoencoder.path"
)


@dataclasses.dataclass(frozen=True)
class Dimensions:
  """What an autoencoder makes of images, without its weights."""

  in_channels: int | None  # None: not known (declared in the config, no autoencoder read)
  downsampling_factor: int
  latent_channels: int


def _folder(path) -> tuple[epath.Path, str]:
  """(folder, 'converted' or 'workdir') of `path`; ValueError, one sentence, for anything else.
  A workdir is its config.json here: `load_autoencoder` needs its checkpoints/ too."""
  if not str(path):
    raise ValueError(f"autoencoder.path {str(path)!r} is not a folder: {HINT}.")
  folder = storage.path(path, what="autoencoder.path")  # a local folder or a bucket URL
  if not folder.is_dir():
    raise ValueError(f"autoencoder.path {str(path)!r} is not a folder: {HINT}.")
  if (folder / CONFIG_FILE).is_file():
    return folder, "converted"
  if (folder / "config.json").is_file():
    return folder, "workdir"
  raise ValueError(
    f"{folder} is neither a jaxdiff workdir (config.json + checkpoints/) nor a converted "
    f"network folder ({CONFIG_FILE}): {HINT}."
  )


def load_autoencoder(path) -> AutoencoderKL:
  """The autoencoder in `path`: a converted folder or a jaxdiff autoencoder workdir (EMA weights).
  ValueError, one sentence, for anything else."""
  folder, kind = _folder(path)
  if kind == "converted":
    model = load_converted(folder)
  elif (folder / "checkpoints").is_dir():
    model = _from_workdir(folder)
  else:
    raise ValueError(
      f"{folder} is neither a jaxdiff workdir (config.json + checkpoints/) nor a converted "
      f"network folder ({CONFIG_FILE}): {HINT}."
    )
  if not isinstance(model, AutoencoderKL):
    raise ValueError(f"{folder} holds a {type(model).__name__}, not an autoencoder: {HINT}.")
  return model


def read_dimensions(path) -> tuple[Dimensions, str]:
  """The dimensions of the autoencoder in `path` from its config file alone (no weights read),
  and that file's path; the same folders and errors as `load_autoencoder`."""
  folder, kind = _folder(path)
  if kind == "converted":
    file = folder / CONFIG_FILE
    kwargs = json.loads(file.read_text())
    arch = kwargs.pop("arch", "unet")
    network = models.ARCHITECTURES.get(arch)
    if network is None or network.module is not AutoencoderKL:
      raise ValueError(f"{folder} holds a {arch!r} network, not an autoencoder: {HINT}.")
    defaults = {
      name: p.default for name, p in inspect.signature(AutoencoderKL.__init__).parameters.items()
    }
    kwargs = {**defaults, **kwargs}
    in_channels, channels, latent = (
      kwargs["in_channels"],
      kwargs["block_out_channels"],
      kwargs["latent_channels"],
    )
  else:
    file = folder / "config.json"
    config = _workdir_config(folder)
    in_channels = config.data.channels
    channels, latent = config.model.block_out_channels, config.model.latent_channels
  return Dimensions(in_channels, 2 ** (len(channels) - 1), latent), str(file)


def _workdir_config(folder: epath.Path) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text()))
  network = models.ARCHITECTURES.get(config.model.arch)
  if network is None or network.module is not AutoencoderKL:
    # a diffusion workdir by mistake: say so rather than failing on a parameter mismatch
    raise ValueError(f"{folder} is a {config.model.arch!r} run, not an autoencoder: {HINT}.")
  return config


def _from_workdir(folder: epath.Path) -> AutoencoderKL:
  config = _workdir_config(folder)
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


def _check_settings(a: ml_collections.ConfigDict) -> None:
  if a.scale_factor is not None and not a.scale_factor > 0:
    raise ValueError(
      f"autoencoder.scale_factor must be > 0 (or unset: automatic), got {a.scale_factor}."
    )
  f = a.downsampling_factor
  if f < 0 or (f and f & (f - 1)):
    raise ValueError(
      f"autoencoder.downsampling_factor must be a power of 2 (or 0: the autoencoder's), got {f}."
    )
  if a.latent_channels < 0:
    raise ValueError(
      f"autoencoder.latent_channels must be ≥ 1 (or 0: the autoencoder's), got {a.latent_channels}."
    )


def _check_declared(a: ml_collections.ConfigDict, dims: Dimensions) -> None:
  """The config's autoencoder.downsampling_factor / latent_channels, where set, against the
  autoencoder's own."""
  for key in ("downsampling_factor", "latent_channels"):
    declared, actual = a[key], getattr(dims, key)
    if declared and declared != actual:
      raise ValueError(
        f"autoencoder.{key}={declared} but the autoencoder in {a.path} has {actual}: set "
        f"autoencoder.{key}={actual} (or 0: read from the autoencoder)."
      )


def _latent_shape(dims: Dimensions, where: str):
  """(image size, channels) -> (latent size, latent channels); ValueError for data the autoencoder
  cannot take."""
  f, in_channels = dims.downsampling_factor, dims.in_channels

  def latent_shape(size, channels):
    if (in_channels is not None and channels != in_channels) or size % f:
      takes = f"{in_channels}-channel images" if in_channels is not None else "images"
      raise ValueError(
        f"the autoencoder {where} takes {takes} whose size is a multiple of {f}, and the data "
        f"are {size}×{size}×{channels}: use a matching autoencoder."
      )
    return size // f, dims.latent_channels

  return latent_shape


def shape(config: ml_collections.ConfigDict) -> CodecShape:
  """The latent shape of `config.autoencoder` without its weights: from the config file of
  `autoencoder.path`, or without a path from autoencoder.downsampling_factor / latent_channels."""
  a = config.autoencoder
  _check_settings(a)
  if a.path:
    dims, file = read_dimensions(a.path)
    _check_declared(a, dims)
    return CodecShape(_latent_shape(dims, f"in {a.path}"), file)
  if not (a.downsampling_factor and a.latent_channels):
    raise ValueError(
      "the latent shape needs the autoencoder: set autoencoder.path to its folder (only its "
      "config file is read) or autoencoder.downsampling_factor and autoencoder.latent_channels "
      "(8 and 4 for Stable Diffusion's VAE)."
    )
  dims = Dimensions(None, a.downsampling_factor, a.latent_channels)
  source = "autoencoder.downsampling_factor and autoencoder.latent_channels"
  return CodecShape(_latent_shape(dims, f"of {source}"), source)


def build(config: ml_collections.ConfigDict) -> Codec:
  """The codec of `config.autoencoder`; uncalibrated (`calibrate` set) when its scale is measured."""
  a = config.autoencoder
  _check_settings(a)
  model = load_autoencoder(a.path)
  # the parameters travel as an argument of the jitted programs; the rest (RNG streams the encoder
  # and decoder never draw from) is merged back as it is
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  dims = Dimensions(
    model.encoder.conv_in.in_features, model.downsampling_factor, model.latent_channels
  )
  _check_declared(a, dims)
  latent_shape = _latent_shape(dims, f"in {a.path}")
  shift = model.shift_factor
  info = {"autoencoder": str(a.path), "fingerprint": fingerprint(params), "shift_factor": shift}

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
