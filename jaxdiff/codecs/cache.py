"""Latents encoded once: `autoencoder.cache=DIR` takes the frozen encoder out of the train step.

The first run with a cache folder encodes the whole training split with the codec's encoder and
writes the posterior moments q(z|x) of every image (of its mirror too when the data are flipped at
random) as array_record files (`data.latent_records`), then `latents.json`, last, which makes the
folder a complete cache. Each step then reads moments and draws z ~ q(z|x) from them
(`Codec.from_moments`, a few elementwise operations) where it would have run the encoder: the same
latents in distribution as encoding on the fly, the LDM/DiT recipe's posterior sampling included.

A cache is keyed by the autoencoder (the fingerprint of its parameters) and the data (dataset,
split, image size, channels, labels, flips); a run given a cache made from anything else is refused
in one sentence, never silently trained on other latents. Several runs may share one cache folder.
Stored unscaled, the moments serve any latent scale factor.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath

from jaxdiff import storage
from jaxdiff.codecs.base import Codec
from jaxdiff.data import latent_records

MANIFEST = "latents.json"
FORMAT = 1


class CacheError(ValueError):
  """A latent cache that cannot serve this run; the message says why and what to do."""


def _file_name(process: int, count: int) -> str:
  return f"latents-{process:05d}-of-{count:05d}.array_record"


def _is_ours(path: epath.Path) -> bool:
  return path.name.startswith("latents-") and path.name.endswith(".array_record")


def key(codec: Codec, data: dict, *, flips: bool) -> dict:
  """What a cache must have been made from to serve a run: the autoencoder and the data."""
  if codec.moments is None:
    raise CacheError(
      "autoencoder.cache caches an autoencoder's latents, and this run's codec has none: set "
      "--config.codec.name=autoencoder, or clear autoencoder.cache."
    )
  return {"format": FORMAT, "fingerprint": codec.info.get("fingerprint"), **data, "flips": flips}


def read_manifest(folder: epath.Path, wanted: dict) -> dict | None:
  """The manifest of the complete cache in `folder` when it serves `wanted`; None when there is
  none yet (an empty folder, or one an interrupted encoding left); CacheError otherwise."""
  path = folder / MANIFEST
  if not path.is_file():
    others = [p.name for p in folder.iterdir() if not _is_ours(p)] if folder.is_dir() else []
    if others:
      raise CacheError(
        f"autoencoder.cache={folder} holds files that are not a latent cache ({others[0]}, …): "
        "name a new or empty folder."
      )
    return None
  manifest = json.loads(path.read_text())
  for name, value in wanted.items():
    have = manifest.get(name)
    if name == "flips" and have and not value:
      continue  # mirrored views are stored too; a run without flips reads the first only
    if have != value:
      raise CacheError(
        f"the latent cache in {folder} was made with {name}={have!r} but this run has "
        f"{value!r}: name another autoencoder.cache folder (or delete that one to re-encode)."
      )
  return manifest


def encode_all(
  codec: Codec, batches: Iterable[dict], path: epath.Path, *, flips: bool, batch_size: int
) -> tuple[int, tuple[int, ...] | None]:
  """Encodes every image of `batches` ({'image', 'label'?} in file order) into the record file
  `path`; (examples written, record shape). Batches are padded to `batch_size`, so the encoder
  compiles once."""
  moments_fn = jax.jit(codec.moments)
  # Each process encodes its own images on its own device: this process's copy of the
  # parameters, which a run holds replicated over every process's devices.
  params = jax.tree.map(
    lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, codec.params
  )
  shape = None

  def examples():
    nonlocal shape
    bar = tqdm.tqdm(
      batches, desc="encoding latents", unit="batch", leave=False, disable=jax.process_index() != 0
    )
    for batch in bar:
      images, labels = batch["image"], batch.get("label")
      n = len(images)
      padded = np.concatenate([images, np.repeat(images[:1], batch_size - n, axis=0)])
      views = [padded, padded[:, :, ::-1]] if flips else [padded]  # NHWC: [:, :, ::-1] mirrors
      out = np.stack([np.asarray(moments_fn(params, jnp.asarray(v))) for v in views])
      shape = (len(views), *out.shape[2:])  # out: (V, B, h, w, 2c), one (V, h, w, 2c) per image
      for i in range(n):
        yield out[:, i], None if labels is None else int(labels[i])

  count = latent_records.write_records(path, examples())
  return count, shape


def prepare(
  folder: str | epath.Path,
  codec: Codec,
  *,
  data: dict,
  flips: bool,
  images: Callable[[int, int], Iterable[dict]],
  batch_size: int,
) -> tuple[list[str], dict]:
  """The record files and manifest of the cache in `folder` for this codec and data, encoding it
  first if the folder has none. `images(shard, shards)` yields that process's part of the
  training split in file order, every image once (no shuffle, flip or dropped remainder).
  `folder` may be a bucket URL: the records are read from there (array_record reads `gs://`)."""
  folder = storage.path(folder, what="autoencoder.cache")
  wanted = key(codec, data, flips=flips)
  manifest = read_manifest(folder, wanted)
  if manifest is None:
    process, processes = jax.process_index(), jax.process_count()
    name = _file_name(process, processes)
    # array_record files are written locally; into a bucket, each is copied up once complete
    with storage.local_folder(folder) as out:
      count, shape = encode_all(
        codec, images(process, processes), out / name, flips=flips, batch_size=batch_size
      )
    counts = _gather_counts(count)
    if shape is None or sum(counts) == 0:
      raise CacheError(f"the training split has no images to encode into {folder}.")
    if process == 0:
      manifest = {
        **wanted,
        "shape": list(shape),
        "labels": data.get("labels", False),
        "num_examples": int(sum(counts)),
        "files": [_file_name(i, processes) for i in range(processes)],
      }
      # written last: a folder with a manifest holds a complete cache
      (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _barrier("jaxdiff_latent_cache_written")
    manifest = read_manifest(folder, wanted)
  return [str(folder / name) for name in manifest["files"]], manifest


def _gather_counts(count: int) -> list[int]:
  if jax.process_count() == 1:
    return [count]
  from jax.experimental import multihost_utils

  return [int(c) for c in multihost_utils.process_allgather(np.int64(count))]


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
