"""The README's picture: samples of the four digits recipes side by side, from short runs.

    python benchmarks/readme_grid.py --out=runs/readme_grid --figure=benchmarks/digits_samples.png

Trains, through the command line as a user would, the digits default (pixel U-Net), the digits
DiT, the digits autoencoder and a latent U-Net on its latents, and a consistency-distilled student
of the pixel run, each for the steps in RUNS (400 of the pixel and DiT configs' 800, 300 of the
autoencoder's 1000, 250 of the student's 500: about 12 CPU-minutes of user time in all), then
draws 100 samples of each with its config's sampler (`--mode=sample`) and writes a figure: per
model its first 20 samples (asked for the labels 0–9, twice). The runs are shorter than the
configs' own, so these samples are worse than the recipes' (their quality is measured in
benchmarks/RESULTS.md; at these lengths the samples mostly do not yet follow their labels: the
digits classifier agrees with 17% of the pixel run's); the figure shows what each recipe draws,
not a score. A workdir that already holds a run is resumed or reused (rerun after an
interruption).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent

# title, name, config, training steps, extra flags ({out} is the output folder)
RUNS = (
  ("pixel U-Net (10 UniPC steps)", "pixel", "configs/digits.py", 400, ()),
  ("DiT (10 UniPC steps)", "dit", "configs/digits_dit.py", 400, ()),
  ("autoencoder", "vae", "configs/digits_vae.py", 300, ()),
  (
    "latent U-Net (10 UniPC steps)",
    "latent",
    "configs/digits_latent.py",
    400,
    ("--config.autoencoder.path={out}/vae", "--config.autoencoder.cache={out}/vae_latents"),
  ),
  (
    "consistency model (1 step)",
    "cd",
    "configs/digits_cd.py",
    250,
    ("--config.teacher.workdir={out}/pixel",),
  ),
)
SHOWN = ("pixel", "latent", "dit", "cd")


def main_cli(*flags: str) -> None:
  """Runs `python -m jaxdiff.main` with the flags; stops the script if it fails."""
  command = [sys.executable, "-m", "jaxdiff.main", *flags]
  print(" ".join(command[1:]), flush=True)
  subprocess.run(command, cwd=ROOT, check=True)


def first_twenty(npz: pathlib.Path) -> np.ndarray:
  """(2·18, 10·18) grey image of the first 20 samples, two rows of ten, a black pixel between."""
  with np.load(npz) as f:
    images = f["arr_0"][:20, ..., 0].astype(np.float64)
  size = images.shape[1]
  if size != 16:  # the latent runs decode to 32×32: 2×2 means onto the others' grid
    images = images.reshape(-1, 16, size // 16, 16, size // 16).mean(axis=(2, 4))
  images = np.pad(images, ((0, 0), (1, 1), (1, 1)))
  rows = [np.concatenate(list(images[r * 10 : (r + 1) * 10]), axis=1) for r in range(2)]
  return np.concatenate(rows, axis=0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/readme_grid")
  parser.add_argument("--figure", default="benchmarks/digits_samples.png")
  args = parser.parse_args()
  out = pathlib.Path(args.out).resolve()
  start = time.perf_counter()
  npz = {}
  for _, name, config, steps, extra in RUNS:
    workdir = out / name
    flags = [f"--config={config}", f"--workdir={workdir}", *(e.format(out=out) for e in extra)]
    flags.append(f"--config.train.num_steps={steps}")
    main_cli(*flags)
    if name in SHOWN:
      main_cli(*flags, "--mode=sample")
      # the folder this command wrote or found: the newest (an older one, of other sample.*
      # options, may be there from an earlier run of the script)
      found = (workdir / "samples").glob("*/samples_100x*.npz")
      npz[name] = max(found, key=lambda path: path.stat().st_mtime)
  print(f"trained and sampled in {time.perf_counter() - start:.0f} s", flush=True)

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  titles = {name: title for title, name, *_ in RUNS}
  fig, axes = plt.subplots(2, 2, figsize=(10, 2.6))
  for ax, name in zip(axes.flat, SHOWN):
    ax.imshow(first_twenty(npz[name]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(titles[name], fontsize=10)
    ax.set_axis_off()
  fig.tight_layout()
  fig.savefig(args.figure, dpi=120)
  print(f"wrote {args.figure}")


if __name__ == "__main__":
  main()
