"""One-time conversion of pytorch-fid's Inception weights (a PyTorch pickle) to safetensors.

pytorch-fid publishes the FID Inception as pt_inception-2015-12-05-6726825d.pth, readable only by
torch.load; jaxdiff reads safetensors. The names stay pytorch-fid's and the layout PyTorch's, so the
file is also usable from PyTorch; `jaxdiff.metrics.load_inception` maps and transposes on load.
torch is imported here only, at call time, and is never needed to read the result.
"""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import save_file

from jaxdiff.metrics.inception import check_inception_tensors

TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def convert_pytorch_fid_inception(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Read pytorch-fid's state dict `src` (.pth), check it, and write it to `dst` (.safetensors)."""
  try:
    import torch  # optional: needed for this one conversion only
  except ImportError as e:
    raise ImportError(f"Reading a PyTorch .pth file needs PyTorch: {TORCH_INSTALL}") from e
  if os.path.exists(dst):
    raise ValueError(f"{dst} already exists: choose a new output file.")
  if not os.path.isfile(src):
    raise ValueError(f"{src} does not exist: pass pytorch-fid's pt_inception-2015-12-05-*.pth.")
  try:
    # weights_only: the file is a plain state dict, so no pickled code is ever run.
    state = torch.load(src, map_location="cpu", weights_only=True)
  except Exception as e:  # any failure to unpickle means "not a state dict"
    raise ValueError(f"{src} is not a readable PyTorch state dict ({e}).") from e
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise ValueError(f"{src} does not hold a state dict of tensors.")
  tensors = {k: np.ascontiguousarray(v.detach().float().numpy()) for k, v in state.items()}
  save_file(check_inception_tensors(tensors), dst)
