"""Reading PyTorch pickles in the one-time converters: the only place jaxdiff imports torch."""

from __future__ import annotations

import io
import os

import numpy as np
import safetensors.numpy
from etils import epath

from jaxdiff import storage

TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def import_torch(kind: str = ".pth"):
  """torch, or ImportError in one sentence naming the install command."""
  try:
    import torch  # optional: needed for the conversions from PyTorch pickles only
  except ImportError as e:
    raise ImportError(f"Reading a PyTorch {kind} file needs PyTorch: {TORCH_INSTALL}") from e
  return torch


def existing_file(src: str | os.PathLike, what: str) -> epath.Path:
  """`src` (a local path or a URL) as an epath.Path; ValueError in one sentence (naming `what`
  should be passed) when there is no such file."""
  file = storage.path(src, what="the source")
  if not file.is_file():
    raise ValueError(f"{src} does not exist: pass {what}.")
  return file


def torch_load(torch, file: epath.Path, **kwargs):
  """`torch.load` of the file `file` (an `existing_file`) on the CPU with `kwargs`: a local file by
  its path, a URL's object read whole first (torch opens local files only)."""
  source = io.BytesIO(file.read_bytes()) if storage.is_url(file) else os.fspath(file)
  return torch.load(source, map_location="cpu", **kwargs)


def read_state_dict(torch, src: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  """The float32 numpy tensors of the plain state dict in `src` (a local path or a URL);
  ValueError in one sentence (naming `what` should be passed) for a missing file or one that holds
  anything else."""
  file = existing_file(src, what)
  try:
    # weights_only: a plain state dict, so no pickled code is ever run.
    state = torch_load(torch, file, weights_only=True)
  except Exception as e:  # any failure to unpickle means "not a state dict"
    raise ValueError(f"{src} is not a readable PyTorch state dict ({e}).") from e
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise ValueError(f"{src} does not hold a state dict of tensors: pass {what}.")
  return {k: np.ascontiguousarray(v.detach().float().numpy()) for k, v in state.items()}


def new_output_file(dst: str | os.PathLike) -> epath.Path:
  """`dst` (a local path or a URL) as an epath.Path, or ValueError in one sentence if it exists:
  conversions never overwrite."""
  file = storage.path(dst, what="the destination")
  if file.exists():
    raise ValueError(f"{dst} already exists: choose a new output file.")
  return file


def write_safetensors(tensors: dict[str, np.ndarray], file: epath.Path) -> None:
  """`tensors` as a safetensors file at `file` (a `new_output_file`), which appears only once
  complete."""
  storage.write_bytes_whole(file, safetensors.numpy.save(tensors))
