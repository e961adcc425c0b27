"""Whether a converted folder holds the network a run's config builds: the check of `init_from`.

A converted folder's network_config.json names the network table's entry ("arch") and the keyword
arguments of its module; a run builds its module from `model.*` and the diffusion space
(`models.NetworkSpec`: the data after the codec, the classes, the learned variance). The two agree
when every argument the folder gives (or leaves at the module's default) is what the config gives:
the spec's for the shape of the data and the conditioning, the `model.*` key of the same name for
the rest. Keys that change how the network computes or trains, not what its parameters mean
(`model.remat`, `model.attention`, `model.dropout`), may differ. `read_converted` compares the
parameter shapes too (the checkpoint's metadata against the config's network), before it reads a
weight, so nothing the names miss gets through.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from jaxdiff import models
from jaxdiff.convert.converted import PARAMS_DIR, folder_prediction, location, network_config

# model.* keys that do not change what a network's parameters mean: a fine-tune may change them
NOT_THE_NETWORK = ("remat", "attention", "dropout")
# module arguments a converted folder carries that are no parameters and no model.* key: an
# autoencoder's latent scale (a run of it measures its own, or takes autoencoder.scale_factor)
NOT_PARAMETERS = ("scaling_factor", "shift_factor")


def _plain(value):
  return json.loads(json.dumps(value))  # tuples and lists compare alike


def _shown(value) -> str:
  """`value` as a --config override takes it: (8,) and (1,2) for tuples."""
  if isinstance(value, (list, tuple)):
    return f"({','.join(map(str, value))}{',' if len(value) == 1 else ''})"
  return str(value)


def _spec_mismatch(key, theirs, config, spec, where) -> str | None:
  """The sentence for an argument the data, codec or conditioning fixes, or None if it agrees."""
  d, m = config.data, config.model
  if key == "in_channels" and theirs != spec.in_channels:
    return (
      f"{where} takes {theirs}-channel inputs and this run's diffusion space has "
      f"{spec.in_channels} channels (data.channels={d.channels}, codec.name={config.codec.name!r}); "
      "use data or a codec of the network's channels."
    )
  if key == "image_size" and theirs != spec.image_size:
    return (
      f"{where} takes {theirs}×{theirs} inputs and this run's diffusion space is "
      f"{spec.image_size}×{spec.image_size} (data.image_size={d.image_size}, codec.name="
      f"{config.codec.name!r}); set data.image_size to match."
    )
  if key == "num_classes" and theirs != spec.num_classes:
    if theirs is None:
      return (
        f"{where} is unconditional and this config has model.class_conditional=True; set "
        "--config.model.class_conditional=False."
      )
    return (
      f"{where} is conditioned on {theirs} classes and this config has "
      f"model.class_conditional={m.class_conditional}, data.num_classes={d.num_classes}; set "
      f"--config.model.class_conditional=True --config.data.num_classes={theirs}."
    )
  if key == "learn_sigma" and bool(theirs) != spec.learn_sigma:
    return (
      f"{where} {'outputs' if theirs else 'has no'} learned variances and this config has "
      f"model.learn_sigma={spec.learn_sigma}; set --config.model.learn_sigma={bool(theirs)}."
    )
  return None


def check_converted(path: str | os.PathLike, config: ml_collections.ConfigDict, spec) -> None:
  """ValueError, one sentence naming the first difference and the setting that fixes it, unless
  the converted folder `path` holds the network `config` builds on the diffusion space `spec`
  (a `models.NetworkSpec`). Reads network_config.json only, no weights."""
  arch, kwargs, file = network_config(path)
  where = f"the network in init_from={path}"
  if arch != config.model.arch:
    raise ValueError(
      f"{where} is a {arch!r} and this config builds model.arch={config.model.arch!r}; use a "
      f"config of that network (default_config(arch={arch!r}))."
    )
  theirs = dict(kwargs)
  prediction = folder_prediction(path)  # declared by the conversion (--prediction), or None
  if prediction is not None and prediction != config.diffusion.prediction:
    raise ValueError(
      f"{where} predicts {prediction!r} and this config has diffusion.prediction="
      f"{config.diffusion.prediction!r}; set --config.diffusion.prediction={prediction}."
    )
  module = models.ARCHITECTURES[arch].module
  defaults = {
    name: p.default
    for name, p in inspect.signature(module.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
  }
  ours = dataclasses.asdict(models.table.typed_config(config.model))  # a preset applied
  spec_keys = ("in_channels", "image_size", "num_classes", "learn_sigma")
  for key in spec_keys:
    if key in theirs or key in defaults:
      problem = _spec_mismatch(key, theirs.get(key, defaults.get(key)), config, spec, where)
      if problem:
        raise ValueError(problem)
  if theirs.get("out_channels") is not None:  # given apart from learn_sigma (diffusers' U-Net)
    expected = spec.in_channels * (2 if spec.learn_sigma else 1)
    if theirs["out_channels"] != expected:
      learned = theirs["out_channels"] == 2 * theirs.get("in_channels", spec.in_channels)
      raise ValueError(
        _spec_mismatch("learn_sigma", learned, config, spec, where)
        or f"{where} outputs {theirs['out_channels']} channels, this config's network {expected}."
      )
  for key, value in theirs.items():
    if key in (*spec_keys, "out_channels", *NOT_THE_NETWORK, *NOT_PARAMETERS):
      continue
    if key not in ours:
      raise ValueError(
        f"{where} has {key}={value!r} ({file}), which no model.* key of model.arch={arch!r} "
        "sets; this network cannot be a run's."
      )
  for key, value in ours.items():
    if key in NOT_THE_NETWORK or (key not in theirs and key not in defaults):
      continue  # a key of the config alone (a DiT's preset)
    given = theirs.get(key, defaults.get(key))
    if _plain(given) != _plain(value):
      raise ValueError(
        f"{where} has {key}={_shown(given)} and this config has model.{key}={_shown(value)}; "
        f"set --config.model.{key}={_shown(given)}."
      )


def read_converted(path: str | os.PathLike, like: nnx.State) -> nnx.State:
  """The parameters of the converted folder `path` restored into `like`, the (shape-only)
  `nnx.Param` state of the network a config builds. The shapes are compared first, from the
  checkpoint's metadata: ValueError, one sentence naming the first parameter that differs."""
  folder = location(path, "init_from")
  with ocp.StandardCheckpointer() as checkpointer:
    stored = checkpointer.metadata(folder / PARAMS_DIR)
    stored = getattr(stored, "item_metadata", stored)
    theirs = {
      tuple(str(getattr(k, "key", k)) for k in keys[:-1]): tuple(leaf.shape)
      for keys, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
    }
    ours = {tuple(map(str, keys)): tuple(v.shape) for keys, v in nnx.to_flat_state(like)}
    for name in sorted(set(theirs) | set(ours)):
      if theirs.get(name) != ours.get(name):
        raise ValueError(
          f"the network in init_from={path} has parameter {'.'.join(name)} of shape "
          f"{theirs.get(name)} and this config's network {ours.get(name)}; the folder holds "
          "another network than model.* describes."
        )
    return checkpointer.restore(folder / PARAMS_DIR, like)
