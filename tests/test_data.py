"""Tests for the digits TFDS builder and the grain input pipeline (jaxdiff.data)."""

import gc
import json
import os

import chex
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from absl import flags
from sklearn.datasets import load_digits

from jaxdiff.data import (
  DatasetNotPreparedError,
  ensure_digits_prepared,
  make_dataset,
  make_global_batch,
)
from jaxdiff.data.pipeline import _center_crop_resize


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  ensure_digits_prepared(data_dir)
  return data_dir


def _digits(digits_dir, **overrides):
  kwargs = dict(
    name="digits",
    split="test",
    batch_size=16,
    data_dir=digits_dir,
    random_flip=True,
    seed=0,
    read_threads=0,
  )
  return iter(make_dataset(**{**kwargs, **overrides}))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  chex.assert_trees_all_equal(a, b)  # lists of dicts: same length, same keys, equal arrays


# --- digits builder -------------------------------------------------------------------------


def test_digits_matches_sklearn_pixel_for_pixel(digits_dir):
  sk = load_digits()
  # Reference written out independently of the builder: v * 255 / 16 rounded, each 8×8
  # pixel becoming a 2×2 block; test = first 270 of the seed-0 permutation.
  expected_images = np.kron(np.rint(sk.images * 255 / 16), np.ones((2, 2))).astype(np.uint8)
  test_rows = np.random.default_rng(0).permutation(1797)[:270]
  in_test = np.isin(np.arange(1797), test_rows)
  for split, rows in [("test", in_test), ("train", ~in_test)]:
    source = tfds.data_source("digits", split=split, data_dir=digits_dir, download=False)
    expected = sorted(
      (img[..., None].tobytes(), int(label))
      for img, label in zip(expected_images[rows], sk.target[rows])
    )
    # Sorted (bytes, label) pairs compare the splits as multisets, whatever the file order.
    assert sorted((ex["image"].tobytes(), int(ex["label"])) for ex in source) == expected


def test_digits_split_sizes_labels_and_dtype(digits_dir):
  builder = ensure_digits_prepared(digits_dir)
  assert builder.info.splits["train"].num_examples == 1527
  assert builder.info.splits["test"].num_examples == 270
  assert builder.info.features["label"].num_classes == 10
  labels, images = [], []
  for split in ("train", "test"):
    for example in tfds.data_source("digits", split=split, data_dir=digits_dir):
      labels.append(example["label"])
      images.append(example["image"])
  images = np.stack(images)
  assert len(labels) == 1797
  np.testing.assert_array_equal(np.bincount(labels), np.bincount(load_digits().target))
  assert images.shape == (1797, 16, 16, 1) and images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255


def test_digits_build_is_idempotent(digits_dir):
  version_dir = ensure_digits_prepared(digits_dir).data_path
  before = {path.name: os.stat(path).st_mtime_ns for path in version_dir.iterdir()}
  ensure_digits_prepared(digits_dir)
  assert {path.name: os.stat(path).st_mtime_ns for path in version_dir.iterdir()} == before


def test_a_build_that_loses_the_race_to_another_process_uses_its_copy(tmp_path, monkeypatch):
  # Two processes building into one fresh data_dir (parallel notebooks on a GPU did this): the
  # later one's rename of its finished copy fails with FileExistsError; it must read the other's.
  from jaxdiff.data.digits import Digits

  build = Digits.download_and_prepare
  calls = []

  def lose_the_race(self, **kwargs):
    calls.append(self.data_dir)
    monkeypatch.setattr(Digits, "download_and_prepare", build)
    ensure_digits_prepared(str(tmp_path))  # the other process finishes first
    raise FileExistsError(f"Cannot rename ... Destination {self.data_path} already exists.")

  monkeypatch.setattr(Digits, "download_and_prepare", lose_the_race)
  builder = ensure_digits_prepared(str(tmp_path))
  assert calls and builder.is_prepared()
  assert len(builder.as_data_source(split="test")) == 270


