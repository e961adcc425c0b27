"""The network table: `model.arch` → the network's constructor and its typed config.

A run's `model` section holds the keys every network shares (`COMMON`) and the fields of its
architecture's config dataclass, nothing else: a U-Net config carries no DiT keys and the other
way round (`jaxdiff.config.default_config(arch=...)` builds the section from this table). What a
network sees of the data — channels and size of the diffusion space (after the codec), the number
of classes, whether it outputs a variance, the compute dtype — comes in a `NetworkSpec`.

Adding a network is a new module with its `nnx.Module`, a config dataclass and a
`build(config, spec, rngs)` function, plus one entry in `ARCHITECTURES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.autoencoder import (
  AutoencoderConfig,
  AutoencoderKL,
  build_autoencoder,
  generate_from_prior,
)
from jaxdiff.models.dit import DiT, DiTConfig, build_dit
from jaxdiff.models.gan import GAN, GANConfig, build_gan, generate_from_noise
from jaxdiff.models.unet import UNet, UNetConfig, build_unet


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """What a network is built for: the diffusion space and the conditioning."""

  in_channels: int
  image_size: int
  num_classes: int | None = None  # None: unconditional; else labels 0..K-1 and K the null class
  learn_sigma: bool = False  # the output has twice the channels: the prediction, then a variance
  dtype: Any = jnp.float32  # compute dtype; parameters are float32


@dataclasses.dataclass(frozen=True)
class Architecture:
  module: type  # the nnx.Module class
  config: type  # a dataclass of the architecture's own model.* keys, with their defaults
  build: Callable  # build(config, spec, rngs) -> module
  # a denoiser model(x, t, y) that samplers run; False for a network trained by its own
  # objective (the autoencoder), which must then draw images itself with `generate`
  denoiser: bool = True
  # generate(model, key, batch_size, image_size, labels=None) -> images in [-1, 1]: how a run of a
  # non-denoiser samples (labels: the batch's, for a class-conditional network)
  generate: Callable | None = None


ARCHITECTURES: dict[str, Architecture] = {
  "unet": Architecture(UNet, UNetConfig, build_unet),
  "dit": Architecture(DiT, DiTConfig, build_dit),
  # Not a denoiser: `model(x, key=...) -> (reconstruction, mean, logvar)`, trained by its own
  # objective (diffusion.loss='autoencoder'), sampling by decoding prior draws, and the network
  # of the autoencoder codec.
  "autoencoder": Architecture(
    AutoencoderKL,
    AutoencoderConfig,
    build_autoencoder,
    denoiser=False,
    generate=generate_from_prior,
  ),
  # Not a denoiser either: a generator and its discriminator (`model(z, None, y)` → images,
  # `critic=True` → logits), trained by diffusion.loss='gan', sampling G(z) in one evaluation.
  "gan": Architecture(GAN, GANConfig, build_gan, denoiser=False, generate=generate_from_noise),
}

# model.* keys of every architecture, with their defaults.
COMMON = {
  "arch": "unet",
  "class_conditional": False,
  "class_dropout": 0.1,  # share of labels replaced by the null class (guidance training)
  "learn_sigma": False,
}


def architecture(name: str) -> Architecture:
  if name not in ARCHITECTURES:
    raise ValueError(f"model.arch must be one of {list(ARCHITECTURES)}, got {name!r}.")
  return ARCHITECTURES[name]


def typed_config(model: Mapping[str, Any]):
  """The architecture's config dataclass from a run's `model` section (a ConfigDict or dict).

  The section must hold exactly COMMON's keys and the dataclass's fields: a key of another
  architecture means the config was built for that one.
  """
  arch = architecture(model["arch"])
  fields = {f.name for f in dataclasses.fields(arch.config)}
  keys = set(model.keys()) - set(COMMON)
  if keys != fields:
    foreign, missing = sorted(keys - fields), sorted(fields - keys)
    raise ValueError(
      f"model.arch={model['arch']!r} does not match the config's model keys (foreign: {foreign}, "
      f"missing: {missing}); build the config with default_config(arch={model['arch']!r})."
    )
  values = {name: model[name] for name in fields}
  return arch.config(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build(model: Mapping[str, Any], spec: NetworkSpec, rngs: nnx.Rngs) -> nnx.Module:
  """The network a run's `model` section describes, on `spec`."""
  return architecture(model["arch"]).build(typed_config(model), spec, rngs)


def abstract_module(make: Callable[[nnx.Rngs], nnx.Module], *, dropout_key=0) -> nnx.Module:
  """`make(rngs)` with parameters that are shapes only (jax.ShapeDtypeStruct), to be filled with
  `nnx.update` from a checkpoint: skips a random init that would be overwritten, which on CPU costs
  seconds of compilation per parameter shape. Its dropout streams are real, from `dropout_key`."""
  module = nnx.eval_shape(lambda: make(nnx.Rngs(0, dropout=0)))
  nnx.reseed(module, dropout=dropout_key)
  return module


def abstract(model: Mapping[str, Any], spec: NetworkSpec, *, dropout_key=0) -> nnx.Module:
  """The network a run's `model` section describes, with shape-only parameters."""
  return abstract_module(lambda rngs: build(model, spec, rngs), dropout_key=dropout_key)


def abstract_unet(*, dropout_key=0, **kwargs) -> UNet:
  """A `UNet(**kwargs)` with shape-only parameters (converters and tests build U-Nets directly)."""
  return abstract_module(lambda rngs: UNet(**kwargs, rngs=rngs), dropout_key=dropout_key)


def parameter_count(params) -> int:
  """Number of parameters of a network's `nnx.Param` state."""
  return sum(x.size for x in jax.tree.leaves(params))
