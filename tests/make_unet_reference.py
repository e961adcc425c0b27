"""Make the diffusers reference data that tests/test_convert.py checks `jaxdiff.convert` against.

Run from the repository root with a PyTorch environment (never needed by jaxdiff itself):

    pip install torch==2.13.0 diffusers==0.42.1 safetensors numpy
    python tests/make_unet_reference.py

For each variant it builds a small random `UNet2DModel`, perturbs every weight (GroupNorm's ones and
zeros included, so a mis-mapped scale or bias shows up), saves it with `save_pretrained` under
tests/data/unet_<name>/ and writes tests/data/unet_<name>_io.npz: NHWC inputs `x`, timesteps `t`,
labels `y` (class-conditional variants only) and diffusers' eval-mode output `out`, in NHWC.

- `ddpm`: DDPM's layout (additive time embedding, one head, attention at the second level,
  downsample_padding=0, freq_shift=1), saved with the legacy query/key/value/proj_attn attention names
  of checkpoints such as google/ddpm-cifar10-32.
- `adm`: scale-shift norm, 2-4 heads, attention at the first level, class labels with the last row
  used as the null class, 6 output channels, flip_sin_to_cos, freq_shift=0.

Weights are stored in float16 (as many hub checkpoints are) to keep the files small; the reference is
computed in float32 from the same rounded weights.
"""

from __future__ import annotations

import os
import re

import numpy as np
import safetensors.torch
import torch
from diffusers import UNet2DModel
from diffusers.utils import logging

SAVE_DTYPE = torch.float16
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

VARIANTS = {
  "ddpm": dict(
    config=dict(
      sample_size=16,
      in_channels=3,
      out_channels=3,
      block_out_channels=(16, 32),
      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
      up_block_types=("AttnUpBlock2D", "UpBlock2D"),
      layers_per_block=1,
      attention_head_dim=None,
      norm_num_groups=8,
      norm_eps=1e-6,
      flip_sin_to_cos=False,
      freq_shift=1,
      downsample_padding=0,
      dropout=0.1,
    ),
    t=np.array([0, 17, 999], np.int64),
    labels=None,
    legacy_attention_names=True,
  ),
  "adm": dict(
    config=dict(
      sample_size=16,
      in_channels=3,
      out_channels=6,
      block_out_channels=(16, 32),
      down_block_types=("AttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "AttnUpBlock2D"),
      layers_per_block=1,
      attention_head_dim=8,
      norm_num_groups=8,
      attn_norm_num_groups=8,
      norm_eps=1e-5,
      flip_sin_to_cos=True,
      freq_shift=0,
      downsample_padding=1,
      resnet_time_scale_shift="scale_shift",
      num_class_embeds=5,
      dropout=0.1,
    ),
    t=np.array([0.5, 250.0, 999.0], np.float32),
    labels=np.array([0, 3, 4], np.int64),
    legacy_attention_names=False,
  ),
}

_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
  with torch.no_grad():
    for p in model.parameters():
      spread = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.1
      p.add_(0.5 * spread * torch.randn(p.shape, generator=generator))
      # Round to the stored precision so the reference uses exactly the weights on disk.
      p.copy_(p.to(SAVE_DTYPE).float())


def _to_legacy_attention_names(path: str) -> None:
  tensors = safetensors.torch.load_file(path)
  renamed = {}
  for name, value in tensors.items():
    m = re.fullmatch(r"(.*\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)", name)
    renamed[f"{m[1]}.{_LEGACY[m[2]]}.{m[3]}" if m else name] = value
  safetensors.torch.save_file(renamed, path)


def _run(model: UNet2DModel, x: np.ndarray, t: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
  with torch.no_grad():
    out = model(
      torch.from_numpy(x).permute(0, 3, 1, 2),
      torch.from_numpy(t),
      class_labels=None if labels is None else torch.from_numpy(labels),
    ).sample
  return out.permute(0, 2, 3, 1).numpy()


def make(name: str, spec: dict, seed: int) -> None:
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  model = UNet2DModel(**spec["config"]).eval()
  _perturb(model, generator)

  rng = np.random.default_rng(seed)
  size, channels = spec["config"]["sample_size"], spec["config"]["in_channels"]
  x = rng.standard_normal((len(spec["t"]), size, size, channels)).astype(np.float32)
  out = _run(model, x, spec["t"], spec["labels"])

  folder = os.path.join(DATA, f"unet_{name}")
  model.to(SAVE_DTYPE).save_pretrained(folder, safe_serialization=True)
  if spec["legacy_attention_names"]:
    _to_legacy_attention_names(os.path.join(folder, "diffusion_pytorch_model.safetensors"))

  # The files on disk, read back by diffusers itself, must give the same output.
  reloaded = UNet2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
  np.testing.assert_array_equal(_run(reloaded, x, spec["t"], spec["labels"]), out)

  arrays = dict(x=x, t=spec["t"], out=out)
  if spec["labels"] is not None:
    arrays["y"] = spec["labels"]
  np.savez_compressed(os.path.join(DATA, f"unet_{name}_io.npz"), **arrays)
  print(
    f"{name}: {sum(p.numel() for p in model.parameters())} params, |out| rms {np.sqrt((out**2).mean()):.3f}"
  )


if __name__ == "__main__":
  logging.set_verbosity_error()
  os.makedirs(DATA, exist_ok=True)
  for i, (variant, spec) in enumerate(VARIANTS.items()):
    make(variant, spec, seed=i)