def test_make_dataset_builds_digits_on_first_use(tmp_path):
  batch = next(_digits(str(tmp_path)))
  assert batch["image"].shape == (16, 16, 16, 1)
  assert (tmp_path / "digits" / "1.0.0" / "dataset_info.json").exists()


# --- pipeline over mocked TFDS datasets -------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_batches_are_normalized_source_examples(name, shape, tmp_path):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    source = tfds.data_source(name, split="train", data_dir=str(tmp_path), download=False)
    batch = next(
      iter(
        make_dataset(
          name=name,
          split="train",
          batch_size=4,
          data_dir=str(tmp_path),
          random_flip=False,
          shuffle=False,
          seed=0,
          read_threads=0,
        )
      )
    )
    expected = np.stack([source[i]["image"] for i in range(4)]).astype(np.float64)
    labels = [source[i]["label"] for i in range(4)]
  assert batch["image"].shape == (4, *shape) and batch["image"].dtype == np.float32
  np.testing.assert_allclose(batch["image"], expected / 127.5 - 1, rtol=0, atol=1e-6)
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1
  assert batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["label"], labels)


def test_unlabelled_dataset_is_cropped_and_resized(tmp_path):
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    batch = next(
      iter(
        make_dataset(
          name="celeb_a",
          split="train",
          batch_size=4,
          data_dir=str(tmp_path),
          image_size=32,
          random_flip=True,
          seed=0,
          read_threads=0,
        )
      )
    )
  assert set(batch) == {"image"}  # celeb_a has attributes, not a 'label' feature.
  assert batch["image"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_center_crop_resize_matches_jax_antialiased_bicubic(channels):
  rows, cols = np.mgrid[0:218, 0:178]
  planes = [127 + 100 * np.sin(rows / 15), 127 + 100 * np.cos(cols / 11), 90 + rows / 2]
  image = np.stack(planes[:channels], axis=-1).astype(np.uint8)
  reference = jax.image.resize(
    image[20:198].astype(np.float32), (32, 32, channels), "bicubic", antialias=True
  )
  resized = _center_crop_resize(image, 32)
  assert resized.shape == (32, 32, channels) and resized.dtype == np.uint8
  assert np.abs(resized - np.asarray(reference)).max() <= 1


# --- determinism, epochs and resumption -------------------------------------------------------


def test_flip_is_a_deterministic_function_of_seed(digits_dir):
  flipped = _take(_digits(digits_dir, shuffle=False, batch_size=64), 2)
  _assert_batches_equal(flipped, _take(_digits(digits_dir, shuffle=False, batch_size=64), 2))
  plain = _take(_digits(digits_dir, shuffle=False, batch_size=64, random_flip=False), 2)
  is_flipped = []
  for f, p in zip(flipped, plain):
    for image, original in zip(f["image"], p["image"]):
      mirrored = np.array_equal(image, original[:, ::-1])
      assert mirrored or np.array_equal(image, original)
      is_flipped.append(mirrored and not np.array_equal(original, original[:, ::-1]))
  assert 0.3 < np.mean(is_flipped) < 0.7
  other_seed = _take(_digits(digits_dir, shuffle=False, batch_size=64, seed=1), 2)
  assert not np.array_equal(flipped[0]["image"], other_seed[0]["image"])


def test_each_epoch_is_a_new_permutation_of_the_split(digits_dir):
  batches = list(_digits(digits_dir, num_epochs=2, batch_size=30, drop_remainder=False))
  assert len(batches) == 18  # 2 × 270 examples, batches straddling the epoch boundary.
  labels = np.concatenate([b["label"] for b in batches])
  source = tfds.data_source("digits", split="test", data_dir=digits_dir)
  histogram = np.bincount([example["label"] for example in source], minlength=10)
  np.testing.assert_array_equal(np.bincount(labels[:270], minlength=10), histogram)
  np.testing.assert_array_equal(np.bincount(labels[270:], minlength=10), histogram)
  assert not np.array_equal(labels[:270], labels[270:])
  assert len(list(_digits(digits_dir, num_epochs=1, batch_size=32))) == 270 // 32


def test_restored_iterator_state_replays_exactly(digits_dir):
  iterator = _digits(digits_dir, batch_size=32, read_threads=1)
  _take(iterator, 7)
  state = json.dumps(iterator.get_state())
  after_save = _take(iterator, 3)
  resumed = _digits(digits_dir, batch_size=32, read_threads=1)
  resumed.set_state(json.loads(state))
  _assert_batches_equal(after_save, _take(resumed, 3))


def test_iterator_round_trips_through_orbax(digits_dir, tmp_path):
  iterator = _digits(digits_dir)
  _take(iterator, 7)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  after_save = _take(iterator, 3)
  resumed = _digits(digits_dir)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    restore = grain.checkpoint.CheckpointRestore(resumed)
    manager.restore(7, args=ocp.args.Composite(data=restore))
  _assert_batches_equal(after_save, _take(resumed, 3))


def test_worker_processes_yield_the_in_process_batches(digits_dir):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's workers read its absl flags; main.py parses them.
  iterator = _digits(digits_dir, num_workers=1)
  from_workers = _take(iterator, 3)
  in_process = _take(_digits(digits_dir), 3)
  try:
    _assert_batches_equal(from_workers, in_process)
  finally:
    # Worker batches live in shared memory; free it before interpreter teardown.
    del from_workers
    iterator.close()
    gc.collect()


# --- multi-process batch math -----------------------------------------------------------------


def test_processes_read_disjoint_equal_shares(digits_dir):
  def images(shard_options, batch_size):
    return np.concatenate(
      [
        b["image"]
        for b in _digits(
          digits_dir,
          shard_options=shard_options,
          batch_size=batch_size,
          shuffle=False,
          random_flip=False,
          num_epochs=1,
          drop_remainder=False,
        )
      ]
    )

  everything = images(grain.sharding.NoSharding(), 10)
  for index in range(2):
    share = images(grain.sharding.ShardOptions(index, 2, drop_remainder=True), 10)
    assert share.shape[0] == 135
    np.testing.assert_array_equal(share, everything[index::2])
  # 270 = 4 × 67 + 2: the 2 left over are dropped so every process takes as many steps.
  share = images(grain.sharding.ShardOptions(3, 4, drop_remainder=True), 8)
  np.testing.assert_array_equal(share, everything[:268][3::4])
  first = next(_digits(digits_dir, shard_options=grain.sharding.ShardOptions(0, 4), batch_size=32))
  assert first["image"].shape[0] == 8 and first["label"].shape == (8,)
  with pytest.raises(ValueError, match="not divisible"):
    _digits(digits_dir, shard_options=grain.sharding.ShardOptions(0, 4), batch_size=30)


def test_global_batch_is_laid_out_by_the_sharding(digits_dir):
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = next(_digits(digits_dir, batch_size=2 * jax.device_count()))
  global_batch = make_global_batch(batch, sharding)
  for key, local in batch.items():
    array = global_batch[key]
    assert array.shape == local.shape and array.sharding == sharding
    for shard in array.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), local[shard.index])


# --- errors -----------------------------------------------------------------------------------


def test_missing_dataset_names_the_build_command(tmp_path, monkeypatch):
  with pytest.raises(DatasetNotPreparedError) as error:
    make_dataset(
      name="mnist", split="train", batch_size=8, data_dir=str(tmp_path), random_flip=False, seed=0
    )
  assert isinstance(error.value, ValueError)
  command = f"`tfds build mnist --file_format=array_record --data_dir={tmp_path}`"
  assert command in str(error.value)
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "default"))
  with pytest.raises(DatasetNotPreparedError) as error:
    make_dataset(name="cifar10", split="train", batch_size=8, random_flip=False, seed=0)
  assert str(error.value).endswith("`tfds build cifar10 --file_format=array_record`.")
