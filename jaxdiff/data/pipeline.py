"""Grain input pipeline over TFDS array_record data sources, sharded per JAX process.

Every step is a function of (seed, shard, element index), so a run resumed from an iterator
state sees exactly the batches an uninterrupted run would have seen. The iterator returned by
`iter(make_dataset(...))` is a `grain.DatasetIterator`: its `get_state()` is a small
JSON-serializable dict, and `grain.checkpoint.CheckpointSave(iterator)` /
`grain.checkpoint.CheckpointRestore(iterator)` store it in an Orbax checkpoint (one JSON file
per process).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxdiff.data import digits, stacked_digits
from jaxdiff.data.tfds_noise import drop_opencv_notice

# Images are decoded with PIL by choice (no OpenCV dependency); tfds warns about it on the first
# decode, in grain's reader threads, where nothing narrower than a log filter reaches.
drop_opencv_notice()


class DatasetNotPreparedError(ValueError):
  """A TFDS dataset is not in the data dir in a random-access (array_record) format."""


@dataclasses.dataclass(frozen=True)
class BuiltDataset:
  """A TFDS dataset jaxdiff builds itself, offline and in seconds, the first time it is read."""

  prepare: Callable[[str | None], tfds.core.DatasetBuilder]  # (data_dir) → the prepared builder
  channels: int
  num_classes: int


BUILT_DATASETS = {
  digits.Digits.name: BuiltDataset(digits.ensure_digits_prepared, digits.IMAGE_SHAPE[-1], 10),
  stacked_digits.StackedDigits.name: BuiltDataset(
    stacked_digits.ensure_stacked_digits_prepared,
    stacked_digits.IMAGE_SHAPE[-1],
    stacked_digits.NUM_MODES,
  ),
}


def prepare_if_built(name: str, data_dir: str | None = None) -> None:
  """Builds `name` into `data_dir` unless it is there, if it is one of BUILT_DATASETS."""
  built = BUILT_DATASETS.get(name)
  if built is not None:
    built.prepare(data_dir)


def open_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source` that never downloads; BUILT_DATASETS are built on first use."""
  prepare_if_built(name, data_dir)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, KeyError) as error:
    # How tfds 4.9 says "no array_record data here": NotImplementedError when data_dir is
    # given (nothing built, or built as tfrecord, the `tfds build` default), KeyError
    # ("splits is empty") for the default dir, where it asks for array_record itself.
    # A prepared dataset with a wrong split name raises ValueError instead.
    flag = f" --data_dir={data_dir}" if data_dir else ""
    raise DatasetNotPreparedError(
      f"TFDS dataset {name!r} is not prepared as array_record in "
      f"{data_dir or tfds.core.constants.DATA_DIR}; build it with "
      f"`tfds build {name} --file_format=array_record{flag}`."
    ) from error


def _center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = image[top : top + side, left : left + side]
  # PIL on NumPy keeps resizing in the reader threads, off the accelerators; its bicubic
  # filter widens its support when shrinking, so downscaling is antialiased.
  pil = Image.fromarray(square[..., 0] if square.shape[-1] == 1 else square)
  resized = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
  return resized.reshape(size, size, image.shape[-1])


def _select(example: dict, *, image_key: str, label_key: str | None, image_size: int | None):
  image = example[image_key]
  if image_size is not None and image.shape[:2] != (image_size, image_size):
    image = _center_crop_resize(image, image_size)
  selected = {"image": image}
  if label_key is not None:
    selected["label"] = example[label_key]
  return selected


def _random_flip(example: dict, rng: np.random.Generator) -> dict:
  if rng.random() < 0.5:
    return {**example, "image": example["image"][:, ::-1]}
  return example


def _to_model_inputs(batch: dict) -> dict:
  out = {"image": batch["image"].astype(np.float32) / 127.5 - 1.0}
  if "label" in batch:
    out["label"] = batch["label"].astype(np.int32)
  return out


def make_dataset(
  *,
  name: str,
  split: str,
  batch_size: int,
  data_dir: str | None = None,
  image_size: int | None = None,
  random_flip: bool,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  image_key: str = "image",
  label_key: str | None = "label",
  shard_options: grain.sharding.ShardOptions | None = None,
  read_threads: int = 1,
  num_workers: int = 0,
) -> grain.IterDataset:
  """This process's batches of a TFDS image dataset, as dicts of NumPy arrays.

  Yields {'image': float32 (B, H, W, C) in [-1, 1], 'label': int32 (B,)} with
  B = batch_size // process count; 'label' is present when the dataset has `label_key`.
  `num_epochs=None` repeats forever; each epoch is reshuffled. Batches may straddle epochs.
  `shard_options` defaults to one shard per JAX process, with the remainder dropped so every
  process yields the same number of batches. `read_threads=0` reads in the calling thread;
  `num_workers > 0` decodes in that many child processes, which needs absl flags parsed
  (`absl.app.run`) since grain's workers read grain's flags.
  """
  shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if batch_size % shard.shard_count:
    raise ValueError(
      f"batch_size {batch_size} is not divisible by the {shard.shard_count} processes."
    )
  source = open_source(name, split, data_dir)
  features = source.dataset_info.features
  if image_key not in features:
    raise ValueError(f"{name} has no feature {image_key!r}; it has {sorted(features)}.")
  select = functools.partial(
    _select,
    image_key=image_key,
    label_key=label_key if label_key in features else None,
    image_size=image_size,
  )
  return make_batches(
    grain.MapDataset.source(source).map(select),
    batch_size=batch_size,
    flip=_random_flip if random_flip else None,
    finish=_to_model_inputs,
    seed=seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    drop_remainder=drop_remainder,
    shard=shard,
    read_threads=read_threads,
    num_workers=num_workers,
  )


def make_batches(
  ds: grain.MapDataset,
  *,
  batch_size: int,
  flip,
  finish,
  seed: int,
  shuffle: bool,
  num_epochs: int | None,
  drop_remainder: bool,
  shard: grain.sharding.ShardOptions,
  read_threads: int,
  num_workers: int,
) -> grain.IterDataset:
  """This process's shard of `ds` (examples), shuffled, repeated, flipped by `flip(example, rng)`,
  batched and mapped by `finish`: the part of the pipeline images and cached latents share."""
  usable = len(ds) - len(ds) % shard.shard_count if shard.drop_remainder else len(ds)
  ds = ds[:usable][shard.shard_index :: shard.shard_count]
  # Folding in the shard keeps processes from drawing the same flips at the same positions.
  ds = ds.seed(int(np.random.SeedSequence([seed, shard.shard_index]).generate_state(1)[0]))
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)
  if flip is not None:
    ds = ds.random_map(flip)
  ds = ds.batch(batch_size // shard.shard_count, drop_remainder=drop_remainder)
  ds = ds.map(finish)
  # Each buffered element is a whole batch, so a short buffer is enough to hide reading.
  iter_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)
  )
  if num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter_ds


def grain_shard(index: int, count: int) -> grain.sharding.ShardOptions:
  """Shard `index` of `count`, keeping every example (the last shards may be one shorter)."""
  return grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=False)


def make_global_batch(
  batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding
) -> dict[str, Any]:
  """Assembles every process's host batch into global `jax.Array`s laid out by `sharding`.

  `sharding` partitions the leading (batch) axis, e.g. `NamedSharding(mesh, P('data'))`; a
  spec shorter than an array's rank leaves the remaining axes unsharded, so one sharding
  serves images and labels alike.
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
