"""Sampling from a trained model: jitted, sharded along the batch, written as npz and PNG grids."""

from __future__ import annotations

import math
import pathlib

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from PIL import Image

from jaxdiff import guidance, parallel, samplers, schedules
from jaxdiff.checkpoint import abstract
from jaxdiff.schedules import Schedule
from jaxdiff.train.setup import TrainingError, setup
from jaxdiff.train.state import ModelDef


def class_labels(config: ml_collections.ConfigDict, count: int, offset: int = 0):
  """Labels for samples offset … offset+count−1: the configured list repeated, or 0..K−1 cycled."""
  if not config.model.class_conditional:
    return None
  wanted = config.sample.class_labels
  cycle = np.asarray(wanted if wanted else range(config.data.num_classes), np.int32)
  return cycle[(offset + np.arange(count)) % len(cycle)]


def make_sample_fn(
  model_def: ModelDef, schedule: Schedule, config: ml_collections.ConfigDict, mesh, batch_size: int
):
  """jit fn(params, key, labels) -> images (batch_size, H, W, C) in [-1, 1], sharded over `data`."""
  s, d = config.sample, config.data
  shape = (batch_size, d.image_size, d.image_size, d.channels)
  if batch_size % mesh.devices.size:
    raise ValueError(
      f"sample.batch_size {batch_size} must be divisible by the "
      f"{mesh.devices.size} devices; change sample.batch_size."
    )
  if s.sampler == "ddpm" and s.num_steps < schedule.num_timesteps:
    ddpm_schedule = schedules.respace(schedule, f"{s.num_steps}")
  else:
    ddpm_schedule = schedule

  def sample(params, key, labels):
    model = model_def.bind(params)
    model.eval()
    if labels is None:
      model_fn = lambda x, t: model(x, t)
    elif s.guidance_scale == 1.0:
      model_fn = lambda x, t: model(x, t, labels)
    else:
      model_fn = guidance.classifier_free(
        model,
        labels,
        guidance_scale=s.guidance_scale,
        null_label=d.num_classes,
        num_guided_channels=d.channels,
      )
    noise_key, sampler_key = jax.random.split(key)
    x_T = jax.lax.with_sharding_constraint(
      jax.random.normal(noise_key, shape), parallel.batch_sharded(mesh)
    )
    if s.sampler == "ddim":
      return samplers.ddim(
        model_fn,
        schedule,
        x_T,
        num_steps=s.num_steps,
        eta=s.eta,
        variance=s.variance,
        spacing=s.spacing,
        prediction=config.diffusion.prediction,
        clip_denoised=s.clip_denoised,
        key=sampler_key,
      )
    if s.sampler == "ddpm":
      return samplers.ddpm(
        model_fn,
        ddpm_schedule,
        x_T,
        variance=s.variance,
        prediction=config.diffusion.prediction,
        clip_denoised=s.clip_denoised,
        key=sampler_key,
      )
    raise ValueError(f"sample.sampler must be 'ddim' or 'ddpm', got {s.sampler!r}.")

  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  # None: the parameters stay as the train state holds them (replicated, or split over fsdp)
  return jax.jit(sample, in_shardings=(None, rep, batch), out_shardings=batch)


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats to uint8, rounding to the nearest level."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)


def save_grid(images: np.ndarray, path, *, scale: int = 2) -> None:
  """A near-square PNG grid of uint8 NHWC images, each upscaled `scale`× for viewing."""
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = image
  picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
  picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  picture.save(path)


def gather(images) -> np.ndarray:
  """A batch sharded over all processes' devices, whole, on every host."""
  return np.asarray(multihost_utils.process_allgather(images, tiled=True))


def sample(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
  """Sample mode: the newest checkpoint's EMA parameters → samples/samples_NxHxWxC.npz + grid.png.

  Batches are kept in a partial folder as they are made, so an interrupted run resumes where it
  stopped and draws the same images (batch b uses fold_in(key, b)). Existing outputs are never
  overwritten.
  """
  run = setup(config, workdir)
  restored = run.checkpointer.restore_latest(abstract(run.state), with_data=False)
  if restored is None:
    raise TrainingError(
      f"no checkpoint in {run.checkpointer.directory}; train first with "
      "--mode=train and the same --workdir."
    )
  step, state, _ = restored
  s, d = config.sample, config.data
  name = f"{s.num_samples}x{d.image_size}x{d.image_size}x{d.channels}"
  out_dir = run.workdir / "samples"
  npz, grid = out_dir / f"samples_{name}.npz", out_dir / "grid.png"
  for existing in (npz, grid):
    if existing.exists():
      raise TrainingError(
        f"{existing} exists already; move it away (it is never overwritten) and run again."
      )
  partial = out_dir / f"partial_step{step}_{name}_seed{config.seed}"
  partial.mkdir(parents=True, exist_ok=True)
  fn = make_sample_fn(run.model_def, run.schedule, config, run.mesh, s.batch_size)
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  num_batches = -(-s.num_samples // s.batch_size)
  for b in tqdm.trange(num_batches, unit="batch", disable=jax.process_index() != 0):
    part = partial / f"{b:05d}.npz"
    if part.exists():
      continue
    labels = class_labels(config, s.batch_size, b * s.batch_size)
    images = to_uint8(gather(fn(state.ema_params, jax.random.fold_in(key, b), labels)))
    if jax.process_index() == 0:
      tmp = part.with_suffix(".tmp.npz")
      np.savez(tmp, images=images, labels=np.asarray([] if labels is None else labels))
      tmp.rename(part)
  if jax.process_index() == 0:
    parts = [np.load(partial / f"{b:05d}.npz") for b in range(num_batches)]
    images = np.concatenate([p["images"] for p in parts])[: s.num_samples]
    labels = np.concatenate([p["labels"] for p in parts])[: s.num_samples]
    arrays = {"arr_0": images} if labels.size == 0 else {"arr_0": images, "arr_1": labels}
    np.savez(npz, **arrays)
    save_grid(images[:100], grid)
    for b in range(num_batches):
      (partial / f"{b:05d}.npz").unlink()
    partial.rmdir()
    print(f"wrote {npz} and {grid} from the EMA parameters at step {step}")
  return npz
