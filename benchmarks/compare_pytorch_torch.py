"""The PyTorch side of benchmarks/compare_pytorch.py: a diffusers `UNet2DModel` worker.

compare_pytorch.py starts it under --torch-python, an interpreter with torch and diffusers (no jax
needed there):

    pip install torch --index-url https://download.pytorch.org/whl/cpu diffusers

and drives it one JSON request per stdin line, one JSON answer per stdout line (diffusers' own
messages go to stderr). Requests, by "op":
  setup   {config, train_batch, sample_batch, sample_steps, threads, seed, weights_dir}: builds the
          model (float32, eval-mode dropout off: dropout is 0) and saves its initial weights with
          save_pretrained to weights_dir so the jaxdiff side runs the very same network.
  forward {x: path of an .npy NHWC array, t, out: path}: the eval-mode model output at timestep t.
  sample  {x_T: path of an .npy NHWC array, out: path}: one timed DDIM loop (DDIMScheduler as
          jaxdiff's ddim: η = 0, leading spacing, x0 clipped to [-1, 1], ᾱ_final = 1); writes x_0.
  train   {steps}: that many timed Adam steps of ε-MSE on one fixed random batch.
  reset_peak / peak: resets / reads the process's peak RSS (VmHWM).
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# diffusers imports torchvision when it is installed, and a torchvision built for another torch
# breaks that import ("operator torchvision::nms does not exist"); the U-Net needs none of it.
sys.modules.setdefault("torchvision", None)
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils import logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_pytorch import serve  # noqa: E402  (stdlib and numpy only at import)


class TorchSide:
  def __init__(self, spec: dict):
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    self.model = UNet2DModel(**spec["config"])
    self.model.save_pretrained(spec["weights_dir"])
    self.params = sum(p.numel() for p in self.model.parameters())
    self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    self.ddim = DDIMScheduler(
      num_train_timesteps=1000,
      beta_schedule="linear",
      clip_sample=True,
      set_alpha_to_one=True,
      steps_offset=0,
      timestep_spacing="leading",
    )
    self.sample_steps = spec["sample_steps"]
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
    c = spec["config"]
    shape = (spec["train_batch"], c["in_channels"], c["sample_size"], c["sample_size"])
    self.x0 = torch.rand(shape) * 2 - 1

  def setup_info(self) -> dict:
    return {"params": self.params, "torch": torch.__version__, "threads": torch.get_num_threads()}

  def train(self, steps: int) -> float:
    self.model.train()
    start = time.perf_counter()
    for _ in range(steps):
      noise = torch.randn_like(self.x0)
      t = torch.randint(0, 1000, (len(self.x0),))
      x_t = self.noise_scheduler.add_noise(self.x0, noise, t)
      loss = F.mse_loss(self.model(x_t, t).sample, noise)
      loss.backward()
      self.optimizer.step()
      self.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start

  def forward(self, x: np.ndarray, t: int) -> np.ndarray:
    self.model.eval()
    with torch.inference_mode():
      out = self.model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), t).sample
    return out.permute(0, 2, 3, 1).numpy()

  def sample(self, x_T: np.ndarray) -> tuple[float, np.ndarray]:
    self.model.eval()
    x = torch.from_numpy(x_T).permute(0, 3, 1, 2).contiguous()
    start = time.perf_counter()
    with torch.inference_mode():
      self.ddim.set_timesteps(self.sample_steps)
      for t in self.ddim.timesteps:
        eps = self.model(x, t).sample
        x = self.ddim.step(eps, t, x, eta=0.0).prev_sample
    seconds = time.perf_counter() - start
    return seconds, x.permute(0, 2, 3, 1).numpy()


def main():
  logging.set_verbosity_error()
  serve(TorchSide)


if __name__ == "__main__":
  main()
