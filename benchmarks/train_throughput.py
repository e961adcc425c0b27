"""Training throughput of a config's train step: prints one JSON line per measurement.

    python benchmarks/train_throughput.py --config=configs/digits.py [--config.data.batch_size=...]
    python benchmarks/train_throughput.py --config=configs/cifar10.py --steps=20

Fields: config, backend, devices, batch, steps_per_call, images_per_sec, step_ms, trace_s (tracing
and lowering the train step to XLA, never cached), compile_s (XLA
compilation of the train step: near 0 when JAX's persistent cache, config.compilation_cache_dir,
already holds it), first_call_s, process_s (interpreter start to the end), compilation_cache,
peak_memory_mb (the device's peak when the backend reports it, else the process's max RSS).
Batches are synthetic (uniform in [-1, 1]): this measures the step, not the input pipeline. With
`--config.autoencoder.cache=DIR` (a latent run reading cached latents) they are synthetic posterior
moments (mean N(0, 1), log-variance −4) and the encoder is out of the step, as in training.
"""

import time

PROCESS_START = time.perf_counter()

import json
import resource

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxdiff import cpu, data, models, parallel
from jaxdiff import run as run_lib
from jaxdiff.train.step import make_train_fn

config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config file.")
flags.DEFINE_integer("steps", 10, "Timed calls after the warm-up call.")
FLAGS = flags.FLAGS


def peak_memory_mb():
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  config = FLAGS.config
  run_lib.enable_compilation_cache(config)
  d, k = config.data, config.train.steps_per_call
  mesh = parallel.make_mesh(config.train.num_devices, fsdp=config.train.fsdp)
  parts = run_lib.build(config)
  state = jax.device_put(parts.state, parallel.state_shardings(mesh, parts.state))
  fn = make_train_fn(mesh, state, steps_per_call=k, **parts.step_kwargs())
  rng = np.random.default_rng(0)
  host = {
    "image": rng.uniform(-1, 1, (k, d.batch_size, d.image_size, d.image_size, d.channels)).astype(
      np.float32
    ),
    "label": rng.integers(0, d.num_classes or 1, (k, d.batch_size)).astype(np.int32),
  }
  if config.autoencoder.cache:  # steps read cached posterior moments instead of images
    size, channels = parts.codec.latent_shape(d.image_size, d.channels)
    mean = rng.standard_normal((k, d.batch_size, size, size, channels))
    moments = np.concatenate([mean, np.full_like(mean, -4.0)], -1).astype(np.float32)
    host = {"moments": moments, "label": host["label"]}
  stacked = parallel.stacked_batch_sharded(mesh)
  batch = data.make_global_batch(host, stacked)
  start = time.perf_counter()
  lowered = fn.lower(state, batch, parts.codec.params)
  trace_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  # the compiled program itself: calling `fn` would trace and compile it a second time
  step = lambda state: compiled(state, batch, parts.codec.params, fn.frozen_params)
  start = time.perf_counter()
  state, metrics = step(state)
  jax.block_until_ready(metrics)
  first_call_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  params = models.parameter_count(state.params)
  print(
    json.dumps(
      {
        "config": FLAGS["config"].value if isinstance(FLAGS["config"].value, str) else "config",
        "backend": jax.default_backend(),
        "devices": mesh.devices.size,
        "params": int(params),
        "batch": d.batch_size,
        "steps_per_call": k,
        "images_per_sec": round(FLAGS.steps * k * d.batch_size / elapsed, 2),
        "step_ms": round(1000 * elapsed / (FLAGS.steps * k), 2),
        "trace_s": round(trace_s, 2),
        "compile_s": round(compile_s, 2),
        "first_call_s": round(first_call_s, 2),
        "process_s": round(time.perf_counter() - PROCESS_START, 2),
        "compilation_cache": jax.config.jax_compilation_cache_dir or None,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "cpu_fast_paths": cpu.status(),
      }
    )
  )


if __name__ == "__main__":
  cpu.apply_xla_flags()  # before main creates JAX's backend
  app.run(main)
