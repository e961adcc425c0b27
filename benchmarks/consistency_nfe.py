"""Consistency models against their teacher on the digits: NFE, digits Fréchet distance, seconds.

    python -m jaxdiff.main --workdir=workdir/digits                                 # the teacher
    python -m jaxdiff.main --config=configs/digits_cd.py --workdir=workdir/digits_cd \
      --config.teacher.workdir=workdir/digits
    python -m jaxdiff.main --config=configs/digits_ict.py --workdir=workdir/digits_ict
    python benchmarks/consistency_nfe.py --teacher=workdir/digits --cd=workdir/digits_cd \
      --ict=workdir/digits_ict [--num-samples=1000]

Each run is sampled from its newest checkpoint's EMA parameters with its own config.json (labels,
guidance as it was trained to be sampled) through jaxdiff's one generation path: the CD student
with 1 and 2 consistency steps of Algorithm 1 (sample.gamma = 1) and 2 and 4 at γ = 0.7, the
iCT model with 1 and 2 (at the default σ's and at those its config names), the teacher with
DDIM-50 (as `sample.sampler=ddim` defaults: leading, x̂_0 clipped; and trailing unclipped, its
best) and UniPC (bh2, order 2, trailing) at each --unipc-nfe. --num-samples images each, scored
by benchmarks/digits_quality.py (a held-out digits classifier's Fréchet distance, not FID).

Prints one JSON line per point: run, sampler, options, nfe (one guided evaluation is one),
frechet_distance, sample_seconds (wall seconds for all samples after compilation),
compile_seconds (the first batch less an average one), train_seconds (the run's last logged
wall_seconds: the training time of its last process), then one summary line with each point's
distance and speed against the teacher's DDIM-50 of the same run, and peak RSS. A run not given
is skipped. --plot=PATH also draws distance against NFE and against seconds (matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import sys

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from digits_quality import DigitsQuality  # noqa: E402
from sampler_nfe import timed_draw  # noqa: E402

from jaxdiff import run as run_lib  # noqa: E402
from jaxdiff.samplers import table  # noqa: E402

DDIM_DEFAULT = ("ddim", {"num_steps": 50})
DDIM_BEST = ("ddim", {"num_steps": 50, "spacing": "trailing", "clip_denoised": False})


def points(args):
  """(run name, workdir, sampler, options, NFE) of every point asked for."""
  unipc = [
    ("unipc", {"num_steps": n, "spacing": "trailing", "order": 2, "unipc_solver_type": "bh2"}, n)
    for n in map(int, args.unipc_nfe.split(","))
  ]
  wanted = {
    "teacher": [(*DDIM_DEFAULT, 50), (*DDIM_BEST, 50), *unipc],
    # CD: Algorithm 1 at the default σ's (γ = 1), and γ = 0.7 (configs/digits_cd.py's) for 2 and 4
    "cd": [
      ("consistency", {"num_steps": k, "gamma": gamma}, k)
      for k, gamma in ((1, 1.0), (2, 1.0), (2, 0.7), (4, 0.7))
    ],
    # iCT: one step, two at the default σ's and at the run's own (configs/digits_ict.py: its grid's)
    "ict": [("consistency", {"num_steps": k}, k) for k in (1, 2)] + own_two_steps(args.ict),
  }
  for name, variants in wanted.items():
    workdir = getattr(args, name)
    if workdir is not None:
      yield from ((name, workdir, *variant) for variant in variants)


def own_two_steps(workdir):
  """The two-step point at the σ's a run's config.json names, if it names two."""
  if workdir is None:
    return []
  sigmas = tuple(run_lib.saved_config(workdir).sample.sigmas)
  return [("consistency", {"num_steps": 2, "sigmas": sigmas}, 2)] if len(sigmas) == 2 else []


def with_sampler(config, sampler, options):
  """The config sampling with `sampler` and `options`, every other sampler option at its default
  (an option the sampler does not read must stay there)."""
  config = config.copy_and_resolve_references()
  config.sample.sampler = sampler
  for name, option in table.OPTIONS.items():
    config.sample[name] = options.get(name, option.default)
  return config


def train_seconds(workdir: pathlib.Path):
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  walls = [entry["wall_seconds"] for entry in logged if "wall_seconds" in entry]
  return round(walls[-1], 1) if walls else None


def plot(results, path):
  """Fréchet distance against NFE (left) and against sampling seconds (right), one series per
  run and sampler."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  series = {}
  for p in results:
    label = f"{p['run']} {p['sampler']}"
    if p["sampler"] == "ddim":
      label += (
        " (leading, clipped)" if p["options"] == DDIM_DEFAULT[1] else " (trailing, unclipped)"
      )
    if p["options"].get("gamma", 1.0) != 1.0:
      label += f" γ = {p['options']['gamma']}"
    if p["options"].get("sigmas"):
      label += f" σ = {', '.join(f'{v:.3g}' for v in p['options']['sigmas'])}"
    series.setdefault(label, []).append(p)
  for label, points in series.items():
    style = "o-" if len(points) > 1 else "s"
    for ax, x in zip(axes, ("nfe", "sample_seconds")):
      ax.plot([q[x] for q in points], [q["frechet_distance"] for q in points], style, label=label)
  axes[0].set(xscale="log", xlabel="network evaluations (NFE)", ylabel="digits Fréchet distance")
  axes[1].set(xscale="log", xlabel=f"seconds for {results[0]['num_samples']} samples")
  axes[0].set_yscale("log")
  axes[1].legend(fontsize=8)
  fig.suptitle("Consistency models against their teacher on the digits")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--teacher", type=pathlib.Path)
  parser.add_argument("--cd", type=pathlib.Path)
  parser.add_argument("--ict", type=pathlib.Path)
  parser.add_argument("--num-samples", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=500)
  parser.add_argument("--unipc-nfe", default="5,10")
  parser.add_argument("--plot", type=pathlib.Path, help="write the figure here (PNG)")
  args = parser.parse_args()
  quality = DigitsQuality()
  loaded, results = {}, []
  for name, workdir, sampler, options, nfe in points(args):
    if name not in loaded:
      # the run as it was trained; a distillation's checkpoint holds its teacher already
      run = run_lib.setup(run_lib.saved_config(workdir), workdir)
      loaded[name] = (run, *run_lib.restore_for_inference(run))
    run, step, state = loaded[name]
    config = with_sampler(run.config, sampler, options)
    batch = min(args.batch_size, args.num_samples)
    images, labels, seconds, compile_s = timed_draw(
      dataclasses.replace(run, config=config), state, step, args.num_samples, batch
    )
    point = {
      "run": name,
      "sampler": sampler,
      "options": options,
      "nfe": nfe,
      "frechet_distance": round(quality.evaluate(images, labels)["frechet_distance"], 4),
      "sample_seconds": round(seconds, 3),
      "compile_seconds": round(compile_s, 2),
      "train_seconds": train_seconds(workdir),
      "checkpoint_step": step,
      "num_samples": args.num_samples,
    }
    results.append(point)
    print(json.dumps(point), flush=True)
  for run, _, _ in loaded.values():
    run.checkpointer.close()
  teacher = {json.dumps(p["options"]): p for p in results if p["run"] == "teacher"}
  default = teacher.get(json.dumps(DDIM_DEFAULT[1]))
  best = teacher.get(json.dumps(DDIM_BEST[1]))
  summary = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
  if default is not None:
    ratio = lambda p, ref: round(p["frechet_distance"] / ref["frechet_distance"], 3)
    summary["against_teacher_ddim50"] = [
      {
        "run": p["run"],
        "sampler": p["sampler"],
        "nfe": p["nfe"],
        "distance_ratio_to_default_ddim50": ratio(p, default),
        "distance_ratio_to_best_ddim50": ratio(p, best) if best else None,
        "speedup_over_default_ddim50": round(
          default["sample_seconds"] / max(p["sample_seconds"], 1e-9), 1
        ),
      }
      for p in results
    ]
  print(json.dumps(summary))
  if args.plot and results:
    plot(results, args.plot)


if __name__ == "__main__":
  main()
