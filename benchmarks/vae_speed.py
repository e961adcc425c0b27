"""Stable Diffusion's VAE: encode/decode time per 256² image, jaxdiff against diffusers, one run.

    pip install torch --index-url https://download.pytorch.org/whl/cpu diffusers   # any interpreter
    python benchmarks/vae_speed.py --torch-python=/path/to/python-with-torch [--batch=4] [--rounds=5]

The same network on both sides: a worker under --torch-python builds a random-weight diffusers
`AutoencoderKL` with Stable Diffusion 1/2's VAE config (SD_VAE below: block_out_channels
(128, 256, 512, 512), 2 layers per block, 4 latent channels, 32 groups; 83.7M parameters) and
saves it with save_pretrained (safetensors) to a temporary folder; a worker under this interpreter
loads that folder with `jaxdiff.convert.load_diffusers_vae` (parameter counts checked equal).

What is timed, float32, one call per timed request, at batch 1 and at --batch if it differs:
  encode  256×256×3 images → the posterior mean (diffusers: `vae.encode(x).latent_dist.mean`
          under torch.inference_mode; jaxdiff: `AutoencoderKL.encode`, which also returns the
          clamped log-variance, as diffusers' posterior computes it too).
  decode  32×32×4 latents → 256×256×3 images (`vae.decode(z).sample` / `AutoencoderKL.decode`).
The inputs are fixed random arrays (images uniform in [-1, 1], latents standard normal) shared by
both sides. jaxdiff jits each op with the parameters as an argument (`nnx.split`, the state
passed in, not baked into the program as constants) and compiles it ahead per batch size (compile
seconds reported apart); its worker calls `jaxdiff.cpu.apply_xla_flags()` first.

Parity: before timing, both sides run each op once on the same inputs (the warm-up too), and the
run stops unless jaxdiff's output equals diffusers' to --rtol, measured as max |Δ| / max |diffusers|
(so the comparison is of the same computation; float32 rounding gave 1.6e-6 to 1.0e-5 here, the
largest for decode at batch 4).

Then --rounds rounds alternate the two workers (who goes first alternates too), one call each, and
medians are compared, so load from other jobs hits both alike; each call also measures the CPU
other processes used meanwhile, and a round in which they kept more than --max-other-cores busy is
repeated (at most --rounds times; benchmarks/workers.py). PyTorch's OpenMP threads suffer more
from competing processes than XLA's pool does, so on a loaded machine read the other-process load
in the ratio lines with the ratios.

Prints one JSON line per side, op and batch (seconds per image, the per-round seconds, jaxdiff's
compile seconds) and one ratio line per op and batch (jaxdiff/diffusers throughput: > 1 means
jaxdiff is faster; the parity error; the other-process load), then one line per side with the
worker's peak RSS (VmHWM) before the timed rounds (model build, save or load, compiles, warm-ups)
and over the timed rounds alone (reset after the warm-ups where the kernel allows).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workers import Worker, alternate, median_ratio, peak_rss_mb, reset_peak_rss

# diffusers' AutoencoderKL arguments for Stable Diffusion 1/2's VAE (CompVis/stable-diffusion-v1-4
# vae/config.json, with sample_size 256: it only sets diffusers' tiling, which stays off).
SD_VAE = {
  "in_channels": 3,
  "out_channels": 3,
  "down_block_types": ["DownEncoderBlock2D"] * 4,
  "up_block_types": ["UpDecoderBlock2D"] * 4,
  "block_out_channels": [128, 256, 512, 512],
  "layers_per_block": 2,
  "act_fn": "silu",
  "latent_channels": 4,
  "norm_num_groups": 32,
  "sample_size": 256,
  "scaling_factor": 0.18215,
}
SIZE, FACTOR = 256, 8
OPS = ("encode", "decode")


class TorchSide:
  """diffusers' AutoencoderKL, built with random weights and saved for the jaxdiff side."""

  def __init__(self, weights_dir: str, threads: int, seed: int):
    import torch

    # diffusers imports torchvision when installed, and a torchvision built for another torch
    # breaks that import; the VAE needs none of it.
    sys.modules.setdefault("torchvision", None)
    import diffusers
    from diffusers import AutoencoderKL
    from diffusers.utils import logging

    logging.set_verbosity_error()
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.model = AutoencoderKL(**SD_VAE).eval()
    self.model.save_pretrained(weights_dir, safe_serialization=True)
    self.versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    self.inputs = {}

  def info(self) -> dict:
    params = sum(p.numel() for p in self.model.parameters())
    return {"params": params, "threads": self.torch.get_num_threads(), **self.versions}

  def load(self, x: str, z: str) -> dict:
    for which, path in zip(OPS, (x, z)):
      self.inputs[which] = self.torch.from_numpy(np.load(path)).permute(0, 3, 1, 2).contiguous()
    return {}

  def _call(self, which: str, batch: int):
    with self.torch.inference_mode():
      inputs = self.inputs[which][:batch]
      if which == "encode":
        return self.model.encode(inputs).latent_dist.mean
      return self.model.decode(inputs).sample

  def prepare(self, which: str, batch: int) -> dict:
    return {}

  def run(self, which: str, batch: int, out: str) -> dict:
    np.save(out, self._call(which, batch).permute(0, 2, 3, 1).numpy())
    return {}

  def time(self, which: str, batch: int) -> dict:
    start = time.perf_counter()
    self._call(which, batch)
    return {"seconds": time.perf_counter() - start}


