"""The seed's closing table, measured: VAE, GAN and diffusion on stacked digits (1,000 modes).

    python benchmarks/trilemma.py --out=runs/trilemma            # the full run (~60 min, 2 cores)
    python benchmarks/trilemma.py --out=runs/trilemma --quick    # every row at toy budgets (~5 min)
    python benchmarks/trilemma.py --out=runs/mine --workdir GAN=runs/gan --sweep-seconds=0  # your runs
    python benchmarks/trilemma.py --out=runs/trilemma --data=digits   # the same on the digits

Trains, with jaxdiff's own configs, one run of each family — the VAE (its prior samples), the GAN,
pixel diffusion, a flow-matching model (rectified flow, as SD3 trains it), latent diffusion (on that
VAE's latents) and the consistency-distilled student of the pixel model (1 step) — each for the
same wall-clock budget on this CPU: every family's training
rate is measured first (a short calibration run), and its steps are set to budget × rate. Then:

  stability      each family again with 3 seeds × 2 learning rates (its config's and 2×), at the
                 sweep budget: how many of the 6 runs fail — the loss became non-finite, or the run
                 covers fewer than half the modes the family's best run covers (collapse) — and
                 the spread (min–max) of the Fréchet distance of the others, on --sweep-samples
  quality        Fréchet distance on the digits classifier's features (the three channels'
                 hidden features side by side, against the real stacked test images), and
                 sharpness: mean |∇x| of the samples against the real images'
  mode coverage  modes covered of 1,000 and KL(mode histogram ‖ uniform) in nats, on --samples
                 (jaxdiff/metrics/modes.py), beside the real training triples' at the same N
  likelihood     bits/dim on the same test images: the VAE's ELBO, the pixel model's diffusion
                 bound, the flow model's probability-flow ODE (ODE below); none for the GAN, the
                 consistency model and the latent model (whose bound is on latents)
  speed          network evaluations per image and ms per image after compilation, batch 500
                 (the median batch), the sampler's compile seconds and XLA's count of its
                 program's memory; beside it each family's training rate (its calibration
                 run's fastest call), compile seconds and the calibration process's peak RSS
  loss           what each minimises

The GAN gets what its literature uses: R1, an EMA generator, Adam β₁ = 0, and a sweep of the
discriminator/generator learning-rate ratio (1, 2, 4) at the sweep budget, the best of which
(lowest Fréchet distance) is what the headline and the stability rows use (its run at that ratio is
the stability sweep's run of the same seed at 1×). Prints one JSON line per
result, a markdown table, and writes a figure (quality vs coverage vs speed) with --figure.

Budgets: 180 s of training per headline run, 20 s per sweep run (the GAN's ratio sweep too), 10,000
samples per headline run and 1,000 per sweep run, bits/dim on the first 256 test images.

--quick: 6 s of training per run, 300 samples (200 in the sweep), bits/dim on 16 test images (the
flow's with 10 RK4 steps), one seed × 2 learning rates (the headline run is the sweep's 1× run),
the GAN at its config's ratio (no ratio sweep), one step per call, calibration in this process (no
peak RSS) and JAX's persistent compilation cache in OUT/compile_cache: every row, and numbers that
say nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import shutil
import sys
import time

from jaxdiff import cpu

cpu.apply_xla_flags()  # first: the XLA:CPU flag must precede JAX's backend

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from digits_quality import frechet_distance

from jaxdiff import config as config_lib
from jaxdiff import evaluation, generate, metrics, models, shipped_configs
from jaxdiff import run as run_lib
from jaxdiff.data import stacked_digits
from jaxdiff.metrics.digits_classifier import DigitsFeatures, digits_split
from jaxdiff.train import loop


@dataclasses.dataclass(frozen=True)
class Family:
  config: str  # a shipped config
  loss: str  # what it minimises, for the table
  needs: str | None = None  # the family whose headline workdir it builds on
  overrides: dict = dataclasses.field(default_factory=dict)


# the unconditional 3-channel versions of the digits configs (stacked digits); --data=digits keeps
# the digits' own settings but unconditional too, so every family samples the same way
UNCONDITIONAL = {
  "model.class_conditional": False,
  "model.class_dropout": 0.0,
  "sample.guidance_scale": 1.0,
}
# Every family models the same 16×16 pixels, so bits/dim are comparable: the VAE is the digits
# autoencoder's recipe at 16×16 with two levels (f = 2 → the same 8×8×4 latents as digits_vae's f = 4
# at 32×32), and latent diffusion runs on those latents.
AT_16 = {"data.image_size": 16}
FAMILIES = {
  "VAE": Family(
    "digits_vae",
    "−ELBO: ‖x − x̂‖²/2σ² + KL(q(z|x) ‖ N(0, I))",
    overrides={**AT_16, "model.block_out_channels": (16, 32)},
  ),
  "GAN": Family("digits_gan", "non-saturating GAN loss + R1 (γ/2·‖∇D(x)‖²)"),
  "pixel diffusion": Family("digits", "v-prediction MSE, Min-SNR-5 (a weighted ELBO)"),
  "flow matching": Family("digits_flow", "flow matching: ‖v̂ − (ε − x₀)‖², σ ~ logit-normal"),
  "latent diffusion": Family(
    "digits_latent", "v-prediction MSE on the VAE's latents", needs="VAE", overrides=AT_16
  ),
  "consistency (1 step)": Family(
    "digits_cd",
    "pseudo-Huber consistency distillation",
    needs="pixel diffusion",
    overrides={"consistency.teacher_guidance": 1.0},
  ),
}
GAN_RATIOS = (1.0, 2.0, 4.0)


def make_config(family: Family, data: str, overrides: dict):
  config = config_lib.load_file(shipped_configs.shipped(family.config))
  wanted = {**UNCONDITIONAL, **family.overrides}
  if data == "stacked_digits":
    wanted.update({"data.name": "stacked_digits", "data.channels": 3, "data.num_classes": None})
  config.update_from_flattened_dict({**wanted, **overrides})
  config_lib.validate(config)
  return config


def given_mismatch(name: str, folder: pathlib.Path, data: str) -> str | None:
  """Why the workdir `folder` cannot stand for the family `name` on `data` (None if it can): its
  network, loss and codec must be the family's config's, its data `data`, its model unconditional."""
  saved = run_lib.saved_config(folder)
  family = FAMILIES[name]
  want = config_lib.load_file(shipped_configs.shipped(family.config))
  keys = ("model.arch", "diffusion.loss", "codec.name")
  read = lambda c, key: c[key.split(".")[0]][key.split(".")[1]]
  for key in keys:
    if read(saved, key) != read(want, key):
      return (f"{folder} is a {read(saved, key)!r} run ({key}), not the {name} of "
              f"configs/{family.config}.py ({key}={read(want, key)!r})")  # fmt: skip
  if saved.data.name != data:
    return f"{folder} was trained on data.name={saved.data.name!r}, this table is on {data!r}"
  if saved.model.get("class_conditional"):
    return f"{folder} is class-conditional; the models of this table are unconditional"
  return None


def use_compile_cache(folder) -> None:
  """JAX's persistent compilation cache in `folder` (--quick: the runs of one family share their
  programs, so each compiles once; its compile seconds are then partly cache loads)."""
  import jax

  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _calibration_child(config, workdir: str, steps: int, cache) -> dict:
  """Runs in a fresh process (its peak RSS is the run's own): `steps` steps logged every call."""
  import resource

  if cache:
    use_compile_cache(cache)
  config.train.num_steps, config.train.log_every = steps, config.train.steps_per_call
  config.train.checkpoint_every, config.train.sample_every = steps, 0
  loop.train(config, pathlib.Path(workdir))
  lines = [
    json.loads(x) for x in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  ]
  rates = [x["steps_per_sec"] for x in lines if "steps_per_sec" in x]
  return {"rates": rates, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def calibrate(config, workdir: pathlib.Path, calls: int = 5, cache=None, here=False) -> dict:
  """The family's training rate after compilation, from a calibration run of `calls` calls in a
  process of its own: the fastest call after the first (the least disturbed by anything else on
  the machine, so budgets are fair when it is busy), the first call's extra time (compilation and
  the input pipeline's start), and the process's peak RSS. `here` (--quick): in this process,
  without the peak RSS, which would be this process's."""
  import concurrent.futures
  import multiprocessing

  shutil.rmtree(workdir, ignore_errors=True)
  per_call = config.train.steps_per_call
  arguments = (config.copy_and_resolve_references(), str(workdir), calls * per_call, None)
  if here:
    out = _calibration_child(*arguments)
  else:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
      out = pool.submit(_calibration_child, *arguments[:3], cache).result()
  shutil.rmtree(workdir, ignore_errors=True)
  rate = max(out["rates"][1:])
  return {
    "steps_per_sec": rate,
    "train_compile_s": per_call / out["rates"][0] - per_call / rate,
    "train_peak_rss_mb": None if here else out["peak_rss_mb"],
  }


def train(config, workdir: pathlib.Path, seconds: float, rate: float) -> dict:
  """Trains `config` for `seconds` × `rate` steps (a whole number of calls) into `workdir`."""
  per_call = config.train.steps_per_call
  config.train.num_steps = max(per_call, int(seconds * rate) // per_call * per_call)
  config.train.checkpoint_every = config.train.num_steps
  config.train.log_every = max(per_call, config.train.num_steps // 10 // per_call * per_call)
  config.train.sample_every = 0
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  try:
    loop.train(config, workdir)
    failed = None
  except run_lib.RunError as e:  # a non-finite loss stops the loop with its last good checkpoint
    failed = str(e).split(";")[0]
  return {
    "steps": config.train.num_steps,
    "train_seconds": time.perf_counter() - start,
    "failed": failed,
  }


class Judge:
  """Fréchet distance on the digits classifier's hidden features (per channel, side by side) and
  the mode counter, against the real stacked (or plain) digits."""

  def __init__(self, data: str):
    self.data = data
    self.features = DigitsFeatures()
    self.modes = metrics.ModeCounter(self.features) if data == "stacked_digits" else None
    if data == "stacked_digits":
      real, _ = stacked_digits.stacked_split("test")
    else:
      real = digits_split("test")[0]
    self.real = real
    self.real_features = self._features(real)
    self.real_sharpness = sharpness(real)

  def _features(self, images_uint8):
    channels = images_uint8.shape[-1]
    return np.concatenate(
      [self.features.features(images_uint8[..., k : k + 1]) for k in range(channels)], axis=-1
    )

  def __call__(self, images_uint8) -> dict:
    out = {
      "frechet_distance": float(frechet_distance(self._features(images_uint8), self.real_features)),
      "sharpness": sharpness(images_uint8),
      "sharpness_real": self.real_sharpness,
    }
    if self.modes is not None:
      out.update(self.modes(images_uint8))
    return out


def sharpness(images_uint8) -> float:
  """Mean absolute finite-difference gradient, both directions, of images in [0, 1]."""
  x = np.asarray(images_uint8, np.float64) / 255.0
  return float((np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2)


def draw(workdir: pathlib.Path, count: int, batch_size: int = 500) -> tuple[np.ndarray, dict]:
  """(uint8 images, speed): `count` of --mode=sample's samples, and network evaluations per image,
  ms per image (the median batch after compilation, so a busy machine disturbs it least), the
  sampler's compile seconds and its program's memory (XLA's arguments + outputs + temporaries)."""
  config = run_lib.saved_config(workdir)
  batch_size = min(batch_size, count)
  run = run_lib.setup(config, workdir)
  step, state = run_lib.restore_for_inference(run)
  generator = generate.Generator(run, batch_size)
  key = generate.sample_key(config, step)
  start = time.perf_counter()
  generator.batch(state.ema_params, key, 0)  # compiles; drawn again below
  first = time.perf_counter() - start
  batches, times = [], []
  for b in range(-(-count // batch_size)):
    start = time.perf_counter()
    batches.append(generator.batch(state.ema_params, key, b)[0])
    times.append(time.perf_counter() - start)
  memory = generator.program_memory(state.ema_params, key)
  speed = {
    "nfe": config.sample.num_steps if models.architecture(config.model.arch).denoiser else 1,
    "ms_per_image": 1e3 * float(np.median(times)) / batch_size,
    "sample_batch": batch_size,
    "sample_compile_s": first - float(np.median(times)),
    "sample_memory_mb": memory / 2**20,
  }
  return np.concatenate(batches)[:count], speed


# the flow model's bits/dim through its probability-flow ODE: adaptive Dormand–Prince at tolerance
# 1e-4 (the samplers' 10 steps are far coarser) and 2 Rademacher probes of the divergence per image
# (an unbiased estimate; the per-image spread of probes is small next to the spread over images)
# (--quick: 10 fixed RK4 steps, a number that says nothing, in seconds rather than a minute)
ODE = {"ode_solver": "dopri5", "ode_rtol": 1e-4, "ode_atol": 1e-4, "ode_probes": 2}
QUICK_ODE = {"ode_solver": "rk4", "ode_steps": 10, "ode_probes": 2}


def likelihood(workdir: pathlib.Path, examples: int, timesteps: int, ode=ODE) -> float | None:
  """Bits/dim of the first `examples` test images (the VAE's ELBO, the diffusion bound, the flow
  model's ODE), or None for a model that has none on pixels."""
  config = run_lib.saved_config(workdir)
  if not config.eval.bits_per_dim:
    return None
  config.eval.num_samples, config.eval.num_examples = 0, examples
  config.eval.num_timesteps = timesteps  # read by the diffusion bound only
  config.eval.update(ode)  # read by a flow model's ODE only
  config.eval.batch_size = 64
  return float(evaluation.evaluate(config, workdir)["eval_bpd"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the runs")
  parser.add_argument("--data", default="stacked_digits", choices=("stacked_digits", "digits"))
  parser.add_argument("--quick", action="store_true", help="toy budgets: every row in ~5 min")
  parser.add_argument("--seconds", type=float, help="training budget per headline run")
  parser.add_argument("--sweep-seconds", type=float, help="training budget per sweep run")
  parser.add_argument("--samples", type=int, help="samples scored per headline run")
  parser.add_argument("--sweep-samples", type=int, help="samples scored per sweep run")
  parser.add_argument("--bpd-examples", type=int, default=256, help="test images for bits/dim")
  parser.add_argument(
    "--bpd-timesteps", type=int, default=100,
    help="the diffusion bound's random timesteps per image (an unbiased estimate of its sum)",
  )  # fmt: skip
  parser.add_argument("--figure", type=pathlib.Path)
  parser.add_argument(
    "--workdir", action="append", default=[], metavar="FAMILY=DIR",
    help=f"score a run you trained instead of training one; FAMILY one of {list(FAMILIES)} "
    "(repeatable; a latent or consistency run names its own VAE or teacher in its config)",
  )  # fmt: skip
  args = parser.parse_args()
  given = {}
  for item in args.workdir:
    name, _, folder = item.partition("=")
    if name not in FAMILIES or not folder:
      parser.error(f"--workdir takes FAMILY=DIR with FAMILY one of {list(FAMILIES)}, got {item!r}")
    if not (pathlib.Path(folder) / "config.json").exists():
      parser.error(f"--workdir {item!r}: {folder} is no jaxdiff workdir (it has no config.json)")
    if why := given_mismatch(name, pathlib.Path(folder), args.data):
      parser.error(f"--workdir {item!r}: {why}.")
    given[name] = pathlib.Path(folder)
  quick = args.quick
  seconds = args.seconds or (6 if quick else 180)
  # --quick: the sweep's budget is the headline's, whose run is then the sweep's first (seed 0, 1×)
  sweep_seconds = (6 if quick else 20) if args.sweep_seconds is None else args.sweep_seconds
  samples = args.samples or (300 if quick else 10_000)
  sweep_samples = args.sweep_samples or (200 if quick else 1_000)
  bpd_examples = 16 if quick else args.bpd_examples
  ode = QUICK_ODE if quick else ODE
  seeds, lr_factors = ((0,), (1.0, 2.0)) if quick else ((0, 1, 2), (1.0, 2.0))
  # --quick: one step per call (its programs compile several times faster than a scan of 4; the
  # steps are the same) and one compilation per program (the persistent cache)
  quick_overrides = {"train.steps_per_call": 1} if quick else {}
  cache = args.out / "compile_cache" if quick else None
  if cache:
    use_compile_cache(cache)
  args.out.mkdir(parents=True, exist_ok=True)
  print(json.dumps({"setting": vars(args) | {"seconds": seconds, "sweep_seconds": sweep_seconds,
        "samples": samples, "sweep_samples": sweep_samples, "bpd_examples": bpd_examples,
        "stability": {"seeds": seeds, "lr_factors": lr_factors}}}, default=str), flush=True)  # fmt: skip
  judge = Judge(args.data)
  floor = judge.modes.real_floor(samples) if judge.modes else None
  if floor:
    print(json.dumps({"real_train_triples": floor}), flush=True)

  def config_of(name, headline, **overrides):
    family = FAMILIES[name]
    wanted = {**quick_overrides, **overrides}
    if family.needs == "VAE":
      wanted["autoencoder.path"] = str(headline["VAE"])
    if family.needs == "pixel diffusion":
      wanted["teacher.workdir"] = str(headline["pixel diffusion"])
    return make_config(family, args.data, wanted)

  rates, headline, rows = {}, {}, []
  # runs at the sweep budget already made, by their config (a run is its config and budget): the
  # GAN's ratio sweep's, and the headline's when the budgets are equal (--quick); the stability
  # sweep takes a run of the same config from here instead of training it again
  made = {}

  def rate_of(name, config):
    if "steps_per_sec" not in rates.get(name, {}):
      rates[name] = calibrate(config, args.out / "calibrate", cache=cache, here=quick)
      print(json.dumps({"calibration": name, **rates[name]}), flush=True)
    return rates[name]["steps_per_sec"]

  # the GAN's ratio sweep first, at the sweep budget: the best ratio is the GAN's from then on
  # (a GAN workdir given keeps its own; no sweep budget or --quick, no sweep: the config's ratio)
  ratio_scores = {}
  ratios = () if "GAN" in given or not sweep_seconds or quick else GAN_RATIOS
  for ratio in ratios:
    workdir = args.out / f"gan_ratio{ratio:g}"
    config = config_of("GAN", headline, **{"gan.discriminator_lr_ratio": ratio})
    key = config.to_json()  # before train() sets the steps
    result = train(config, workdir, sweep_seconds, rate_of("GAN", config_of("GAN", headline)))
    scored = judge(draw(workdir, sweep_samples)[0]) if not result["failed"] else None
    ratio_scores[ratio] = scored["frechet_distance"] if scored else math.inf
    made[key] = (result, scored or {})
    print(json.dumps({"gan_ratio": ratio, **result, **(scored or {})}), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
  if "GAN" in given:
    gan_ratio = run_lib.saved_config(given["GAN"]).gan.discriminator_lr_ratio
  elif ratio_scores:
    gan_ratio = min(ratio_scores, key=ratio_scores.get)
  else:
    gan_ratio = config_of("GAN", headline).gan.discriminator_lr_ratio
  extra = {"GAN": {"gan.discriminator_lr_ratio": gan_ratio}}

  for name, family in FAMILIES.items():
    config = config_of(name, headline, **extra.get(name, {}))
    key = config.to_json()
    if name in given:  # a workdir the user trained: scored as it is
      workdir, result = given[name], {"steps": None, "train_seconds": None, "failed": None}
    else:
      workdir = args.out / name.split(" ")[0].lower()
      result = train(config, workdir, seconds, rate_of(name, config))
    headline[name] = workdir
    images, speed = draw(workdir, samples)
    row = {
      "model": name,
      **result,
      **rates.get(name, {}),
      **judge(images),
      "bits_per_dim": likelihood(workdir, bpd_examples, args.bpd_timesteps, ode),
      **speed,
      "loss": family.loss,
    }
    print(json.dumps(row), flush=True)
    rows.append(row)
    if name not in given and seconds == sweep_seconds:  # scored on its first samples
      made[key] = (result, judge(images[:sweep_samples]) if not result["failed"] else {})
    np.savez(args.out / f"{workdir.name}_samples.npz", images)

  # stability: seeds × learning rates at the sweep budget
  for row in rows if sweep_seconds else ():
    name = row["model"]
    finals, failures, runs = [], 0, []
    base_lr = config_of(name, headline, **extra.get(name, {})).optim.learning_rate
    for seed in seeds:
      for factor in lr_factors:
        config = config_of(
          name,
          headline,
          seed=seed,
          **{"optim.learning_rate": base_lr * factor},
          **extra.get(name, {}),
        )
        workdir = args.out / "sweep" / f"{row['model'].split(' ')[0].lower()}_s{seed}_lr{factor:g}"
        if (key := config.to_json()) in made:
          result, scored = made[key]
        else:
          result = train(config, workdir, sweep_seconds, rate_of(name, config))
          scored = judge(draw(workdir, sweep_samples)[0]) if not result["failed"] else {}
        runs.append({"seed": seed, "lr_factor": factor, **result, **scored})
        print(json.dumps({"sweep": name, **runs[-1]}), flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    best_modes = max((r.get("modes", 0) for r in runs), default=0)
    for r in runs:
      collapsed = judge.modes is not None and r.get("modes", 0) < best_modes / 2
      if r["failed"] or collapsed:
        failures += 1
      else:
        finals.append(r["frechet_distance"])
    row["stability_failed"] = f"{failures}/{len(runs)}"
    row["stability_fd_spread"] = [min(finals), max(finals)] if finals else None

  print(f"\nGAN discriminator/generator learning-rate ratio chosen: {gan_ratio:g} "
        f"(Fréchet distance by ratio: {ratio_scores})")  # fmt: skip
  cover = "| modes (of 1000) | KL to uniform " if judge.modes else ""
  print(
    f"\n| model | failed of runs | FD spread | Fréchet distance | sharpness (real {judge.real_sharpness:.4f}) {cover}| bits/dim | NFE | ms/image (compile s, MB) | training steps/s (compile s, peak RSS MB) | loss |"
  )
  print("|---" * (10 + (2 if judge.modes else 0)) + "|")
  for r in rows:
    spread = (
      "—" if r.get("stability_fd_spread") is None else "%.2f–%.2f" % tuple(r["stability_fd_spread"])
    )
    rss = "—" if r.get("train_peak_rss_mb") is None else "%.0f" % r["train_peak_rss_mb"]
    training = ("%.1f (%.0f, %s)" % (r["steps_per_sec"], r["train_compile_s"], rss)
                if "steps_per_sec" in r else "given")  # fmt: skip
    modes = f"| {r['modes']} | {r['kl_to_uniform']:.3f} " if judge.modes else ""
    bpd = "none" if r["bits_per_dim"] is None else f"{r['bits_per_dim']:.3f}"
    print(
      f"| {r['model']} | {r.get('stability_failed', 'not run')} | {spread} | "
      f"{r['frechet_distance']:.2f} | {r['sharpness']:.4f} {modes}| {bpd} | {r['nfe']} | "
      f"{r['ms_per_image']:.3f} ({r['sample_compile_s']:.1f}, {r['sample_memory_mb']:.0f}) | "
      f"{training} | {r['loss']} |"
    )
  if args.figure:
    plot(rows, judge, args.figure)
    print(f"wrote {args.figure}")


def plot(rows, judge, path):
  import matplotlib
  import matplotlib.ticker

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    coverage = r.get("modes", 0) / 10 if judge.modes else 100
    ax.scatter(r["ms_per_image"], r["frechet_distance"], s=20 + 3 * coverage, alpha=0.7)
    label = f"{r['model']}" + (f" ({r['modes']} modes)" if judge.modes else "")
    ax.annotate(label, (r["ms_per_image"], r["frechet_distance"]), fontsize=8)
  ax.set(xscale="log", yscale="log", xlabel="ms per image (sampling, after compilation)",
         ylabel="Fréchet distance (digits classifier)",
         title="quality vs speed; marker area: modes covered")  # fmt: skip
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
