"""Make the diffusers reference data that tests/test_autoencoder.py checks jaxdiff's KL-autoencoder
and `jaxdiff.convert.load_diffusers_vae` against.

Run from the repository root with a PyTorch environment (never needed by jaxdiff itself):

    pip install torch==2.13.0 diffusers==0.42.1 safetensors numpy
    python tests/make_diffusers_vae_reference.py

It builds a tiny `AutoencoderKL` (3 levels of 8/16/16 channels, one res block per level, 4 latent
channels, 4 groups), draws every weight afresh at a scale that keeps activations near unit size
(convs and linears N(0, 1/fan_in), biases N(0, 0.1²), GroupNorm scales 1 + N(0, 0.2²) and biases
N(0, 0.2²)), so that a mis-mapped tensor shows up, and saves it with `save_pretrained` under
tests/data/vae_kl/. Weights are stored in float16 to keep the files small; the reference is computed
in float32 from the same rounded weights. tests/data/diffusers_vae_reference.npz holds, NHWC:
images `x`, the posterior's `mean` and (clamped) `logvar` for them, latents `z` and `decoded`, the
decoder's output for `z`. The test derives the legacy attention names (query/key/value/proj_attn)
from the saved file itself.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.utils import logging

SAVE_DTYPE = torch.float16
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FOLDER = os.path.join(DATA, "vae_kl")
CONFIG = {
  "in_channels": 3,
  "out_channels": 3,
  "down_block_types": ("DownEncoderBlock2D",) * 3,
  "up_block_types": ("UpDecoderBlock2D",) * 3,
  "block_out_channels": (8, 16, 16),
  "layers_per_block": 1,
  "latent_channels": 4,
  "norm_num_groups": 4,
  "sample_size": 16,
  # SDXL's value rather than the default, so the test sees that it is read from the folder.
  "scaling_factor": 0.13025,
}


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
  def normal(shape, std):
    return std * torch.randn(shape, generator=generator)

  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.GroupNorm):
        module.weight.copy_(1 + normal(module.weight.shape, 0.2))
        module.bias.copy_(normal(module.bias.shape, 0.2))
      elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(normal(module.weight.shape, fan_in**-0.5))
        module.bias.copy_(normal(module.bias.shape, 0.1))
    for p in model.parameters():
      # Round to the stored precision so the reference uses exactly the weights on disk.
      p.copy_(p.to(SAVE_DTYPE).float())


def _nchw(a: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(a).permute(0, 3, 1, 2)


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.permute(0, 2, 3, 1).numpy()


def _run(model: AutoencoderKL, x: np.ndarray, z: np.ndarray) -> dict:
  with torch.no_grad():
    posterior = model.encode(_nchw(x)).latent_dist
    decoded = model.decode(_nchw(z)).sample
  return {
    "mean": _nhwc(posterior.mean),
    "logvar": _nhwc(posterior.logvar),
    "decoded": _nhwc(decoded),
  }


def main() -> None:
  torch.manual_seed(0)
  model = AutoencoderKL(**CONFIG).eval()
  _randomize(model, torch.Generator().manual_seed(0))

  rng = np.random.default_rng(0)
  size, f = CONFIG["sample_size"], 2 ** (len(CONFIG["block_out_channels"]) - 1)
  x = rng.standard_normal((2, size, size, CONFIG["in_channels"])).astype(np.float32)
  z = rng.standard_normal((2, size // f, size // f, CONFIG["latent_channels"])).astype(np.float32)
  out = _run(model, x, z)

  model.to(SAVE_DTYPE).save_pretrained(FOLDER, safe_serialization=True)
  # The files on disk, read back by diffusers itself, must give the same outputs.
  reloaded = AutoencoderKL.from_pretrained(FOLDER, torch_dtype=torch.float32).eval()
  for name, value in _run(reloaded, x, z).items():
    np.testing.assert_array_equal(value, out[name])

  np.savez_compressed(os.path.join(DATA, "diffusers_vae_reference.npz"), x=x, z=z, **out)
  rms = {k: float(np.sqrt((v**2).mean())) for k, v in out.items()}
  print(f"{sum(p.numel() for p in model.parameters())} params, rms {rms}")


if __name__ == "__main__":
  logging.set_verbosity_error()
  main()
