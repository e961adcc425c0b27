"""Make the reference data that tests/test_dit.py checks `jaxdiff.models.DiT` against.

Run from the repository root with a PyTorch environment (never needed by jaxdiff itself):

    pip install torch timm numpy
    python tests/make_dit_reference.py PATH/TO/DiT/models.py

where models.py is facebookresearch/DiT's (commit ed81ce2, the repository's only model file). It
builds a tiny original DiT (8×8×4 input, patch 2, hidden 32, depth 2, 4 heads, 10 classes,
learn_sigma), re-randomizes every weight (the zero-initialized adaLN and output layers included,
so that a mis-mapped one shows up) and writes tests/data/dit_reference.npz: the state dict under
`param/<name>`, inputs `x` (NHWC), `t` (fractional ones included), `y` (the null class 10
included) and the eval-mode output `out` (NHWC), and `cfg_out`, the original sampler's guided
output (`forward_with_cfg`, scale 4, first 3 channels) for x[:2], t[1:3], labels `cfg_labels`.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TINY = dict(
  input_size=8,
  patch_size=2,
  in_channels=4,
  hidden_size=32,
  depth=2,
  num_heads=4,
  num_classes=10,
  learn_sigma=True,
)


def main(models_py: str) -> None:
  spec = importlib.util.spec_from_file_location("dit_models", models_py)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  torch.manual_seed(0)
  model = module.DiT(**TINY, class_dropout_prob=0.1).eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name == "pos_embed":
        continue  # fixed sin-cos values, recomputed by jaxdiff
      # ~unit-variance activations through every layer: the scale a trained model has
      fan_in = param.shape[1] * param[0, 0].numel() if param.ndim > 1 else 16
      param.copy_(torch.randn(param.shape, generator=generator) / np.sqrt(fan_in))
  x = torch.randn(4, 4, 8, 8, generator=generator)
  t = torch.tensor([0.0, 1.5, 499.0, 999.0])
  y = torch.tensor([0, 3, 9, 10])  # 10: the null class
  with torch.no_grad():
    out = model(x, t, y)
  # the released sampler's guidance (sample.py: forward_with_cfg, scale 4, the first 3 channels
  # guided): rows 0-1 conditional on labels 3 and 7, rows 2-3 the null label, one input per pair
  cfg_x, cfg_t = torch.cat([x[:2], x[:2]]), torch.cat([t[1:3], t[1:3]])
  with torch.no_grad():
    cfg_out = model.forward_with_cfg(cfg_x, cfg_t, torch.tensor([3, 7, 10, 10]), 4.0)
  arrays = {f"param/{k}": v.numpy() for k, v in model.state_dict().items() if k != "pos_embed"}
  arrays["pos_embed"] = model.pos_embed[0].numpy()
  arrays["x"] = x.permute(0, 2, 3, 1).numpy()
  arrays["t"] = t.numpy()
  arrays["y"] = y.numpy().astype(np.int32)
  arrays["out"] = out.permute(0, 2, 3, 1).numpy()
  arrays["cfg_labels"] = np.array([3, 7], np.int32)
  arrays["cfg_out"] = cfg_out[:2].permute(0, 2, 3, 1).numpy()
  path = os.path.join(DATA, "dit_reference.npz")
  np.savez_compressed(
    path, **{k: np.asarray(v, np.float32 if k not in ("y", "cfg_labels") else np.int32) for k, v in arrays.items()}
  )
  print(f"wrote {path} ({os.path.getsize(path)} bytes), |out| = {float(out.norm()):.4f}")


if __name__ == "__main__":
  main(sys.argv[1])
