"""The folder every `python -m jaxdiff.convert` network conversion writes, whatever the source.

DST/network_config.json holds the network table's name ("arch": "unet", "dit", …) and the keyword
arguments of that network's module; DST/params is an Orbax checkpoint of its `nnx.Param` state.
`load_converted` rebuilds the module through the network table, so a new network needs no change
here. Folders written before there was more than one network have unet_config.json and no "arch".
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from jaxdiff.models import ARCHITECTURES
from jaxdiff.models.table import abstract_module

CONFIG_FILE = "network_config.json"
LEGACY_CONFIG_FILE = "unet_config.json"  # always a U-Net
PARAMS_DIR = "params"


def new_output_folder(dst: str | os.PathLike) -> str:
  """`dst` as an absolute path, or ValueError if it holds anything: conversions never overwrite."""
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
    raise ValueError(
      f"{dst} already exists and is not an empty folder: choose a new output folder."
    )
  return dst


def save_converted(dst: str | os.PathLike, arch: str, kwargs: dict, model: nnx.Module) -> None:
  """Write `model` (built as `ARCHITECTURES[arch].module(**kwargs)`) to the new folder `dst`."""
  dst = new_output_folder(dst)
  if arch not in ARCHITECTURES:
    raise ValueError(f"{arch!r} is not in the network table {list(ARCHITECTURES)}.")
  os.makedirs(dst, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(dst, PARAMS_DIR), nnx.state(model, nnx.Param))
  # Written last: a folder with a config file holds a complete checkpoint.
  with open(os.path.join(dst, CONFIG_FILE), "w") as f:
    json.dump({"arch": arch, **kwargs}, f, indent=2)


def load_converted(dst: str | os.PathLike, *, dtype=jnp.float32, dropout_key: int | jax.Array = 0):
  """Rebuild the network a jaxdiff conversion (or `python -m jaxdiff.convert`) wrote to `dst`."""
  dst = os.path.abspath(dst)
  config_path = os.path.join(dst, CONFIG_FILE)
  if not os.path.isfile(config_path):
    config_path = os.path.join(dst, LEGACY_CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise ValueError(
      f"{os.path.join(dst, CONFIG_FILE)} does not exist: pass a folder written by jaxdiff.convert."
    )
  with open(config_path) as f:
    kwargs = json.load(f)
  arch = kwargs.pop("arch", "unet")
  if arch not in ARCHITECTURES:
    raise ValueError(f"{config_path} names an unknown network {arch!r}.")
  module = ARCHITECTURES[arch].module
  model = abstract_module(
    lambda rngs: module(**kwargs, dtype=dtype, rngs=rngs), dropout_key=dropout_key
  )
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(dst, PARAMS_DIR), nnx.state(model, nnx.Param))
  nnx.update(model, params)
  return model