class JaxSide:
  """jaxdiff's AutoencoderKL from the folder the PyTorch side saved."""

  def __init__(self, weights_dir: str, **_):
    import jax
    from flax import nnx

    from jaxdiff import cpu
    from jaxdiff.convert import load_diffusers_vae

    self.jax = jax
    model = load_diffusers_vae(weights_dir)
    graphdef, self.state = nnx.split(model)
    self.params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    def encode(state, x):
      return nnx.merge(graphdef, state).encode(x)  # (mean, logvar)

    def decode(state, z):
      return nnx.merge(graphdef, state).decode(z)

    self.jitted = {"encode": jax.jit(encode), "decode": jax.jit(decode)}
    self.compiled, self.compile_s, self.batched = {}, {}, {}
    self.status = {"jax": jax.__version__, **cpu.status()}
    self.inputs = {}

  def info(self) -> dict:
    compile_s = {f"{which}@{b}": round(s, 2) for (which, b), s in self.compile_s.items()}
    return {"params": self.params, "compile_s": compile_s, **self.status}

  def load(self, x: str, z: str) -> dict:
    self.inputs = {which: np.load(path) for which, path in zip(OPS, (x, z))}
    return {}

  def prepare(self, which: str, batch: int) -> dict:
    """Puts the batch on the device and compiles that op for it ahead (timed)."""
    x = self.jax.device_put(self.inputs[which][:batch])
    start = time.perf_counter()
    self.compiled[which, batch] = self.jitted[which].lower(self.state, x).compile()
    self.compile_s[which, batch] = time.perf_counter() - start
    self.batched[which, batch] = x
    return {"compile_s": self.compile_s[which, batch]}

  def _call(self, which: str, batch: int):
    out = self.compiled[which, batch](self.state, self.batched[which, batch])
    return self.jax.block_until_ready(out)

  def run(self, which: str, batch: int, out: str) -> dict:
    result = self._call(which, batch)
    np.save(out, np.asarray(result[0] if which == "encode" else result))
    return {}

  def time(self, which: str, batch: int) -> dict:
    start = time.perf_counter()
    self._call(which, batch)
    return {"seconds": time.perf_counter() - start}


