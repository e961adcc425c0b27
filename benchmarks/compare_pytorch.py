"""jaxdiff's U-Net and DiT against diffusers' in PyTorch, on the same CPU in one run.

    pip install torch --index-url https://download.pytorch.org/whl/cpu diffusers   # any interpreter
    python benchmarks/compare_pytorch.py --torch-python=/path/to/python-with-torch [--quick]
    python benchmarks/compare_pytorch.py --torch-python=... --configs=dit-s2     # the DiT alone

Both frameworks run the very same network: diffusers builds a `UNet2DModel` and saves its initial
weights, and jaxdiff loads them with `jaxdiff.convert.load_diffusers_unet` (so the parameter counts
agree by construction, and are checked); or diffusers builds a `DiTTransformer2DModel`, whose
blocks then share block 0's timestep and label embedder (diffusers gives each block a copy; the
original DiT, like jaxdiff, has one) with label dropout off (neither lean step below drops
labels), and exports its weights in facebookresearch/DiT's layout for
`jaxdiff.convert.dit.load_dit_state_dict` (diffusers' timestep shift 1 and MLP LayerNorm eps 1e-5
set on jaxdiff's side). Three layouts (CONFIGS below):
  small    16×16×1, block_out_channels (32, 64, 64), 2 res blocks per level, attention at 8×8 and in
           the 4×4 mid block, 8-channel heads: the 1.6M-parameter digits model of
           benchmarks/digits_vs_diffusers.py without its class embedding.
  cifar10  google/ddpm-cifar10-32: 32×32×3, (128, 256, 256, 256), 2 res blocks, attention at 16×16
           (one head), downsample padding 0, freq_shift 1; 35.7M parameters.
  dit-s2   DiT-S/2 (Peebles & Xie) on 32×32×4 latents, 1000 classes, learned variance (8 output
           channels): 12 blocks of 384 wide, 6 heads, 256 tokens; 32.9M parameters. Both sides
           condition on the same fixed random labels and take ε from the first 4 channels.

What is timed, float32, each framework with --threads intra-op threads (XLA:CPU's pool is sized
to the machine's cores, so keep --threads equal to them):
  train   ε-MSE on one fixed random batch: draw t and ε, q_sample, forward, backward, Adam
          (lr 1e-4) update. jaxdiff: a lean jitted step over `nnx.split` params built like
          jaxdiff.train.step.train_step (diffusion.mse_loss, optax.adam, buffers donated), with
          --steps-per-call steps unrolled per call (make_train_fn's lever; a round's step count is
          rounded up to a multiple of it); it leaves out make_train_fn's EMA and metrics, which
          the PyTorch loop has no counterpart of.
  sample  DDIM with --sample-steps steps from the same x_T: jaxdiff.samplers.ddim (one jitted
          scan) against diffusers' DDIMScheduler loop under torch.inference_mode, both η = 0,
          leading spacing, x0 clipped, ᾱ_final = 1.
Parity: one model call on x_T at DDIM's first timestep on each side, max |Δ| reported (whole DDIM
trajectories of an untrained network amplify float32 rounding chaotically, so they are not
compared). Compilation and warm-up are excluded: jaxdiff's sampler is compiled ahead and its
train program in the untimed warm-up train call, after the sampling phase, as a process that only
samples never compiles it (compile seconds reported apart); that model call warms up sampling. Then --rounds rounds alternate the two frameworks (who goes first alternates too), each
in its own worker process, and medians over rounds are compared, so load from other jobs hits
both alike. Still, PyTorch's OpenMP threads slow down far more than XLA's pool when other
processes compete for the cores (a DDIM run took 5x longer on a loaded 2-core machine), so each
timed call also measures the CPU other processes used meanwhile (/proc/stat minus the benchmark's
own processes); a round in which they kept more than --max-other-cores busy is repeated (at most
--rounds times), and the ratio line reports the other-process load of the rounds kept. Peak
memory is each worker's peak RSS (VmHWM) over the sampling phase and over the timed training
rounds (reset before each where the kernel allows: after the warm-up train call, so the train
compile's transient peak is not counted, though what the allocator kept of it is), the
framework's own footprint included.

Prints per config one JSON line per framework and one line of jaxdiff/PyTorch ratios: a
throughput ratio > 1 means jaxdiff is faster, a memory ratio > 1 that it uses more. The jaxdiff
line names the XLA_FLAGS its worker ran with and which CPU fast paths were on (jaxdiff.cpu): the
worker calls jaxdiff.cpu.apply_xla_flags() first; JAXDIFF_DEFAULT_XLA_FLAGS=0 in the environment
measures without the flag, JAXDIFF_WINOGRAD=1 with Winograd convolutions (off by default), and
--xla-flags adds to the jaxdiff worker's XLA_FLAGS (a flag given there wins over a default).
The baseline before jaxdiff's CPU work, for instance:

    JAXDIFF_DEFAULT_XLA_FLAGS=0 python benchmarks/compare_pytorch.py --torch-python=... \
      --steps-per-call=1
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TORCH_WORKER = HERE / "compare_pytorch_torch.py"
JAX_WORKER = HERE / "compare_pytorch_jax.py"
sys.path.insert(0, str(HERE))
from workers import Worker, alternate, median_ratio  # noqa: E402

CONFIGS = {
  "small": {
    "network": "unet",
    "config": {
      "sample_size": 16,
      "in_channels": 1,
      "out_channels": 1,
      "layers_per_block": 2,
      "block_out_channels": (32, 64, 64),
      "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
      "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    },
    "train_batch": 64,
    "sample_batch": 64,
    "train_steps": 4,
  },
  "cifar10": {
    "network": "unet",
    "config": {
      "sample_size": 32,
      "in_channels": 3,
      "out_channels": 3,
      "layers_per_block": 2,
      "block_out_channels": (128, 256, 256, 256),
      "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      "attention_head_dim": None,
      "downsample_padding": 0,
      "flip_sin_to_cos": False,
      "freq_shift": 1,
      "norm_eps": 1e-6,
    },
    "train_batch": 8,
    "sample_batch": 4,
    "train_steps": 2,
  },
  "dit-s2": {
    "network": "dit",
    "config": {  # DiTTransformer2DModel's arguments
      "num_attention_heads": 6,
      "attention_head_dim": 64,
      "in_channels": 4,
      "out_channels": 8,
      "num_layers": 12,
      "sample_size": 32,
      "patch_size": 2,
      "num_embeds_ada_norm": 1000,
      "norm_eps": 1e-5,
    },
    "train_batch": 8,
    "sample_batch": 8,
    "train_steps": 2,
  },
}


def fixed_labels(spec: dict, batch: int, seed: int) -> list | None:
  """The class labels both sides condition on (None for an unconditional network)."""
  num_classes = spec["config"].get("num_embeds_ada_norm") if spec["network"] == "dit" else None
  if num_classes is None:
    return None
  return np.random.default_rng(seed).integers(0, num_classes, batch).tolist()


def compare(name: str, spec: dict, args, tmp: pathlib.Path) -> list[dict]:
  """Runs one config on both workers; its JSON lines (PyTorch, jaxdiff, ratios)."""
  common = {
    "network": spec["network"],
    "config": spec["config"],
    "train_labels": fixed_labels(spec, spec["train_batch"], args.seed + 2),
    "sample_labels": fixed_labels(spec, spec["sample_batch"], args.seed + 3),
    "train_batch": spec["train_batch"],
    "sample_batch": spec["sample_batch"],
    "sample_steps": args.sample_steps,
    "threads": args.threads,
    "seed": args.seed,
    "weights_dir": str(tmp / name),
  }
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
  workers = {
    "pytorch": Worker("PyTorch", [args.torch_python, str(TORCH_WORKER)]),
    "jaxdiff": Worker("jaxdiff", [sys.executable, str(JAX_WORKER)], env=env),
  }
  # PyTorch first: it saves the initial weights that jaxdiff loads.
  setup = {"pytorch": workers["pytorch"].ask(op="setup", **common)}
  setup["jaxdiff"] = workers["jaxdiff"].ask(
    op="setup", steps_per_call=args.steps_per_call, **common
  )
  if setup["jaxdiff"]["params"] != setup["pytorch"]["params"]:
    sys.exit(f"error: parameter counts differ: {setup}.")

  size, channels = spec["config"]["sample_size"], spec["config"]["in_channels"]
  x_T = np.random.default_rng(args.seed).standard_normal(
    (spec["sample_batch"], size, size, channels), dtype=np.float32
  )
  np.save(tmp / "x_T.npy", x_T)
  for w in workers.values():
    w.ask(op="reset_peak")
  # One model call at DDIM's first timestep: the parity check, and the sampling warm-up. (Whole
  # DDIM trajectories of an untrained network amplify float32 rounding chaotically, so they are
  # no parity check.)
  first_t = 1000 - 1000 // args.sample_steps
  outputs = {}
  for side, w in workers.items():
    w.ask(op="forward", x=str(tmp / "x_T.npy"), t=first_t, out=str(tmp / f"eps_{side}.npy"))
    outputs[side] = np.load(tmp / f"eps_{side}.npy")
  request = {"op": "sample", "x_T": str(tmp / "x_T.npy"), "out": str(tmp / "x_0.npy")}
  sampled = alternate(workers, args.rounds, request, args.max_other_cores)
  sample_s = sampled["seconds"]
  peaks = {side: {"sample": w.ask(op="peak")["peak_rss_mb"]} for side, w in workers.items()}

  k = args.steps_per_call
  steps = -(-spec["train_steps"] // k) * k
  request = {"op": "train", "steps": steps}
  for w in workers.values():
    w.ask(**request)  # warm-up (and jaxdiff's train compile): before the peak is reset
    w.ask(op="reset_peak")
  trained = alternate(workers, args.rounds, request, args.max_other_cores)
  train_s = trained["seconds"]
  setup["jaxdiff"] = workers["jaxdiff"].ask(op="info")  # now with the train compile time
  for side, w in workers.items():
    peaks[side]["train"] = w.ask(op="peak")["peak_rss_mb"]
    w.close()

  lines = []
  for side in workers:
    line = {
      "config": name,
      "framework": side,
      "params": setup[side]["params"],
      "threads": args.threads,
      "train_batch": spec["train_batch"],
      "train_images_per_sec": round(steps * spec["train_batch"] / np.median(train_s[side]), 2),
      "train_step_ms": round(1000 * np.median(train_s[side]) / steps, 1),
      "sample_batch": spec["sample_batch"],
      "sample_steps": args.sample_steps,
      "sample_images_per_sec": round(spec["sample_batch"] / np.median(sample_s[side]), 3),
      "sample_seconds": round(float(np.median(sample_s[side])), 2),
      "peak_rss_mb_sample": round(peaks[side]["sample"], 1),
      "peak_rss_mb_train": round(peaks[side]["train"], 1),
    }
    if side == "jaxdiff":
      line.update(
        steps_per_call=args.steps_per_call,
        xla_flags=setup[side]["xla_flags"],
        cpu_fast_paths=setup[side]["cpu_fast_paths"],
        compile_train_s=round(setup[side]["compile_train_s"], 2),
        compile_sample_s=round(setup[side]["compile_sample_s"], 2),
      )
    lines.append(line)
  p, j = lines
  lines.append(
    {
      "config": name,
      "ratio": "jaxdiff/pytorch",
      "train_throughput": round(median_ratio(train_s["pytorch"], train_s["jaxdiff"]), 3),
      "sample_throughput": round(median_ratio(sample_s["pytorch"], sample_s["jaxdiff"]), 3),
      "train_per_round": [round(t / u, 3) for u, t in zip(train_s["jaxdiff"], train_s["pytorch"])],
      "sample_per_round": [
        round(t / u, 3) for u, t in zip(sample_s["jaxdiff"], sample_s["pytorch"])
      ],
      "peak_rss_train": round(j["peak_rss_mb_train"] / p["peak_rss_mb_train"], 3),
      "peak_rss_sample": round(j["peak_rss_mb_sample"] / p["peak_rss_mb_sample"], 3),
      "model_output_max_abs_diff": float(np.abs(outputs["jaxdiff"] - outputs["pytorch"]).max()),
      "other_processes_cores_train": trained["other_cores"],
      "other_processes_cores_sample": sampled["other_cores"],
      "rounds_repeated": trained["repeated"] + sampled["repeated"],
    }
  )
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--torch-python",
    default=sys.executable,
    help="interpreter with torch and diffusers (pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu diffusers)",
  )
  parser.add_argument("--configs", default="small,cifar10", help=f"of {', '.join(CONFIGS)}")
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds per measurement")
  parser.add_argument("--quick", action="store_true", help="one timed round")
  parser.add_argument("--sample-steps", type=int, default=50)
  parser.add_argument(
    "--steps-per-call",
    type=int,
    default=4,
    help="jaxdiff train steps unrolled per call (train.steps_per_call; configs/digits.py uses 4)",
  )
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--xla-flags", default="", help="added to the jaxdiff worker's XLA_FLAGS")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--max-other-cores",
    type=float,
    default=0.25,
    help="a round during which other processes kept more cores busy is repeated (once per round)",
  )
  args = parser.parse_args()
  if args.quick:
    args.rounds = 1
  unknown = sorted(set(args.configs.split(",")) - set(CONFIGS))
  if unknown:
    parser.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}.")
  if subprocess.run(
    [args.torch_python, "-c", "import torch, diffusers"], capture_output=True, check=False
  ).returncode:
    parser.error(
      f"{args.torch_python} cannot import torch and diffusers: pip install torch --index-url "
      "https://download.pytorch.org/whl/cpu diffusers, or pass --torch-python."
    )
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.configs.split(","):
      for line in compare(name, CONFIGS[name], args, pathlib.Path(tmp)):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
