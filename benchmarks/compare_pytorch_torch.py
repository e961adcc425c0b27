"""The PyTorch side of benchmarks/compare_pytorch.py: a diffusers `UNet2DModel` or
`DiTTransformer2DModel` worker.

compare_pytorch.py starts it under --torch-python, an interpreter with torch and diffusers (no jax
needed there):

    pip install torch --index-url https://download.pytorch.org/whl/cpu diffusers

and drives it one JSON request per stdin line, one JSON answer per stdout line (diffusers' own
messages go to stderr). Requests, by "op":
  setup   {network, config, train_batch, sample_batch, train_labels, sample_labels, sample_steps,
          threads, seed, weights_dir}: builds the model (float32, dropout 0) and saves its initial
          weights to weights_dir so the jaxdiff side runs the very same network: a U-Net with
          save_pretrained, a DiT (its blocks sharing one embedder, label dropout off) as
          dit_original.npz in facebookresearch/DiT's names and layout. The labels (None for the
          U-Net) condition every train and sample call.
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
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from diffusers.utils import logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from workers import serve  # noqa: E402  (stdlib and numpy only)


def build_unet(spec: dict):
  model = UNet2DModel(**spec["config"])
  model.save_pretrained(spec["weights_dir"])
  return model, lambda x, t, labels: model(x, t).sample


def original_dit_state_dict(model: DiTTransformer2DModel) -> dict:
  """The weights under facebookresearch/DiT's names (the inverse of diffusers' conversion)."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  emb = "transformer_blocks.0.norm1.emb."
  out = {
    "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
    "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
    "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"],
    "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
    "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
    "final_layer.linear.weight": sd["proj_out_2.weight"],
    "final_layer.linear.bias": sd["proj_out_2.bias"],
  }
  for theirs, ours in (("linear_1", "mlp.0"), ("linear_2", "mlp.2")):
    for leaf in ("weight", "bias"):
      out[f"t_embedder.{ours}.{leaf}"] = sd[f"{emb}timestep_embedder.{theirs}.{leaf}"]
  for i in range(len(model.transformer_blocks)):
    block = f"transformer_blocks.{i}."
    renamed = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "attn.proj"}
    renamed.update({"ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2"})
    for leaf in ("weight", "bias"):
      for theirs, ours in renamed.items():
        out[f"blocks.{i}.{ours}.{leaf}"] = sd[f"{block}{theirs}.{leaf}"]
      qkv = [sd[f"{block}attn1.to_{name}.{leaf}"] for name in "qkv"]
      out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate(qkv, axis=0)
  return out


def build_dit(spec: dict):
  model = DiTTransformer2DModel(**spec["config"])
  shared = model.transformer_blocks[0].norm1.emb
  shared.class_embedder.dropout_prob = 0.0
  for block in model.transformer_blocks[1:]:
    block.norm1.emb = shared
  path = pathlib.Path(spec["weights_dir"])
  path.mkdir(parents=True, exist_ok=True)
  np.savez(path / "dit_original.npz", **original_dit_state_dict(model))
  return model, lambda x, t, labels: model(x, timestep=t, class_labels=labels).sample


# network -> build(setup request) -> (model, call(x, t (B,), labels) -> output NCHW)
NETWORKS = {"unet": build_unet, "dit": build_dit}


class TorchSide:
  def __init__(self, spec: dict):
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    self.model, self.call = NETWORKS[spec["network"]](spec)
    # shared modules (the DiT's one embedder) are counted once, as jaxdiff counts them
    self.params = sum(p.numel() for p in self.model.parameters())
    self.train_labels, self.sample_labels = (
      None if spec[name] is None else torch.tensor(spec[name])
      for name in ("train_labels", "sample_labels")
    )
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
    self.channels = c["in_channels"]

  def epsilon(self, x, t, labels):
    """The prediction: a learned variance's channels follow ε's (dropped as jaxdiff does)."""
    return self.call(x, t.expand(len(x)), labels)[:, : self.channels]

  def setup_info(self) -> dict:
    return {"params": self.params, "torch": torch.__version__, "threads": torch.get_num_threads()}

  def train(self, steps: int) -> float:
    self.model.train()
    start = time.perf_counter()
    for _ in range(steps):
      noise = torch.randn_like(self.x0)
      t = torch.randint(0, 1000, (len(self.x0),))
      x_t = self.noise_scheduler.add_noise(self.x0, noise, t)
      loss = F.mse_loss(self.epsilon(x_t, t, self.train_labels), noise)
      loss.backward()
      self.optimizer.step()
      self.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start

  def forward(self, x: np.ndarray, t: int) -> np.ndarray:
    self.model.eval()
    with torch.inference_mode():
      x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
      out = self.call(x, torch.full((len(x),), t), self.sample_labels)
    return out.permute(0, 2, 3, 1).numpy()

  def sample(self, x_T: np.ndarray) -> tuple[float, np.ndarray]:
    self.model.eval()
    x = torch.from_numpy(x_T).permute(0, 3, 1, 2).contiguous()
    start = time.perf_counter()
    with torch.inference_mode():
      self.ddim.set_timesteps(self.sample_steps)
      for t in self.ddim.timesteps:
        eps = self.epsilon(x, t, self.sample_labels)
        x = self.ddim.step(eps, t, x, eta=0.0).prev_sample
    seconds = time.perf_counter() - start
    return seconds, x.permute(0, 2, 3, 1).numpy()


def main():
  logging.set_verbosity_error()
  serve(TorchSide)


if __name__ == "__main__":
  main()
