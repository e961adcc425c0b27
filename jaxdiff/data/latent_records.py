"""Encoded datasets as array_record files: an autoencoder's posterior moments of every training
image, written once and read by the same grain pipeline as the images (codecs/cache.py makes them).

A record holds one image's moments as float32 (V, h, w, 2c) — mean and log-variance stacked on the
channel axis, V = 2 views when the data are flipped at random (the image and its mirror: an encoder
is not flip-equivariant, so the mirror is encoded, not its latent flipped) else 1 — followed by its
label as one int32 when the data have labels. The batches are {'moments': (B, h, w, 2c), 'label'?}
with one view drawn per example; `random_flip` draws it as the image pipeline draws its flips.
"""

from __future__ import annotations

import math
import pathlib
from typing import Iterable

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from jaxdiff.data.pipeline import make_batches


def write_records(
  path: str | pathlib.Path, examples: Iterable[tuple[np.ndarray, int | None]]
) -> int:
  """Writes one record per (moments (V, h, w, 2c), label or None) of `examples`; the count."""
  writer = ArrayRecordWriter(str(path), "group_size:1")
  count = 0
  try:
    for moments, label in examples:
      record = np.ascontiguousarray(moments, np.float32).tobytes()
      if label is not None:
        record += np.int32(label).tobytes()
      writer.write(record)
      count += 1
  finally:
    writer.close()
  return count


def _parse(record: bytes, *, shape: tuple[int, ...], labels: bool) -> dict:
  size = math.prod(shape)
  example = {"moments": np.frombuffer(record, np.float32, count=size).reshape(shape)}
  if labels:
    example["label"] = np.frombuffer(record, np.int32, count=1, offset=4 * size)[0]
  return example


def _first_view(example: dict) -> dict:
  return {**example, "moments": example["moments"][0]}


def _random_view(example: dict, rng: np.random.Generator) -> dict:
  # rng.random() < 0.5 as the image pipeline's flip: the same draws pick the mirror's latents
  view = 1 if rng.random() < 0.5 else 0
  return {**example, "moments": example["moments"][view]}


def _to_batch(batch: dict) -> dict:
  out = {"moments": batch["moments"].astype(np.float32)}
  if "label" in batch:
    out["label"] = batch["label"].astype(np.int32)
  return out


def make_latent_dataset(
  paths: list[str],
  *,
  shape: tuple[int, ...],
  labels: bool,
  batch_size: int,
  random_flip: bool,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  shard_options: grain.sharding.ShardOptions | None = None,
  read_threads: int = 1,
) -> grain.IterDataset:
  """This process's batches of the records in `paths` (shape (V, h, w, 2c) each), shuffled,
  repeated and sharded exactly as `make_dataset` does images."""
  shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if batch_size % shard.shard_count:
    raise ValueError(
      f"batch_size {batch_size} is not divisible by the {shard.shard_count} processes."
    )
  source = grain.sources.ArrayRecordDataSource(paths)
  ds = grain.MapDataset.source(source).map(lambda r: _parse(r, shape=shape, labels=labels))
  if not random_flip:
    ds = ds.map(_first_view)
  return make_batches(
    ds,
    batch_size=batch_size,
    flip=_random_view if random_flip else None,
    finish=_to_batch,
    seed=seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    drop_remainder=drop_remainder,
    shard=shard,
    read_threads=read_threads,
    num_workers=0,
  )
