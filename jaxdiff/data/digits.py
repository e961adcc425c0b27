"""TFDS builder `digits`: scikit-learn's 1,797 real 8×8 handwritten digits, stored as 16×16 uint8.

The source is the UCI "Optical Recognition of Handwritten Digits" test set bundled with
scikit-learn, so the dataset builds offline, in about a second, and without TensorFlow.

Pixels: sklearn's values are 0..16 (counts of set pixels in 4×4 blocks of a 32×32 bitmap);
they are scaled to 0..255 as round(v * 255 / 16) (v = 8 is the only tie, → 128) and upsampled 2×
by nearest neighbour: every stored value is exactly one of the 17 source levels, with no
interpolation convention (align-corners, half-pixel) to agree on, so the stored pixels are a
simple function of sklearn's array that anyone can recompute.

Splits: `np.random.default_rng(0).permutation(1797)`; its first 270 indices (15%) form `test`,
the remaining 1,527 form `train`. Example keys are sklearn's row indices.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import TypeVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxdiff import storage
from jaxdiff.data.tfds_noise import quiet_tfds_build

NUM_EXAMPLES = 1797
NUM_TEST = 270
SPLIT_SEED = 0
IMAGE_SHAPE = (16, 16, 1)
B = TypeVar("B", bound=tfds.core.DatasetBuilder)
_CITATION = """@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
}"""


def digits_uint8_16x16(images_8x8: np.ndarray) -> np.ndarray:
  """sklearn digit arrays (N, 8, 8) with values 0..16 → (N, 16, 16, 1) uint8."""
  levels = np.asarray(images_8x8, dtype=np.int64)
  # Integer round-half-up; equals round(v * 255 / 16) since only v = 8 lands on .5.
  scaled = ((levels * 255 + 8) // 16).astype(np.uint8)
  upsampled = scaled.repeat(2, axis=1).repeat(2, axis=2)
  return upsampled[..., None]


def split_indices() -> dict[str, np.ndarray]:
  """sklearn row indices of each split (fixed-seed permutation, first 15% → test)."""
  order = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
  return {"train": order[NUM_TEST:], "test": order[:NUM_TEST]}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8×8 handwritten digits upsampled to 16×16 (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "sklearn load_digits, nearest 2× upsampling, 15% test split."}
  # tfds only uses `code_path` to find a checksums file (there are no downloads here); its
  # default resolution imports `importlib_resources`, which tfds 4.9.10 does not declare
  # (tensorflow/datasets#11212), so building from an installed package would fail.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly, not with `dataset_info_from_configs`, which reads the description and
    # citation from README.md / CITATIONS.bib beside the module (tfds's dataset-folder layout).
    return tfds.core.DatasetInfo(
      builder=self,
      description="Real 8x8 handwritten digits from scikit-learn, upsampled to 16x16.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=IMAGE_SHAPE),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://archive.ics.uci.edu/dataset/80",
      citation=_CITATION,
    )

  # tfds prints "Downloading and preparing dataset Unknown size ..." and "... Subsequent calls
  # will reuse this data." around every build; there is no download, and ensure_digits_prepared
  # says in one line what is happening.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from scikit-learn's bundled copy.
    return {name: self._generate_examples(indices) for name, indices in split_indices().items()}

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits  # Deferred: sklearn is only needed to build.

    digits = load_digits()
    images = digits_uint8_16x16(digits.images[indices])
    for index, image, label in zip(indices, images, digits.target[indices]):
      # A PIL image is PNG-encoded by PIL inside tfds; a NumPy array would go through
      # tf.image.encode_png and so require TensorFlow.
      yield int(index), {"image": Image.fromarray(image[..., 0]), "label": int(label)}


def ensure_digits_prepared(data_dir: str | None = None) -> Digits:
  """Builds `digits` as array_record into `data_dir` (TFDS default dir if None) unless present."""
  return ensure_prepared(Digits, data_dir)


def ensure_prepared(builder_class: type[B], data_dir: str | None = None) -> B:
  """Builds one of jaxdiff's own TFDS datasets (`digits`, `stacked_digits`: offline, seconds) as
  array_record into `data_dir` (TFDS default dir if None) unless it is there already.

  Into a bucket URL it is built in a local folder and copied up, as array_record files are
  written to local files only: the records first, the two JSON files that make TFDS see a
  prepared dataset last, so a reader never takes a half-copied folder for the dataset."""
  # Quiet: on a fresh dir tfds warns that it has no dataset_info.json yet, and draws nested
  # progress bars for a seconds-long build; one line of ours says what happens instead.
  with quiet_tfds_build():
    builder = builder_class(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
      return builder
    name = builder_class.name
    print(f"Preparing the {name} dataset in {builder.data_dir} (first use only).", flush=True)
    if data_dir is None or not storage.is_url(data_dir):
      return _build(builder_class, data_dir)
    staging = tempfile.mkdtemp(prefix=f"jaxdiff-{name}-")
    try:
      built = _build(builder_class, staging).data_path
      files = sorted(built.iterdir(), key=lambda f: (f.suffix == ".json", f.name == _INFO))
      for file in files:
        storage.copy_file(file, builder.data_path / file.name)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  return builder_class(data_dir=data_dir, file_format="array_record")


_INFO = "dataset_info.json"


def _build(builder_class: type[B], data_dir: str | None) -> B:
  builder = builder_class(data_dir=data_dir, file_format="array_record")
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
  except FileExistsError:
    # Another process (a second run, a parallel test) finished building the same version
    # first, and tfds will not rename its own copy over it: theirs is the same data.
    builder = builder_class(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      raise
  return builder
