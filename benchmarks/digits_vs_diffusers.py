"""jaxdiff's digits default against diffusers' UNet2DModel trained for the same wall-clock.

    pip install torch==2.13.0 diffusers==0.42.1      # into the jaxdiff environment
    python benchmarks/digits_vs_diffusers.py --workdir=workdir/digits_vs_diffusers

What runs, each in its own process so each pays its own start-up as a user would:
  1. `python -m jaxdiff.main --config=configs/digits.py --workdir=WORKDIR/jaxdiff` and then
     `--mode=sample`; train_seconds is the train process's wall-clock (imports, data, compilation,
     checkpoints and any sample grids the config asks for: what a user waits for). XLA's persistent
     compilation cache is off so the number is a first run's; `--config.*` arguments given here
     are passed on to both jaxdiff commands (a later `--config.compilation_cache_dir=...` wins).
  2. diffusers trains for exactly that many seconds, counted from its process's launch, then
     samples as many images with the same labels (arr_1 of jaxdiff's npz) with DDIMScheduler.
  3. benchmarks/digits_quality.py scores both npz files.
It prints one JSON line per side and a last line of jaxdiff/diffusers ratios.

The diffusers recipe is the defaults of diffusers' examples/unconditional_image_generation/
train_unconditional.py (which the "Train a diffusion model" tutorial follows), scaled to 16×16×1:
UNet2DModel(sample_size=16, layers_per_block=2, block_out_channels=(32, 64, 64), attention at 8×8;
1.6M parameters), DDPMScheduler(1000, linear), ε-MSE, AdamW(lr 1e-4, betas (0.95, 0.999), weight
decay 1e-6), gradient norm clipped to 1, a cosine learning rate after a linear warm-up, EMA with
diffusers' EMAModel (inv_gamma 1, power 3/4, max decay 0.9999) whose weights are sampled, batch 64
from a shuffled DataLoader, no mixed precision (CPU). What a time budget or a fair comparison
changes, stated here: the cosine runs over the budget's seconds, not a step count, and the
warm-up is 100 steps (jaxdiff's digits value; the script's 500 would fill much of a CPU budget);
the model is class-conditional (num_class_embeds = classes + 1, the last one the null class) with
classifier-free guidance done as jaxdiff does it: labels replaced by the null class at jaxdiff's
model.class_dropout rate in training, out = out(∅) + s·(out(y) − out(∅)) at jaxdiff's
sample.guidance_scale s in sampling (both read from the jaxdiff run's config.json). Sampling:
DDIMScheduler.from_pretrained of the saved DDPM config (DDIM's defaults: η = 0, "leading"
spacing, x0 clipped, as jaxdiff's) with jaxdiff's sample.num_steps (50).

Options: --budget SECONDS gives diffusers that many seconds instead of jaxdiff's measured time;
--jaxdiff-workdir DIR reuses a jaxdiff run (made by this script, whose wallclock.json there holds
its times, or any trained run together with --budget) instead of training one; --diffusers-python
runs the diffusers side under another interpreter (one with torch, diffusers and NumPy).
"""

import argparse
import json
import math
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
WARMUP_STEPS = 100
BATCH_SIZE = 64
STEADY_AFTER = 10  # steps; the first ones include torch's one-time set-up (allocations, kernels)


def run_timed(command) -> float:
  """Runs a command with its output on our stderr (stdout is for JSON); its wall-clock seconds."""
  start = time.time()
  code = subprocess.run(command, stdout=sys.stderr).returncode
  if code:
    sys.exit(f"error: {' '.join(command)} exited with code {code}; its output is above.")
  return time.time() - start


def run_jaxdiff(workdir: pathlib.Path, overrides: list, train: bool) -> dict:
  """Trains (if asked) and samples a jaxdiff run; {train_seconds, sample_seconds, npz, config}."""
  record_path = workdir / "wallclock.json"
  record = json.loads(record_path.read_text()) if record_path.exists() else {}
  base = [
    sys.executable,
    "-m",
    "jaxdiff.main",
    f"--config={REPO / 'configs' / 'digits.py'}",
    f"--workdir={workdir}",
    "--config.compilation_cache_dir=",
    *overrides,
  ]
  if train:
    record["train_seconds"] = run_timed(base + ["--mode=train"])
    record_path.write_text(json.dumps(record))
  config = json.loads((workdir / "config.json").read_text())
  s, d = config["sample"], config["data"]
  name = f"samples_{s['num_samples']}x{d['image_size']}x{d['image_size']}x{d['channels']}.npz"
  found = sorted((workdir / "samples").glob(f"step*/{name}"))  # named by what made them
  if not found:
    record["sample_seconds"] = run_timed(base + ["--mode=sample"])
    record_path.write_text(json.dumps(record))
    found = sorted((workdir / "samples").glob(f"step*/{name}"))
  npz = found[-1]
  logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  # The first log window holds the compilation; the others are the steady rate.
  steady = [line["steps_per_sec"] for line in logs[1:]]
  return {
    "train_seconds": record.get("train_seconds"),
    "steps": logs[-1]["step"],
    "steady_steps_per_sec": float(np.median(steady)) if steady else None,
    "sample_seconds": record.get("sample_seconds"),
    "npz": npz,
    "config": config,
  }


