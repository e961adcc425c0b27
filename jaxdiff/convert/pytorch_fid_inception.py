"""One-time conversion of pytorch-fid's Inception weights (a PyTorch pickle) to safetensors.

pytorch-fid publishes the FID Inception as pt_inception-2015-12-05-6726825d.pth, readable only by
torch.load; jaxdiff reads safetensors. The names stay pytorch-fid's and the layout PyTorch's, so the
file is also usable from PyTorch; `jaxdiff.metrics.load_inception` maps and transposes on load.
torch is imported here only, at call time, and is never needed to read the result.
"""

from __future__ import annotations

import os

from jaxdiff.convert.torch_files import (
  import_torch,
  new_output_file,
  read_state_dict,
  write_safetensors,
)
from jaxdiff.metrics.inception import check_inception_tensors


def convert_pytorch_fid_inception(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Read pytorch-fid's state dict `src` (.pth), check it, and write it to `dst`
  (.safetensors); either may be a local path or a URL."""
  torch = import_torch()
  out = new_output_file(dst)
  tensors = read_state_dict(torch, src, "pytorch-fid's pt_inception-2015-12-05-*.pth")
  write_safetensors(check_inception_tensors(tensors), out)
