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

import json
import re
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


def peak_rss_mb() -> float:
  with open("/proc/self/status") as f:
    return int(re.search(r"VmHWM:\s+(\d+)", f.read())[1]) / 1024


def reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


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
  out = sys.stdout
  sys.stdout = sys.stderr  # only answers go to the protocol stream
  side = None
  for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "setup":
      side = TorchSide(request)
      answer = {
        "params": side.params,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
      }
    elif op == "train":
      answer = {"seconds": side.train(request["steps"])}
    elif op == "forward":
      np.save(request["out"], side.forward(np.load(request["x"]), request["t"]))
      answer = {}
    elif op == "sample":
      seconds, x0 = side.sample(np.load(request["x_T"]))
      np.save(request["out"], x0)
      answer = {"seconds": seconds}
    elif op == "reset_peak":
      answer = {"reset": reset_peak_rss()}
    elif op == "peak":
      answer = {"peak_rss_mb": peak_rss_mb()}
    else:
      raise ValueError(f"unknown op {op!r}")
    out.write(json.dumps(answer) + "\n")
    out.flush()


if __name__ == "__main__":
  main()
