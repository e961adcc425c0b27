"""Sample quality against network evaluations (NFE) for every sampler, on a trained digits run.

    python -m jaxdiff.main --workdir=workdir/digits            # train the digits default first
    python benchmarks/sampler_nfe.py --workdir=workdir/digits [--num-samples=1000] [--plot=F.png]

For each sampler variant and NFE in --nfe (where the sampler is defined at that NFE: Heun makes
2n − 1 calls for n steps, so only odd NFE), draws --num-samples EMA samples through jaxdiff's one
generation path (classifier-free guidance as configured; one NFE is one guided evaluation) and
scores them with benchmarks/digits_quality.py (a held-out digits classifier's Fréchet distance,
not FID). Prints one JSON line per point (sampler, options, nfe, frechet_distance, sample_seconds:
wall seconds for all samples after compilation, compile_seconds: the first batch's time less
an average batch) and, at the end, per variant the smallest NFE within 10% of DDIM-50's distance
(DDIM-50 as the digits default drew before, leading and clipped, and unclipped with trailing); --plot writes the curves as a PNG (matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from digits_quality import DigitsQuality  # noqa: E402

from jaxdiff import config as config_lib  # noqa: E402
from jaxdiff import generate  # noqa: E402
from jaxdiff import run as run_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# name → (sampler, sample.* options, NFE → num_steps or None where undefined)
VARIANTS = {
  "ddim_leading": ("ddim", {"spacing": "leading"}, lambda nfe: nfe),
  "ddim_trailing": ("ddim", {"spacing": "trailing"}, lambda nfe: nfe),
  # x̂0 clipping is DDIM's default in pixel space; with guidance it costs the digits model a lot
  "ddim_trailing_unclipped": (
    "ddim",
    {"spacing": "trailing", "clip_denoised": False},
    lambda nfe: nfe,
  ),
  "euler": ("euler", {"spacing": "trailing"}, lambda nfe: nfe),
  "euler_karras": ("euler", {"spacing": "trailing", "use_karras_sigmas": True}, lambda n: n),
  "heun": ("heun", {"spacing": "trailing"}, lambda nfe: (nfe + 1) // 2 if nfe % 2 else None),
  "euler_ancestral": ("euler_ancestral", {"spacing": "trailing"}, lambda nfe: nfe),
  "dpm_solver_2m": ("dpm_solver", {"spacing": "trailing", "order": 2}, lambda nfe: nfe),
  "dpm_solver_3m": ("dpm_solver", {"spacing": "trailing", "order": 3}, lambda nfe: nfe),
  "unipc_bh2": ("unipc", {"spacing": "trailing", "order": 2}, lambda nfe: nfe),
}


def load_config(path: pathlib.Path):
  return config_lib.load_file(path)


def draw(run, state, step, sampler, options, num_steps, count, batch_size):
  """(uint8 images, labels, sample seconds after compilation, compile seconds)."""
  config = run.config.copy_and_resolve_references()
  config.sample.sampler, config.sample.num_steps = sampler, num_steps
  for key, value in options.items():
    config.sample[key] = value
  return timed_draw(dataclasses.replace(run, config=config), state, step, count, batch_size)


def timed_draw(run, state, step, count, batch_size):
  """The first `count` samples --mode=sample draws with `run`'s config: (uint8 images, labels,
  sample seconds after compilation, compile seconds). Shared by the benchmarks that time samples."""
  generator = generate.Generator(run, batch_size)
  key = generate.sample_key(run.config, step)
  start = time.perf_counter()
  generator.batch(state.ema_params, key, 0)  # compiles; its images are drawn again below
  first = time.perf_counter() - start
  start = time.perf_counter()
  batches = [generator.batch(state.ema_params, key, b) for b in range(-(-count // batch_size))]
  seconds = time.perf_counter() - start
  images = np.concatenate([b[0] for b in batches])[:count]
  labels = None if batches[0][1] is None else np.concatenate([b[1] for b in batches])[:count]
  return images, labels, seconds, first - seconds / len(batches)


def plot(points, reference, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in VARIANTS:
    mine = [p for p in points if p["variant"] == name]
    if mine:
      ax.plot([p["nfe"] for p in mine], [p["frechet_distance"] for p in mine], "o-", label=name)
  ax.axhline(1.1 * reference, color="gray", ls="--", lw=1, label="1.1 × best DDIM-50")
  ax.set(
    xscale="log",
    yscale="log",
    xlabel="network evaluations (NFE)",
    ylabel="digits classifier Fréchet distance",
  )
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--config", default=str(ROOT / "configs" / "digits.py"))
  parser.add_argument("--num-samples", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=500)
  parser.add_argument("--nfe", default="1,2,4,5,8,10,15,20,50")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--plot", type=pathlib.Path)
  args = parser.parse_args()
  config = load_config(pathlib.Path(args.config))
  run = run_lib.setup(config, args.workdir)
  step, state = run_lib.restore_for_inference(run)
  quality = DigitsQuality()
  points = []
  for name in args.variants.split(","):
    sampler, options, steps_for = VARIANTS[name]
    for nfe in map(int, args.nfe.split(",")):
      num_steps = steps_for(nfe)
      if num_steps is None:
        continue
      images, labels, seconds, compile_s = draw(
        run, state, step, sampler, options, num_steps, args.num_samples, args.batch_size
      )
      score = quality.evaluate(images, labels)
      point = {
        "variant": name,
        "sampler": sampler,
        "options": options,
        "nfe": nfe,
        "num_steps": num_steps,
        "frechet_distance": round(score["frechet_distance"], 4),
        "label_accuracy": score["label_accuracy"],
        "sample_seconds": round(seconds, 2),
        "compile_seconds": round(compile_s, 2),
        "num_samples": args.num_samples,
        "checkpoint_step": step,
      }
      points.append(point)
      print(json.dumps(point), flush=True)
  # DDIM-50 as the digits default drew before (leading, clipped) and at its best (unclipped)
  references = {
    name: p["frechet_distance"]
    for name in ("ddim_leading", "ddim_trailing_unclipped")
    for p in points
    if p["variant"] == name and p["nfe"] == 50
  }
  for name in VARIANTS:
    mine = [p for p in points if p["variant"] == name]
    summary = {"variant": name}
    for ref, distance in references.items():
      within = [p["nfe"] for p in mine if p["frechet_distance"] <= 1.1 * distance]
      summary[f"smallest_nfe_within_10pct_of_{ref}_50"] = min(within, default=None)
    if mine:
      print(json.dumps(summary))
  if args.plot and references:
    plot(points, min(references.values()), args.plot)
  run.checkpointer.close()


if __name__ == "__main__":
  main()
