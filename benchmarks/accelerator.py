"""Train-step speed of the papers' models on whatever backend JAX finds: one JSON line per model.

    python benchmarks/accelerator.py                              # defaults for the backend
    python benchmarks/accelerator.py --models=dit-xl2 --batch=256 --steps=20 --dtype=bf16
    python benchmarks/accelerator.py --models=dit-xl2 --steps=1   # on CPU: ~10 minutes, ~17 GB

Models (MODELS below), each through jaxdiff's own pieces (`run.build`, the train step of
`train.step.make_train_fn`: loss, AdamW, EMA, label dropout), all visible devices as one
data-parallel mesh, on a fixed synthetic batch (this measures the step, not the input pipeline):
  dit-xl2       DiT-XL/2 on 32×32×4 latents (256² ImageNet through the SD autoencoder), 1000
                classes, learned variance with L_hybrid, AdamW 1e-4, EMA 0.9999 (Peebles & Xie).
  cifar10-unet  configs/cifar10.py: the DDPM CIFAR-10 U-Net (35.7M parameters), ε-MSE.
  digits-dit    configs/digits_dit.py at its own batch: a seconds-long check that the script works
                (not run unless named).

Fields: model, backend, device_kind, devices, dtype (compute; parameters stay float32), batch
(global), steps (timed, after one untimed warm-up call), step_ms (mean over the timed steps),
examples_per_sec, attention (the DiT's kernel: cudnn or xla), trace_s and compile_s (tracing + lowering, then XLA compilation of the step),
step_tflop (XLA's cost analysis of the compiled step: one device's share, so what that device
executes, rematerialization included), tflops_per_device (achieved), peak_tflops (the chip's
dense bf16 peak, PEAK_BF16_TFLOPS; null for an unknown device or CPU), mfu (achieved / peak, null
without a peak; for --dtype=fp32 still against the bf16 peak), forward_gflops (one example's
forward pass, a multiply-add counted once, as the papers: `jaxdiff.models.cost`), parameters,
peak_memory_mb and memory_source (the device's peak bytes in use where the backend reports it,
else the process's peak RSS), loss_finite. Each model runs in a process of its own, so its peaks
are its own. On CPU, SLOW_ON_CPU's models run only when --models names them (a line says so).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent

# Dense bf16 peak per chip, TFLOP/s, by a substring of jax's device_kind (first match wins).
PEAK_BF16_TFLOPS = (
  ("TPU v4", 275),  # cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16 per chip
  ("TPU v5 lite", 197),  # v5e, cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16 per chip
  ("TPU v5e", 197),
  ("TPU v5p", 459),  # cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16 per chip
  ("TPU v5", 459),  # v5p's device_kind
  ("TPU v6 lite", 918),  # v6e (Trillium), cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16
  ("TPU v6e", 918),
  # NVIDIA datasheets give bf16 Tensor Core peaks with 2:4 sparsity; dense is half of it.
  ("A100", 312),  # A100 datasheet: 312 TFLOPS bf16 dense (624 sparse), SXM and PCIe
  ("H100 PCIe", 756),  # H100 datasheet: 1,513 sparse
  ("H100 NVL", 835),  # H100 datasheet: 1,671 sparse
  ("H100", 989),  # H100 SXM: 1,979 sparse
  ("H200 NVL", 835),  # H200 datasheet: 1,671 sparse
  ("H200", 989),  # H200 SXM: 1,979 sparse
)


def _dit_xl2(config_lib):
  c = config_lib.default_config(arch="dit")
  c.data.image_size, c.data.channels, c.data.num_classes = 32, 4, 1000
  c.model.preset = "DiT-XL/2"
  c.model.class_conditional = c.model.learn_sigma = True
  c.diffusion.loss = "hybrid"  # L_simple for ε, the VLB for Σ (Nichol & Dhariwal), as the paper
  c.optim.learning_rate, c.optim.weight_decay, c.optim.grad_clip_norm = 1e-4, 0.0, 0.0
  c.train.ema_decay = 0.9999
  return c, 256  # the paper's batch size


def _cifar10_unet(config_lib):
  return config_lib.load_file(REPO / "configs" / "cifar10.py"), 128  # Ho et al.'s batch size


def _digits_dit(config_lib):
  # small: a check that the script runs end to end (the test suite runs it), seconds anywhere
  return config_lib.load_file(REPO / "configs" / "digits_dit.py"), None  # None: its own batch


MODELS = {"dit-xl2": _dit_xl2, "cifar10-unet": _cifar10_unet, "digits-dit": _digits_dit}
# What runs when --models is not given: the papers' models.
DEFAULT_MODELS = ("dit-xl2", "cifar10-unet")
# Left out on CPU unless --models names them (measured on the project's 2-core machine: the train
# step compiled in 4.7-8.8 minutes, with or without remat and jaxdiff's XLA:CPU flag; the compiler
# peaked at ~6 GB on top of the ~11 GB of parameters, EMA and Adam state).
SLOW_ON_CPU = {"dit-xl2": "its train step takes 5-9 minutes to compile on CPU and ~17 GB"}


def peak_tflops(device_kind: str) -> float | None:
  return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_kind), None)


def peak_memory(device) -> tuple[float, str]:
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def _attention(config, dtype: str) -> str | None:
  """The DiT's attention kernel as its trace picks it (None for the U-Net)."""
  if config.model.arch != "dit":
    return None
  import jax.numpy as jnp

  from jaxdiff.models.dit import attention_implementation
  from jaxdiff.models.table import typed_config

  model = typed_config(config.model)  # the preset's sizes
  head_dim = model.hidden_size // model.num_heads
  compute = jnp.bfloat16 if dtype == "bf16" else jnp.float32
  return attention_implementation(config.model.attention, compute, head_dim)


