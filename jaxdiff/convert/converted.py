"""The folder every `python -m jaxdiff.convert` network conversion writes, whatever the source.

DST/network_config.json holds the network table's name ("arch": "unet", "dit", …) and the keyword
arguments of that network's module; DST/params is an Orbax checkpoint of its `nnx.Param` state.
`load_converted` rebuilds the module through the network table, so a new network needs no change
here. Folders written before there was more than one network have unet_config.json and no "arch".
DST may be a local folder or a bucket URL (`gs://…`, through `jaxdiff.storage`): Orbax writes the
parameters there itself and the config file goes through etils.epath.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jaxdiff import storage
from jaxdiff.models import ARCHITECTURES
from jaxdiff.models.table import abstract_module

CONFIG_FILE = "network_config.json"
LEGACY_CONFIG_FILE = "unet_config.json"  # always a U-Net
PARAMS_DIR = "params"
# network_config.json's key for what the network predicts, when the conversion was told
PREDICTION_KEY = "prediction"


def location(value: str | os.PathLike, what: str) -> epath.Path:
  """`value` (a local path or a URL) as an epath.Path, absolute when local (Orbax wants that);
  storage.StorageError, one sentence naming `what`, for a URL nothing can serve."""
  path = storage.path(value, what=what)
  return path if storage.is_url(path) else epath.Path(os.path.abspath(path))


def new_output_folder(dst: str | os.PathLike) -> epath.Path:
  """`dst` as an absolute path or a URL, or ValueError if it holds anything: conversions never
  overwrite."""
  dst = location(dst, "the destination")
  if dst.exists() and (not dst.is_dir() or any(True for _ in dst.iterdir())):
    raise ValueError(
      f"{dst} already exists and is not an empty folder: choose a new output folder."
    )
  return dst


def save_converted(
  dst: str | os.PathLike, arch: str, kwargs: dict, model: nnx.Module, *, prediction=None
) -> None:
  """Write `model` (built as `ARCHITECTURES[arch].module(**kwargs)`) to the new folder `dst`; a
  `prediction` (a `diffusion.prediction` value, e.g. 'flow') is recorded for `folder_prediction`."""
  dst = new_output_folder(dst)
  if arch not in ARCHITECTURES:
    raise ValueError(f"{arch!r} is not in the network table {list(ARCHITECTURES)}.")
  dst.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(dst / PARAMS_DIR, nnx.state(model, nnx.Param))
  # Written last, and whole: a folder with a config file holds a complete checkpoint.
  declared = {} if prediction is None else {PREDICTION_KEY: prediction}
  config = json.dumps({"arch": arch, **declared, **kwargs}, indent=2)
  storage.write_bytes_whole(dst / CONFIG_FILE, config.encode())


def network_config(dst: str | os.PathLike) -> tuple[str, dict, epath.Path]:
  """(network table name, the module's keyword arguments, the file they were read from) of the
  converted folder `dst`, reading no weights; ValueError, one sentence, for another folder."""
  dst = location(dst, "the converted folder")
  config_path = dst / CONFIG_FILE
  if not config_path.is_file():
    config_path = dst / LEGACY_CONFIG_FILE
  if not config_path.is_file():
    raise ValueError(
      f"{dst / CONFIG_FILE} does not exist: pass a folder written by jaxdiff.convert."
    )
  kwargs = json.loads(config_path.read_text())
  arch = kwargs.pop("arch", "unet")
  kwargs.pop(PREDICTION_KEY, None)  # what the network predicts, not an argument of its module
  if arch not in ARCHITECTURES:
    raise ValueError(f"{config_path} names an unknown network {arch!r}.")
  return arch, kwargs, config_path


def folder_prediction(dst: str | os.PathLike) -> str | None:
  """The `diffusion.prediction` the converted folder `dst` declares (`python -m jaxdiff.convert
  ... --prediction=flow` for a flow-matching DiT/SiT, whose layout is a DiT's), or None: not
  declared, the source's own (the DiT release and diffusers' DiT: 'epsilon')."""
  _, _, config_path = network_config(dst)
  return json.loads(config_path.read_text()).get(PREDICTION_KEY)


def load_converted(dst: str | os.PathLike, *, dtype=jnp.float32, dropout_key: int | jax.Array = 0):
  """Rebuild the network a jaxdiff conversion (or `python -m jaxdiff.convert`) wrote to `dst`, a
  local folder or a URL."""
  dst = location(dst, "the converted folder")
  arch, kwargs, _ = network_config(dst)
  module = ARCHITECTURES[arch].module
  model = abstract_module(
    lambda rngs: module(**kwargs, dtype=dtype, rngs=rngs), dropout_key=dropout_key
  )
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(dst / PARAMS_DIR, nnx.state(model, nnx.Param))
  nnx.update(model, params)
  return model