def serve(side_class):
  """A worker: one JSON request per stdin line ({"op": method, **arguments}; the first builds the
  side), one JSON answer per stdout line (libraries' own output goes to stderr)."""
  out, sys.stdout = sys.stdout, sys.stderr
  side = None
  for line in sys.stdin:
    request = json.loads(line)
    op = request.pop("op")
    if op == "setup":
      side = side_class(**request)
      answer = side.info()
    elif op == "peak":
      answer = {"peak_rss_mb": peak_rss_mb()}
    elif op == "reset_peak":
      answer = {"reset": reset_peak_rss()}
    else:
      answer = getattr(side, op)(**request)
    out.write(json.dumps(answer) + "\n")
    out.flush()


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--torch-python",
    default=sys.executable,
    help="interpreter with torch and diffusers (pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu diffusers)",
  )
  parser.add_argument("--batch", type=int, default=1, help="also timed at this batch size")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds per op and batch")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's threads")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--rtol", type=float, default=5e-5, help="parity: max |Δ| / max |diffusers|")
  parser.add_argument(
    "--max-other-cores",
    type=float,
    default=0.25,
    help="a round during which other processes kept more cores busy is repeated (once per round)",
  )
  parser.add_argument("--worker", choices=("torch", "jax"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == "torch":
    return serve(TorchSide)
  if args.worker == "jax":
    from jaxdiff import cpu

    cpu.apply_xla_flags()  # before JAX's backend exists
    return serve(JaxSide)

  if subprocess.run(
    [args.torch_python, "-c", "import torch, diffusers"], capture_output=True, check=False
  ).returncode:
    parser.error(f"{args.torch_python} cannot import torch and diffusers: pass --torch-python.")
  batches = sorted({1, args.batch})
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    me = str(pathlib.Path(__file__).resolve())
    workers = {
      "diffusers": Worker("diffusers", [args.torch_python, me, "--worker=torch"]),
      "jaxdiff": Worker("jaxdiff", [sys.executable, me, "--worker=jax"]),
    }
    # diffusers first: it saves the weights jaxdiff loads.
    info = {
      "diffusers": workers["diffusers"].ask(
        op="setup", weights_dir=str(tmp / "vae"), threads=args.threads, seed=args.seed
      )
    }
    info["jaxdiff"] = workers["jaxdiff"].ask(op="setup", weights_dir=str(tmp / "vae"))
    if info["jaxdiff"]["params"] != info["diffusers"]["params"]:
      sys.exit(f"error: parameter counts differ: {info}.")

    rng = np.random.default_rng(args.seed)
    b, s = max(batches), SIZE // FACTOR
    np.save(tmp / "x.npy", rng.uniform(-1, 1, (b, SIZE, SIZE, 3)).astype(np.float32))
    np.save(tmp / "z.npy", rng.standard_normal((b, s, s, SD_VAE["latent_channels"]), np.float32))
    for w in workers.values():
      w.ask(op="load", x=str(tmp / "x.npy"), z=str(tmp / "z.npy"))

    # Compile, then one untimed call per op and batch: the parity check and the warm-up.
    errors = {}
    for batch in batches:
      for op in OPS:
        outputs = {}
        for name, w in workers.items():
          w.ask(op="prepare", which=op, batch=batch)
          out = tmp / f"{op}_{batch}_{name}.npy"
          w.ask(op="run", which=op, batch=batch, out=str(out))
          outputs[name] = np.load(out)
        errors[op, batch] = relative_error(outputs["jaxdiff"], outputs["diffusers"])
        if errors[op, batch] > args.rtol:
          sys.exit(
            f"error: jaxdiff's {op} differs from diffusers' by {errors[op, batch]:.2e} "
            f"(max |Δ| / max |diffusers|) > --rtol={args.rtol}."
          )
    peaks = {}
    for name, w in workers.items():
      peaks[name] = {"peak_rss_mb_setup": round(w.ask(op="peak")["peak_rss_mb"], 1)}
      peaks[name]["peak_reset"] = w.ask(op="reset_peak")["reset"]

    for batch in batches:
      for op in OPS:
        timed = alternate(
          workers, args.rounds, {"op": "time", "which": op, "batch": batch}, args.max_other_cores
        )
        seconds = timed["seconds"]
        for name in workers:
          line = {
            "framework": name,
            "op": op,
            "batch": batch,
            "seconds_per_image": round(float(np.median(seconds[name])) / batch, 3),
            "seconds_per_round": [round(t, 3) for t in seconds[name]],
          }
          if name == "jaxdiff":
            line["compile_s"] = round(workers[name].ask(op="info")["compile_s"][f"{op}@{batch}"], 2)
          print(json.dumps(line), flush=True)
        ratio = {
          "ratio": "jaxdiff/diffusers",
          "op": op,
          "batch": batch,
          "throughput": round(median_ratio(seconds["diffusers"], seconds["jaxdiff"]), 3),
          "per_round": [round(t / u, 3) for u, t in zip(seconds["jaxdiff"], seconds["diffusers"])],
          "max_rel_diff": float(f"{errors[op, batch]:.3g}"),
          "other_processes_cores": timed["other_cores"],
          "rounds_repeated": timed["repeated"],
        }
        print(json.dumps(ratio), flush=True)

    info["jaxdiff"] = workers["jaxdiff"].ask(op="info")
    for name, w in workers.items():
      timed_peak = w.ask(op="peak")["peak_rss_mb"]
      w.close()
      line = {"framework": name, **peaks[name], "peak_rss_mb_timed": round(timed_peak, 1)}
      print(json.dumps({**line, **info[name]}), flush=True)


if __name__ == "__main__":
  main()
