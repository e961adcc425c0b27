"""Make the diffusers DiT reference data that tests/test_convert_dit.py checks jaxdiff against.

Run from the repository root with a PyTorch environment (never needed by jaxdiff itself):

    pip install torch==2.13.0 diffusers==0.42.1 safetensors numpy
    python tests/make_diffusers_dit_reference.py

It builds a tiny `DiTTransformer2DModel` (8×8×4 input, patch 2, 2 layers of 2 heads × 16, 10
classes, learned variance, norm_eps 1e-2), re-randomizes every weight at ~unit activation scale
(the zero-initialised adaLN and output layers included, so that a mis-mapped one shows up), then
ties the per-block timestep and label embedders (copies block 0's into every block: jaxdiff's DiT
has one, and every checkpoint converted from the original has equal copies). It saves the model
with `save_pretrained` in float16 under tests/data/diffusers_dit_tiny/ and writes
tests/data/diffusers_dit_reference.npz: inputs `x` (NHWC), `t` (fractional and 999 included), `y`
(the null class 10 included), diffusers' eval-mode outputs `out` (labels y) and `out_null` (every
label the null class), NHWC, float32.

norm_eps is 1e-2 rather than diffusers' default 1e-5 so that using the original's 1e-6 instead
changes the output far beyond the test's tolerance (at 1e-5 it moves it by only ~1e-6): the script
prints how far each of diffusers' two differences from the original moves the output.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from diffusers import DiTTransformer2DModel
from diffusers.utils import logging

SAVE_DTYPE = torch.float16
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CONFIG = dict(
  sample_size=8,
  patch_size=2,
  in_channels=4,
  out_channels=8,
  num_layers=2,
  num_attention_heads=2,
  attention_head_dim=16,
  num_embeds_ada_norm=10,
  norm_eps=1e-2,
)


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
  with torch.no_grad():
    for param in model.parameters():
      # ~unit-variance activations through every layer: the scale a trained model has
      fan_in = param.shape[1] * param[0, 0].numel() if param.ndim > 1 else 16
      param.copy_(torch.randn(param.shape, generator=generator) / np.sqrt(fan_in))
      param.copy_(param.to(SAVE_DTYPE).float())  # the reference uses exactly the stored weights
    first = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks[1:]:
      block.norm1.emb.load_state_dict(first.state_dict())


def _run(model, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(
      torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(y)
    ).sample
  return out.permute(0, 2, 3, 1).numpy()


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _effect_of_the_differences(model, x, t, y, out) -> None:
  """How much the output moves with each of diffusers' differences undone, to show the data tells
  them apart from the original's choices."""
  proj = [b.norm1.emb.time_proj for b in model.transformer_blocks]
  for p in proj:
    p.downscale_freq_shift = 0
  print(f"freq shift 1 -> 0 moves the output by {_relative(_run(model, x, t, y), out):.2e}")
  for p in proj:
    p.downscale_freq_shift = 1
  for block in model.transformer_blocks:
    block.norm3.eps = 1e-6
  print(f"MLP LayerNorm eps -> 1e-6 moves the output by {_relative(_run(model, x, t, y), out):.2e}")
  for block in model.transformer_blocks:
    block.norm3.eps = CONFIG["norm_eps"]


def main() -> None:
  torch.manual_seed(0)
  model = DiTTransformer2DModel(**CONFIG).eval()
  _randomize(model, torch.Generator().manual_seed(1))
  rng = np.random.default_rng(2)
  x = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
  t = np.array([0.0, 1.5, 499.25, 999.0], np.float32)
  y = np.array([0, 3, 9, 10], np.int64)  # 10: the null class
  null = np.full_like(y, CONFIG["num_embeds_ada_norm"])
  out, out_null = _run(model, x, t, y), _run(model, x, t, null)
  _effect_of_the_differences(model, x, t, y, out)

  folder = os.path.join(DATA, "diffusers_dit_tiny")
  model.to(SAVE_DTYPE).save_pretrained(folder, safe_serialization=True)
  # The files on disk, read back by diffusers itself, must give the same output.
  reloaded = DiTTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
  np.testing.assert_array_equal(_run(reloaded, x, t, y), out)

  path = os.path.join(DATA, "diffusers_dit_reference.npz")
  np.savez_compressed(path, x=x, t=t, y=y.astype(np.int32), out=out, out_null=out_null)
  print(f"wrote {folder} and {path}, |out| rms {np.sqrt((out**2).mean()):.3f}")


if __name__ == "__main__":
  logging.set_verbosity_error()
  main()