def diffusers_train(spec: dict, out: pathlib.Path):
  """The diffusers worker's training half: steps until spec['deadline'], saves the EMA U-Net."""
  import torch
  import torch.nn.functional as F
  from diffusers import DDPMScheduler, UNet2DModel
  from diffusers.training_utils import EMAModel

  torch.set_num_threads(spec["threads"])
  torch.manual_seed(spec["seed"])
  with np.load(spec["data"]) as f:
    images = torch.from_numpy(f["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = torch.from_numpy(f["labels"]).long()
  null = spec["num_classes"]
  unet = UNet2DModel(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    layers_per_block=2,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    num_class_embeds=null + 1,
  )
  noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
  optimizer = torch.optim.AdamW(
    unet.parameters(), lr=spec["learning_rate"], betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
  )
  ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
  loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(images, labels), batch_size=BATCH_SIZE, shuffle=True
  )
  start, budget = time.time(), spec["deadline"] - time.time()
  steps, steady_from = 0, None
  while time.time() < spec["deadline"]:
    for x0, y in loader:
      now = time.time()
      if now >= spec["deadline"]:
        break
      # Cosine over the seconds left, after a linear warm-up in steps.
      progress = (now - start) / budget
      lr_scale = min(1.0, (steps + 1) / WARMUP_STEPS) * 0.5 * (1 + math.cos(math.pi * progress))
      for group in optimizer.param_groups:
        group["lr"] = spec["learning_rate"] * lr_scale
      y = torch.where(torch.rand(len(y)) < spec["class_dropout"], null, y)
      noise = torch.randn_like(x0)
      t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),))
      loss = F.mse_loss(
        unet(noise_scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise
      )
      loss.backward()
      torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
      optimizer.step()
      optimizer.zero_grad()
      ema.step(unet.parameters())
      steps += 1
      if steps == STEADY_AFTER:
        steady_from = time.time()
      if steps % 100 == 0:
        print(f"diffusers step {steps} loss {loss.item():.4f}", file=sys.stderr)
  end = time.time()
  ema.copy_to(unet.parameters())
  unet.save_pretrained(out / "unet")
  noise_scheduler.save_pretrained(out / "scheduler")
  steady = (steps - STEADY_AFTER) / (end - steady_from) if steps > STEADY_AFTER else None
  (out / "train.json").write_text(
    json.dumps(
      {
        "steps": steps,
        "params": sum(p.numel() for p in unet.parameters()),
        "steady_steps_per_sec": steady,
      }
    )
  )


def diffusers_sample(spec: dict, out: pathlib.Path):
  """The diffusers worker's sampling half: DDIM from the saved U-Net → samples.npz."""
  import torch
  from diffusers import DDIMScheduler, UNet2DModel

  torch.set_num_threads(spec["threads"])
  # low_cpu_mem_usage would want `accelerate`; this model is small.
  unet = UNet2DModel.from_pretrained(out / "unet", low_cpu_mem_usage=False).eval()
  scheduler = DDIMScheduler.from_pretrained(out / "scheduler")
  scheduler.set_timesteps(spec["sample_steps"])
  labels = torch.as_tensor(spec["labels"]).long()
  null = torch.full_like(labels, spec["num_classes"])
  generator = torch.Generator().manual_seed(spec["seed"])
  x = torch.randn((len(labels), 1, 16, 16), generator=generator)
  s = spec["guidance_scale"]
  with torch.no_grad():
    for t in scheduler.timesteps:
      if s == 1.0:
        eps = unet(x, t, class_labels=labels).sample
      else:
        both = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
        cond, uncond = both.chunk(2)
        eps = uncond + s * (cond - uncond)
      x = scheduler.step(eps, t, x, eta=0.0).prev_sample
  images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
  np.savez(out / "samples.npz", arr_0=images, arr_1=np.asarray(spec["labels"]))


def run_diffusers(out: pathlib.Path, python: str, budget: float, spec: dict) -> dict:
  out.mkdir(parents=True)
  (out / "spec.json").write_text(json.dumps({**spec, "deadline": time.time() + budget}))
  worker = [python, str(pathlib.Path(__file__).resolve()), "--worker"]
  train_seconds = run_timed(worker + ["train", str(out)])
  sample_seconds = run_timed(worker + ["sample", str(out)])
  return {
    "train_seconds": train_seconds,
    "sample_seconds": sample_seconds,
    "npz": out / "samples.npz",
    **json.loads((out / "train.json").read_text()),
  }


def side_line(side: str, run: dict, quality: dict) -> dict:
  seconds = run["train_seconds"]
  return {
    "side": side,
    "train_seconds": seconds,
    "steps": run["steps"],
    "steps_per_sec": run["steps"] / seconds if seconds else None,
    "steady_steps_per_sec": run.get("steady_steps_per_sec"),
    "params": run.get("params"),
    "sample_seconds": run["sample_seconds"],
    "npz": str(run["npz"]),
    **quality,
  }


def ratio(a, b):
  return a / b if a is not None and b else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdir/digits_vs_diffusers", type=pathlib.Path)
  parser.add_argument(
    "--budget", type=float, help="diffusers' training seconds (default: jaxdiff's measured time)"
  )
  parser.add_argument("--jaxdiff-workdir", type=pathlib.Path, help="reuse this jaxdiff run")
  parser.add_argument(
    "--diffusers-python",
    default=sys.executable,
    help="interpreter with torch and diffusers for the diffusers side",
  )
  parser.add_argument("--diffusers-lr", type=float, default=1e-4)
  parser.add_argument("--torch-threads", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0, help="diffusers' seed (jaxdiff: its config's)")
  parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
  args, overrides = parser.parse_known_args()
  if args.worker:
    mode, out = args.worker[0], pathlib.Path(args.worker[1])
    {"train": diffusers_train, "sample": diffusers_sample}[mode](
      json.loads((out / "spec.json").read_text()), out
    )
    return
  unknown = [o for o in overrides if not o.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)} (only --config.* go to jaxdiff)")
  if (args.workdir / "diffusers").exists():
    parser.error(f"{args.workdir / 'diffusers'} exists; pass a new --workdir.")
  jaxdiff_dir = args.jaxdiff_workdir or args.workdir / "jaxdiff"
  if args.jaxdiff_workdir is None and jaxdiff_dir.exists():
    parser.error(
      f"{jaxdiff_dir} exists (training would resume, not start); pass a new --workdir "
      "or reuse it with --jaxdiff-workdir."
    )
  if args.jaxdiff_workdir and not (jaxdiff_dir / "config.json").exists():
    parser.error(f"{jaxdiff_dir} holds no jaxdiff run (no config.json).")
  record = jaxdiff_dir / "wallclock.json"
  if (
    args.jaxdiff_workdir
    and not args.budget
    and "train_seconds" not in (json.loads(record.read_text()) if record.exists() else {})
  ):
    parser.error(f"{record} has no training time from this script; give --budget.")
  # Checked first: the jaxdiff run before the diffusers side can take many minutes.
  if subprocess.run(
    [args.diffusers_python, "-c", "import torch, diffusers"], capture_output=True
  ).returncode:
    parser.error(
      f"{args.diffusers_python} cannot import torch and diffusers: pip install "
      "torch==2.13.0 diffusers==0.42.1, or pass --diffusers-python."
    )

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import digits_quality

  jaxdiff = run_jaxdiff(jaxdiff_dir, overrides, train=args.jaxdiff_workdir is None)
  config = jaxdiff["config"]
  if not config["model"]["class_conditional"]:
    sys.exit(
      f"error: {jaxdiff_dir} is not class-conditional; this benchmark compares "
      "class-conditional models."
    )
  budget = args.budget or jaxdiff["train_seconds"]
  images, labels = digits_quality.digits_16x16()
  args.workdir.mkdir(parents=True, exist_ok=True)
  data = args.workdir / "digits_train.npz"
  np.savez(data, images=images["train"], labels=labels["train"])
  with np.load(jaxdiff["npz"]) as f:
    requested = f["arr_1"].tolist()
  diffusers = run_diffusers(
    args.workdir / "diffusers",
    args.diffusers_python,
    budget,
    {
      "data": str(data),
      "seed": args.seed,
      "threads": args.torch_threads,
      "learning_rate": args.diffusers_lr,
      "num_classes": config["data"]["num_classes"],
      "class_dropout": config["model"]["class_dropout"],
      "guidance_scale": config["sample"]["guidance_scale"],
      "sample_steps": config["sample"]["num_steps"],
      "labels": requested,
    },
  )

  quality = digits_quality.DigitsQuality()
  lines = {
    name: side_line(name, run, quality.evaluate_npz(run["npz"]))
    for name, run in (("jaxdiff", jaxdiff), ("diffusers", diffusers))
  }
  for line in lines.values():
    print(json.dumps({"budget_seconds": budget, **line}))
  j, d = lines["jaxdiff"], lines["diffusers"]
  print(
    json.dumps(
      {
        "comparison": "jaxdiff/diffusers",
        "budget_seconds": budget,
        **{
          f"{k}_ratio": ratio(j[k], d[k])
          for k in (
            "train_seconds",
            "steps",
            "steps_per_sec",
            "steady_steps_per_sec",
            "sample_seconds",
            "frechet_distance",
            "confident_share",
            "label_accuracy",
          )
        },
      }
    )
  )


if __name__ == "__main__":
  main()