def measure(name: str, args) -> dict:
  """One model's line; runs in a process of its own."""
  import jax
  import numpy as np

  from jaxdiff import config as config_lib
  from jaxdiff import data, parallel
  from jaxdiff import run as run_lib
  from jaxdiff.models import parameter_count
  from jaxdiff.models.cost import network_cost
  from jaxdiff.train.step import make_train_fn

  jax.config.update("jax_enable_compilation_cache", False)  # compile_s is never a cache hit
  config, accelerator_batch = MODELS[name](config_lib)
  backend = jax.default_backend()
  dtype = args.dtype or ("fp32" if backend == "cpu" else "bf16")
  config.train.compute_dtype = {"bf16": "bfloat16", "fp32": "float32"}[dtype]
  if args.batch or backend == "cpu" or accelerator_batch:
    config.data.batch_size = args.batch or (1 if backend == "cpu" else accelerator_batch)
  if args.remat:
    config.model.remat = args.remat
  if args.attention:
    if config.model.arch != "dit":
      raise SystemExit(f"error: --attention applies to the DiT, not to {name}.")
    config.model.attention = args.attention
  config_lib.validate(config)

  mesh = parallel.make_mesh(None, fsdp=1)
  parts = run_lib.build(config)
  # before the compile and the timed steps, so that a failure here costs seconds, not the run
  forward_gflops = network_cost(config.model, parts.spec).gflops
  state = jax.device_put(parts.state, parallel.state_shardings(mesh, parts.state))
  fn = make_train_fn(mesh, state, steps_per_call=1, **parts.step_kwargs())
  d = config.data
  rng = np.random.default_rng(0)
  shape = (1, d.batch_size, d.image_size, d.image_size, d.channels)
  host = {
    "image": rng.uniform(-1, 1, shape).astype(np.float32),
    "label": rng.integers(0, d.num_classes or 1, (1, d.batch_size)).astype(np.int32),
  }
  batch = data.make_global_batch(host, parallel.stacked_batch_sharded(mesh))

  # the compiled step takes the objective's frozen parameters (LPIPS, a teacher) explicitly too
  frozen = fn.frozen_params
  start = time.perf_counter()
  lowered = fn.lower(state, batch, parts.codec.params)
  trace_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  step_flops = float(cost.get("flops", 0.0)) or None

  state, metrics = compiled(state, batch, parts.codec.params, frozen)  # warm-up, untimed
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch, parts.codec.params, frozen)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / args.steps

  device = jax.devices()[0]
  peak = peak_tflops(device.device_kind) if backend != "cpu" else None
  achieved = step_flops / step_s / 1e12 if step_flops else None
  memory_mb, memory_source = peak_memory(device)
  return {
    "model": name,
    "backend": backend,
    "device_kind": device.device_kind,
    "devices": int(mesh.devices.size),
    "dtype": dtype,
    "remat": config.model.remat or None,
    "attention": _attention(config, dtype),
    "batch": d.batch_size,
    "steps": args.steps,
    "step_ms": round(1000 * step_s, 2),
    "examples_per_sec": round(d.batch_size / step_s, 2),
    "trace_s": round(trace_s, 2),
    "compile_s": round(compile_s, 2),
    "step_tflop": round(step_flops / 1e12, 4) if step_flops else None,
    "tflops_per_device": round(achieved, 3) if achieved else None,
    "peak_tflops": peak,
    "mfu": round(achieved / peak, 4) if achieved and peak else None,
    "forward_gflops": round(forward_gflops, 3),
    "parameters": int(parameter_count(state.params)),
    "peak_memory_mb": round(memory_mb, 1),
    "memory_source": memory_source,
    "loss_finite": bool(np.isfinite(np.asarray(metrics["loss"])).all()),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--models",
    help=f"of {', '.join(MODELS)} (default: {', '.join(DEFAULT_MODELS)}; on CPU all but "
    f"{', '.join(SLOW_ON_CPU)})",
  )
  parser.add_argument(
    "--batch", type=int, help="global batch (default: the paper's on accelerators, 1 on CPU)"
  )
  parser.add_argument("--steps", type=int, help="timed steps (default: 20, or 2 on CPU)")
  parser.add_argument(
    "--dtype", choices=("bf16", "fp32"), help="compute dtype (default: bf16, or fp32 on CPU)"
  )
  parser.add_argument("--remat", default="", help="model.remat: '', 'full' or 'dots'")
  parser.add_argument(
    "--attention", default="", help="the DiT's model.attention: 'auto' (default), 'xla' or 'cudnn'"
  )
  parser.add_argument("--one", help=argparse.SUPPRESS)  # the worker process of one model
  parser.add_argument("--by-default", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    from jaxdiff import cpu

    cpu.apply_xla_flags()  # as `python -m jaxdiff.main` runs, before JAX starts its backend
    import jax  # only here: the parent process must not take the accelerator's memory

    on_cpu = jax.default_backend() == "cpu"
    if on_cpu and args.by_default and args.one in SLOW_ON_CPU:
      reason = f"left out on CPU: {SLOW_ON_CPU[args.one]}; --models={args.one} runs it"
      print(json.dumps({"model": args.one, "backend": "cpu", "skipped": reason}), flush=True)
      return
    if args.steps is None:
      args.steps = 2 if on_cpu else 20
    print(json.dumps(measure(args.one, args)), flush=True)
    return
  names = args.models.split(",") if args.models else list(DEFAULT_MODELS)
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}.")
  passed = [f"--{k}={v}" for k, v in vars(args).items() if v and k not in ("models", "one")]
  passed += [] if args.models else ["--by-default"]
  for name in names:
    result = subprocess.run(
      [sys.executable, __file__, f"--one={name}", *passed], env=dict(os.environ), check=False
    )
    if result.returncode:
      sys.exit(f"error: the {name} worker failed (exit code {result.returncode}); see above.")


if __name__ == "__main__":
  main()
