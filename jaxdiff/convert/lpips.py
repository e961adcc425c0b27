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

from jaxdiff.convert.torch_files import (
  import_torch,
  new_output_file,
  read_state_dict,
  write_safetensors,
)
from jaxdiff.metrics.lpips import check_lpips_tensors

BACKBONE = "torchvision's VGG16 state dict (vgg16-397923af.pth)"
LINEAR = "lpips' linear layers (lpips/weights/v0.1/vgg.pth)"
_LIN = re.compile(r"lin\d+\.")


def convert_lpips(
  backbone: str | os.PathLike, linear: str | os.PathLike, dst: str | os.PathLike
) -> None:
  """Read torchvision's VGG16 state dict `backbone` and lpips' `linear` (both .pth), keep the conv
  stack's and lin layers' tensors, check them and write them to `dst` (.safetensors). Each may be
  a local path or a URL."""
  torch = import_torch()
  out = new_output_file(dst)
  state = read_state_dict(torch, backbone, BACKBONE)
  features = {k: v for k, v in state.items() if k.startswith("features.")}
  if not features:
    raise ValueError(f"{backbone} holds no features.* tensors: pass {BACKBONE} first.")
  lins = {k: v for k, v in read_state_dict(torch, linear, LINEAR).items() if _LIN.match(k)}
  if not lins:
    raise ValueError(f"{linear} holds no lin*.model.1.weight tensors: pass {LINEAR} second.")
  tensors = {**features, **lins}
  check_lpips_tensors(tensors)
  write_safetensors(tensors, out)
