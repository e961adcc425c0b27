"""Reading PyTorch pickles in the one-time converters: the only place jaxdiff imports torch."""

from __future__ import annotations

import os

import numpy as np

TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def import_torch(kind: str = ".pth"):
  """torch, or ImportError in one sentence naming the install command."""
  try:
    import torch  # optional: needed for the conversions from PyTorch pickles only
  except ImportError as e:
    raise ImportError(f"Reading a PyTorch {kind} file needs PyTorch: {TORCH_INSTALL}") from e
  return torch


def read_state_dict(torch, src: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  """The float32 numpy tensors of the plain state dict in `src`; ValueError in one sentence
  (naming `what` should be passed) for a missing file or one that holds anything else."""
  if not os.path.isfile(src):
    raise ValueError(f"{src} does not exist: pass {what}.")
  try:
    # weights_only: a plain state dict, so no pickled code is ever run.
    state = torch.load(src, map_location="cpu", weights_only=True)
  except Exception as e:  # any failure to unpickle means "not a state dict"
    raise ValueError(f"{src} is not a readable PyTorch state dict ({e}).") from e
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise ValueError(f"{src} does not hold a state dict of tensors: pass {what}.")
  return {k: np.ascontiguousarray(v.detach().float().numpy()) for k, v in state.items()}
