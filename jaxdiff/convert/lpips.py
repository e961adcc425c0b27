"""One-time conversion of LPIPS-VGG16's two PyTorch weight files into one safetensors file.

LPIPS takes its backbone from torchvision's ImageNet VGG16 (vgg16-397923af.pth, a state dict with
`features.*` and `classifier.*`) and its five lin layers from the `lpips` package
(lpips/weights/v0.1/vgg.pth, `lin0.model.1.weight` ... `lin4.model.1.weight`). Both are PyTorch
pickles; the result keeps the backbone's conv tensors and the lin layers under their own names and
PyTorch layout, readable with `jaxdiff.metrics.load_lpips`. The classifier is dropped. torch is
imported here only, at call time, and is never needed to read the result.
"""

from __future__ import annotations

import os
import re

import numpy as np
from safetensors.numpy import save_file

from jaxdiff.convert.pytorch_fid_inception import TORCH_INSTALL
from jaxdiff.metrics.lpips import check_lpips_tensors

BACKBONE = "torchvision's VGG16 state dict (vgg16-397923af.pth)"
LINEAR = "lpips' linear layers (lpips/weights/v0.1/vgg.pth)"
_LIN = re.compile(r"lin\d+\.")


def _read_state_dict(torch, src: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(src):
    raise ValueError(f"{src} does not exist: pass {what}.")
  try:
    # weights_only: both files are plain state dicts, so no pickled code is ever run.
    state = torch.load(src, map_location="cpu", weights_only=True)
  except Exception as e:  # any failure to unpickle means "not a state dict"
    raise ValueError(f"{src} is not a readable PyTorch state dict ({e}).") from e
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise ValueError(f"{src} does not hold a state dict of tensors: pass {what}.")
  return {k: np.ascontiguousarray(v.detach().float().numpy()) for k, v in state.items()}


def convert_lpips(
  backbone: str | os.PathLike, linear: str | os.PathLike, dst: str | os.PathLike
) -> None:
  """Read torchvision's VGG16 state dict `backbone` and lpips' `linear` (both .pth), keep the conv
  stack's and lin layers' tensors, check them and write them to `dst` (.safetensors)."""
  try:
    import torch  # optional: needed for this one conversion only
  except ImportError as e:
    raise ImportError(f"Reading a PyTorch .pth file needs PyTorch: {TORCH_INSTALL}") from e
  if os.path.exists(dst):
    raise ValueError(f"{dst} already exists: choose a new output file.")
  state = _read_state_dict(torch, backbone, BACKBONE)
  features = {k: v for k, v in state.items() if k.startswith("features.")}
  if not features:
    raise ValueError(f"{backbone} holds no features.* tensors: pass {BACKBONE} first.")
  lins = {k: v for k, v in _read_state_dict(torch, linear, LINEAR).items() if _LIN.match(k)}
  if not lins:
    raise ValueError(f"{linear} holds no lin*.model.1.weight tensors: pass {LINEAR} second.")
  tensors = {**features, **lins}
  check_lpips_tensors(tensors)
  save_file(tensors, dst)
