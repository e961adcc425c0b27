"""The seed's comparison on the digits: the VAE's own samples vs pixel and latent diffusion.

    python -m jaxdiff.main --workdir=runs/pixel                                   # digits default
    python -m jaxdiff.main --config=configs/digits_vae.py --workdir=runs/vae
    python -m jaxdiff.main --config=configs/digits_latent.py --workdir=runs/latent \\
        --config.autoencoder.path=runs/vae
    python benchmarks/vae_vs_diffusion.py --pixel=runs/pixel --vae=runs/vae --latent=runs/latent \\
        --figure=benchmarks/vae_vs_diffusion.png

Prints one JSON line per model and a markdown table, and writes a figure (a row of samples from
each model beside real digits). Per model, on N samples (1000 by default; 100 of each class for the
class-conditional diffusion models, the VAE's prior draws are unconditional):
  frechet_distance, label_accuracy  benchmarks/digits_quality.py (32×32 images are averaged 2×2
                                    to the 16×16 grid first; lower distance is better)
  sharpness, sharpness_real         mean |∇x| (finite differences, pixels in [0, 1]) of the samples
                                    and of the real digits on the same 16×16 grid: a blurry model
                                    has less edge energy than the data
  bits_per_dim                      the test split's bound: the VAE's ELBO (its decoder N(x̂, σ_x²)
                                    integrated per 8-bit bin) and the pixel model's diffusion
                                    bound; none for the latent model (its bound is on latents)
  seconds_per_image                 sampling wall time after compilation, batch 500
Each model's own config is read from its workdir (config.json), so the runs are scored as trained.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from digits_quality import DigitsQuality, digits_16x16  # noqa: E402
from sampler_nfe import timed_draw  # noqa: E402

from jaxdiff import evaluation  # noqa: E402
from jaxdiff import run as run_lib  # noqa: E402


def to_16x16(images: np.ndarray) -> np.ndarray:
  """uint8 (N, S, S, 1) → float (N, 16, 16) in [0, 1], 2×2 means for S = 32."""
  x = np.asarray(images, np.float64)[..., 0] / 255.0
  if x.shape[1] == 32:
    x = x.reshape(-1, 16, 2, 16, 2).mean(axis=(2, 4))
  return x


def sharpness(images16: np.ndarray) -> float:
  """Mean absolute finite-difference gradient, both directions, of images in [0, 1]."""
  dx = np.abs(np.diff(images16, axis=2)).mean()
  dy = np.abs(np.diff(images16, axis=1)).mean()
  return float((dx + dy) / 2)


def draw(workdir: pathlib.Path, count: int, batch_size: int):
  """(uint8 images, labels or None, seconds per image after compilation) of the run in `workdir`,
  sampled with its own config."""
  config = run_lib.saved_config(workdir)
  config.sample.batch_size = batch_size
  run = run_lib.setup(config, workdir)
  step, state = run_lib.restore_for_inference(run)
  images, labels, seconds, _ = timed_draw(run, state, step, count, batch_size)
  return images, labels, seconds / count


def bound(config, workdir) -> float | None:
  """The test split's bits/dim (--mode=eval), None for a latent run (its bound is on latents)."""
  config.eval.bits_per_dim, config.eval.num_samples = True, 0
  config.eval.batch_size = 54  # the 270 test digits in 5 batches
  try:
    return evaluation.evaluate(config, workdir)["eval_bpd"]
  except run_lib.RunError:  # "eval.bits_per_dim is a bound on pixels …"
    return None


def figure(rows: dict, real: np.ndarray, path: pathlib.Path, per_row: int = 10):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = ["real digits", *rows]
  fig, axes = plt.subplots(len(names), per_row, figsize=(per_row * 0.8, len(names) * 0.9))
  for r, name in enumerate(names):
    images = real if r == 0 else rows[name]
    for c in range(per_row):
      ax = axes[r, c]
      ax.imshow(images[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pixel", type=pathlib.Path, required=True, help="digits default workdir")
  parser.add_argument("--vae", type=pathlib.Path, required=True, help="digits_vae workdir")
  parser.add_argument("--latent", type=pathlib.Path, required=True, help="digits_latent workdir")
  parser.add_argument("--num-samples", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=500)
  parser.add_argument("--figure", type=pathlib.Path)
  args = parser.parse_args()

  quality = DigitsQuality()
  images, labels = digits_16x16()
  real16 = images["test"][..., 0] / 255.0
  real_sharpness = sharpness(real16)
  models = {
    "VAE (prior samples)": args.vae,
    "pixel diffusion": args.pixel,
    "latent diffusion": args.latent,
  }
  rows, table = {}, []
  for name, workdir in models.items():
    samples, sample_labels, per_image = draw(workdir, args.num_samples, args.batch_size)
    small = to_16x16(samples)
    scored = quality.evaluate(np.round(small * 255).astype(np.uint8), sample_labels)
    result = {
      "model": name,
      "workdir": str(workdir),
      "num_samples": len(samples),
      "frechet_distance": scored["frechet_distance"],
      "label_accuracy": scored["label_accuracy"],
      "sharpness": sharpness(small),
      "sharpness_real": real_sharpness,
      "bits_per_dim": bound(run_lib.saved_config(workdir), workdir),
      "seconds_per_image": per_image,
    }
    print(json.dumps(result), flush=True)
    table.append(result)
    order = np.argsort(sample_labels, kind="stable") if sample_labels is not None else None
    rows[name] = small if order is None else small[order][:: max(1, len(small) // 10)]
  print("\n| model | Fréchet distance | label accuracy | sharpness (real: %.4f) | bits/dim | s/image |"
        % real_sharpness)  # fmt: skip
  print("|---|---|---|---|---|---|")
  for r in table:
    acc = "—" if r["label_accuracy"] is None else f"{r['label_accuracy']:.3f}"
    bpd = "—" if r["bits_per_dim"] is None else f"{r['bits_per_dim']:.3f}"
    print(
      f"| {r['model']} | {r['frechet_distance']:.2f} | {acc} | {r['sharpness']:.4f} | {bpd} | "
      f"{r['seconds_per_image'] * 1e3:.2f} ms |"
    )
  if args.figure:
    real_rows = real16[np.argsort(labels["test"], kind="stable")][:: len(real16) // 10]
    figure(rows, real_rows, args.figure)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
  main()
