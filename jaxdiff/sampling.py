"""--mode=sample: the newest checkpoint's EMA network → samples/<what made them>/samples_NxHxWxC.npz
and grid.png.

The folder is named by what made the samples — the checkpoint step, the sampler and its steps,
the guidance scale, the seed and a digest of every other `sample.*` option — so runs with other
settings never collide, and a folder that exists holds exactly the samples this command would
draw again.
"""

from __future__ import annotations

import hashlib
import json
import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils

from jaxdiff import generate, models, storage
from jaxdiff.run import restore_for_inference, setup


def output_name(config: ml_collections.ConfigDict, step: int) -> str:
  """The samples folder's name: readable for what users vary, a digest for the rest."""
  s = config.sample
  made_by = json.dumps({"sample": s.to_dict(), "seed": config.seed}, sort_keys=True, default=str)
  digest = hashlib.sha256(made_by.encode()).hexdigest()[:8]
  if models.architecture(config.model.arch).denoiser:
    how = f"{s.sampler}{s.num_steps}_guidance{s.guidance_scale:g}"
  else:
    how = "generate"  # a network that samples by itself reads no sampler options
  return f"step{step}_{how}_seed{config.seed}_{digest}"


def sample(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  """Writes sample.num_samples images drawn with the sample.* settings; returns the npz's path.

  Batches are kept in a partial folder as they are made, so an interrupted run resumes where it
  stopped and draws the same images (batch b uses fold_in(key, b), see generate.Generator.batch).
  Every process draws its devices' rows of each batch; process 0 writes the files.
  """
  run = setup(config, workdir, prepare_data=False)  # no images are read: data.folder may be gone
  step, state = restore_for_inference(run)
  s, d = config.sample, config.data
  out_dir = run.workdir / "samples" / output_name(config, step)
  npz = out_dir / f"samples_{s.num_samples}x{d.image_size}x{d.image_size}x{d.channels}.npz"
  grid = out_dir / "grid.png"
  if npz.exists():  # the same checkpoint and settings: the same images
    if jax.process_index() == 0:
      print(f"{npz} exists already: these settings were sampled from this checkpoint before")
    return npz
  partial = out_dir / "partial"
  generator = generate.Generator(run, s.batch_size)
  key = generate.sample_key(config, step)
  num_batches = -(-s.num_samples // s.batch_size)
  # Every process must draw the same batches (each call is a collective): process 0, which
  # writes them, says which are done.
  done = np.zeros(num_batches, np.int32)
  if jax.process_index() == 0:
    partial.mkdir(parents=True, exist_ok=True)
    done = np.asarray([(partial / f"{b:05d}.npz").exists() for b in range(num_batches)], np.int32)
  done = multihost_utils.broadcast_one_to_all(done)
  for b in tqdm.trange(num_batches, unit="batch", disable=jax.process_index() != 0):
    if done[b]:
      continue
    images, labels = generator.batch(state.ema_params, key, b)
    if jax.process_index() == 0:
      labels = np.asarray([] if labels is None else labels)
      storage.save_npz(partial / f"{b:05d}.npz", images=images, labels=labels)
  if jax.process_index() == 0:
    parts = [storage.load_npz(partial / f"{b:05d}.npz") for b in range(num_batches)]
    images = np.concatenate([p["images"] for p in parts])[: s.num_samples]
    labels = np.concatenate([p["labels"] for p in parts])[: s.num_samples]
    arrays = {"arr_0": images} if labels.size == 0 else {"arr_0": images, "arr_1": labels}
    generate.save_grid(images[:100], grid)
    storage.save_npz(npz, **arrays)  # last: an npz that exists is complete
    for b in range(num_batches):
      (partial / f"{b:05d}.npz").unlink()
    if partial.exists():  # an object store has no empty folders: nothing is left of it there
      partial.rmdir()
    print(f"wrote {npz} and {grid} from the EMA parameters at step {step}")
  return npz
