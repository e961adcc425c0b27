"""--mode=sample: the newest checkpoint's EMA network → samples/samples_NxHxWxC.npz + grid.png."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
import tqdm

from jaxdiff import generate
from jaxdiff.run import RunError, restore_for_inference, setup


def sample(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
  """Writes sample.num_samples images drawn with the sample.* settings.

  Batches are kept in a partial folder as they are made, so an interrupted run resumes where it
  stopped and draws the same images (batch b uses fold_in(key, b), see generate.Generator.batch).
  Existing outputs are never overwritten.
  """
  run = setup(config, workdir)
  step, state = restore_for_inference(run)
  s, d = config.sample, config.data
  name = f"{s.num_samples}x{d.image_size}x{d.image_size}x{d.channels}"
  out_dir = run.workdir / "samples"
  npz, grid = out_dir / f"samples_{name}.npz", out_dir / "grid.png"
  for existing in (npz, grid):
    if existing.exists():
      raise RunError(
        f"{existing} exists already; move it away (it is never overwritten) and run again."
      )
  partial = out_dir / f"partial_step{step}_{name}_seed{config.seed}"
  partial.mkdir(parents=True, exist_ok=True)
  generator = generate.Generator(run, s.batch_size)
  key = generate.sample_key(config, step)
  num_batches = -(-s.num_samples // s.batch_size)
  for b in tqdm.trange(num_batches, unit="batch", disable=jax.process_index() != 0):
    part = partial / f"{b:05d}.npz"
    if part.exists():
      continue
    images, labels = generator.batch(state.ema_params, key, b)
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
    generate.save_grid(images[:100], grid)
    for b in range(num_batches):
      (partial / f"{b:05d}.npz").unlink()
    partial.rmdir()
    print(f"wrote {npz} and {grid} from the EMA parameters at step {step}")
  return npz
