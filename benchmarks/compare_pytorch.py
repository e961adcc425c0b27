"""jaxdiff's U-Net against diffusers' `UNet2DModel` in PyTorch, on the same CPU in one run.

    pip install torch --index-url https://download.pytorch.org/whl/cpu diffusers   # any interpreter
    python benchmarks/compare_pytorch.py --torch-python=/path/to/python-with-torch [--quick]

Both frameworks run the very same network: diffusers builds a `UNet2DModel` and saves its initial
weights, and jaxdiff loads them with `jaxdiff.convert.load_diffusers_unet` (so the parameter counts
agree by construction, and are checked). Two layouts (CONFIGS below):
  small    16×16×1, block_out_channels (32, 64, 64), 2 res blocks per level, attention at 8×8 and in
           the 4×4 mid block, 8-channel heads: the 1.6M-parameter digits model of
           benchmarks/digits_vs_diffusers.py without its class embedding.
  cifar10  google/ddpm-cifar10-32: 32×32×3, (128, 256, 256, 256), 2 res blocks, attention at 16×16
           (one head), downsample padding 0, freq_shift 1; 35.7M parameters.

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
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TORCH_WORKER = HERE / "compare_pytorch_torch.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

CONFIGS = {
  "small": {
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
}


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


def jax_programs(model, *, steps_per_call: int, sample_steps: int):
  """(params, tx, train_call, sample, model_def) for a jaxdiff U-Net: train_call(params, opt_state, x0, key)
  runs `steps_per_call` unrolled ε-MSE Adam steps (as jaxdiff.train.step.make_train_fn does) and
  returns (params, opt_state, loss); sample(params, x_T) is DDIM with `sample_steps` steps."""
  import jax
  import optax
  from flax import nnx

  from jaxdiff import diffusion, schedules
  from jaxdiff.samplers import ddim
  from jaxdiff.state import ModelDef

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model_def = ModelDef(graphdef, rest)
  schedule = schedules.make("linear", 1000)
  tx = optax.adam(1e-4)

  def train_call(params, opt_state, x0, key):
    for i in range(steps_per_call):
      step_key = jax.random.fold_in(key, i)

      def loss_fn(p, step_key=step_key):
        return diffusion.mse_loss(step_key, model_def.bind(p), x0, schedule=schedule)[0]

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    return params, opt_state, loss

  def sample(params, x_T):
    bound = model_def.bind(params)
    return ddim(lambda x, t: bound(x, t), schedule, x_T, num_steps=sample_steps)

  return params, tx, train_call, sample, model_def


class JaxSide:
  """The jaxdiff worker: the U-Net loaded from diffusers' saved weights, its train and DDIM
  programs compiled ahead of time."""

  def __init__(self, spec: dict):
    import jax
    import jax.numpy as jnp

    from jaxdiff.convert import load_diffusers_unet

    self.jax = jax
    k = spec["steps_per_call"]
    params, tx, train_call, sample, model_def = jax_programs(
      load_diffusers_unet(spec["weights_dir"]), steps_per_call=k, sample_steps=spec["sample_steps"]
    )

    def forward(params, x, t):
      return model_def.bind(params)(x, t)

    size, channels = spec["config"]["sample_size"], spec["config"]["in_channels"]
    self.params = params
    self.opt_state = tx.init(params)
    self.x0 = jax.random.uniform(
      jax.random.key(spec["seed"]), (spec["train_batch"], size, size, channels), jnp.float32, -1, 1
    )
    self.key = jax.random.key(spec["seed"] + 1)
    self.calls = 0
    self.steps_per_call = k
    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    x_T = jax.ShapeDtypeStruct((spec["sample_batch"], size, size, channels), jnp.float32)

    start = time.perf_counter()
    self.sample_fn = jax.jit(sample).lower(params, x_T).compile()
    self.compile_sample_s = time.perf_counter() - start
    # The train program is compiled on the first (untimed) train call, after the sampling phase:
    # a sampling process (--mode=sample) never compiles it, so the compiler's memory for it must
    # not count toward sampling's peak RSS.
    self._train_call, self.train_fn, self.compile_train_s = train_call, None, None
    self.sample_params = jax.tree.map(jnp.copy, params)
    self.forward_fn = jax.jit(forward)

  def _compile_train(self):
    start = time.perf_counter()
    self.train_fn = (
      self.jax.jit(self._train_call, donate_argnums=(0, 1))
      .lower(self.params, self.opt_state, self.x0, self.key)
      .compile()
    )
    self.compile_train_s = time.perf_counter() - start

  def setup_info(self) -> dict:
    from jaxdiff import cpu

    return {
      "params": self.num_params,
      "compile_train_s": self.compile_train_s,
      "compile_sample_s": self.compile_sample_s,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),  # as apply_xla_flags left them
      "cpu_fast_paths": cpu.status(),
    }

  def train(self, steps: int) -> float:
    if steps % self.steps_per_call:
      raise ValueError(f"{steps} steps do not split into calls of {self.steps_per_call}.")
    jax = self.jax
    if self.train_fn is None:
      self._compile_train()
    start = time.perf_counter()
    for _ in range(steps // self.steps_per_call):
      key = jax.random.fold_in(self.key, self.calls)
      self.params, self.opt_state, loss = self.train_fn(self.params, self.opt_state, self.x0, key)
      self.calls += 1
    jax.block_until_ready(loss)
    return time.perf_counter() - start

  def forward(self, x: np.ndarray, t: int) -> np.ndarray:
    t = np.full((len(x),), t, np.int32)
    return np.asarray(self.forward_fn(self.sample_params, x, t))

  def sample(self, x_T: np.ndarray) -> tuple[float, np.ndarray]:
    x_T = self.jax.device_put(x_T)
    start = time.perf_counter()
    x0 = self.jax.block_until_ready(self.sample_fn(self.sample_params, x_T))
    return time.perf_counter() - start, np.asarray(x0)


def serve(make_side):
  """Answers JSON requests from stdin on stdout, for either worker (the protocol is described in
  compare_pytorch_torch.py); make_side(setup request) builds a JaxSide or TorchSide."""
  out = sys.stdout
  sys.stdout = sys.stderr
  side = None
  for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "setup":
      side = make_side(request)
      answer = side.setup_info()
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
    elif op == "info":
      answer = side.setup_info()
    else:
      raise ValueError(f"unknown op {op!r}")
    out.write(json.dumps(answer) + "\n")
    out.flush()


class Worker:
  """A worker process spoken to one JSON line at a time."""

  def __init__(self, name: str, command: list, env: dict | None = None):
    self.name = name
    self.proc = subprocess.Popen(
      command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )

  def ask(self, **request) -> dict:
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      sys.exit(f"error: the {self.name} worker died (exit code {self.proc.wait()}); see above.")
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def busy_cpu_seconds() -> float:
  """CPU seconds the whole machine has spent busy (any process), from /proc/stat."""
  with open("/proc/stat") as f:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
  return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, all threads


def timed(workers: dict, name: str, request: dict) -> tuple[float, float]:
  """Runs a timed request on one worker: (its seconds, cores other processes kept busy meanwhile,
  i.e. machine-wide busy CPU time minus this benchmark's own, per second of wall-clock)."""
  ours = [os.getpid()] + [w.proc.pid for w in workers.values()]
  busy, mine, start = busy_cpu_seconds(), sum(map(process_cpu_seconds, ours)), time.perf_counter()
  seconds = workers[name].ask(**request)["seconds"]
  wall = time.perf_counter() - start
  others = busy_cpu_seconds() - busy - (sum(map(process_cpu_seconds, ours)) - mine)
  return seconds, max(others, 0.0) / wall


def alternate(workers: dict, rounds: int, request: dict, max_other_cores: float) -> dict:
  """Times `request` on every worker, rotating who goes first, until `rounds` rounds ran with
  other processes below `max_other_cores` (at most `rounds` rounds are repeated; if too few are
  clean, all are kept). {"seconds": {name: [...]}, "other_cores": [...], "repeated": n}."""
  names, kept, rejected = list(workers), [], []
  for r in range(2 * rounds):
    order = names[r % len(names) :] + names[: r % len(names)]
    results = {name: timed(workers, name, request) for name in order}
    other = max(o for _, o in results.values())
    (kept if other <= max_other_cores else rejected).append((results, other))
    if len(kept) == rounds:
      break
  if len(kept) < rounds:
    print(f"warning: other processes kept the CPU busy in {len(rejected)} rounds.", file=sys.stderr)
    kept += rejected
  return {
    "seconds": {name: [res[name][0] for res, _ in kept] for name in names},
    "other_cores": [round(other, 2) for _, other in kept],
    "repeated": len(rejected),
  }


def median_ratio(numerator: list, denominator: list) -> float:
  return float(np.median(numerator) / np.median(denominator))


def compare(name: str, spec: dict, args, tmp: pathlib.Path) -> list[dict]:
  """Runs one config on both workers; its JSON lines (PyTorch, jaxdiff, ratios)."""
  common = {
    "config": spec["config"],
    "train_batch": spec["train_batch"],
    "sample_batch": spec["sample_batch"],
    "sample_steps": args.sample_steps,
    "threads": args.threads,
    "seed": args.seed,
    "weights_dir": str(tmp / f"{name}_unet"),
  }
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
  workers = {
    "pytorch": Worker("PyTorch", [args.torch_python, str(TORCH_WORKER)]),
    "jaxdiff": Worker("jaxdiff", [sys.executable, __file__, "--worker"], env=env),
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
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    from jaxdiff import cpu

    cpu.apply_xla_flags()  # before JaxSide creates JAX's backend
    serve(JaxSide)
    return
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
