"""TFDS builder `stacked_digits`: three `digits` images as the R, G and B channels, 1,000 modes.

The mode-collapse benchmark of Metz et al. 2017 (Unrolled GANs), Srivastava et al. 2017 (VEEGAN)
and Lin et al. 2018 (PacGAN) is Stacked MNIST: three MNIST digits stacked as the channels of one
image, so a generator that covers the data must produce all 10³ = 1,000 digit triples. This is
the same construction on jaxdiff's `digits` (scikit-learn's real 8×8 digits stored as 16×16,
jaxdiff/data/digits.py), so it builds offline, in seconds, and without TensorFlow.

Examples: image (16, 16, 3) uint8, channel k being the `digits` image of row `triples(split)[i, k]`
exactly; label = 100·a + 10·b + c for the digits a, b, c of the R, G and B channels (ClassLabel
with 1,000 classes). Each split draws its triples, with replacement and independently per channel,
from the same split of `digits` (train from its 1,527 train images, test from its 270 test images),
so no image of the test split appears in the training split. The rows come from
`np.random.default_rng([TRIPLE_SEED, k]).integers(0, n, (size, 3))` (k = 0 train, 1 test), indices
into `digits.split_indices()[split]`; example keys are the triple's position.

Sizes: 50,000 train and 10,000 test triples, about MNIST's (60,000 and 10,000), chosen so the build
stays a matter of seconds (about 7 s of one CPU core, most of it tfds writing records; 22 MB of
array_record). 50,000 draws from 1,527³ ≈ 3.6·10⁹ possible train triples repeat almost none (≈ 0.35
expected repeats), at 50 examples per mode on average. Either split holds the N the mode counter
needs (≥ 10,000; the papers use 26,000) as a real-data reference at that N: at N = 10,000 a perfect
sampler covers 999.95 modes on average, and its histogram's KL to uniform is ≈ 999/(2·10,000) ≈ 0.05
nats from counting noise alone. The digit classes of `digits` are nearly balanced, so the modes of
the data are nearly, not exactly, uniform; the test split, drawn from only 270 images, less so than
the train split (metrics/modes.py measures both).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxdiff.data import digits

SPLIT_SIZES = {"train": 50_000, "test": 10_000}
TRIPLE_SEED = 2017  # Metz et al.'s year; any fixed seed, fixed forever with the version
IMAGE_SHAPE = (16, 16, 3)
NUM_MODES = 1000
_CITATION = """@inproceedings{metz2017unrolled,
  author = {Metz, Luke and Poole, Ben and Pfau, David and Sohl-Dickstein, Jascha},
  title = {Unrolled Generative Adversarial Networks},
  booktitle = {ICLR},
  year = {2017},
}"""


def triples(split: str) -> np.ndarray:
  """(SPLIT_SIZES[split], 3) sklearn row indices of the R, G and B digits of each example."""
  rows = digits.split_indices()[split]
  k = list(SPLIT_SIZES).index(split)
  draws = np.random.default_rng([TRIPLE_SEED, k]).integers(0, len(rows), (SPLIT_SIZES[split], 3))
  return rows[draws]


def stack(images_1ch: np.ndarray, labels: np.ndarray, rows: np.ndarray):
  """(uint8 images (N, 16, 16, 3), labels 100a+10b+c) of the triples `rows` (N, 3) of sklearn row
  indices, given `digits` images (1797, 16, 16, 1) and labels indexed by sklearn row."""
  images = np.concatenate([images_1ch[rows[:, k]] for k in range(3)], axis=-1)
  modes = 100 * labels[rows[:, 0]] + 10 * labels[rows[:, 1]] + labels[rows[:, 2]]
  return images, modes.astype(np.int64)


def stacked_split(split: str):
  """(uint8 images (N, 16, 16, 3), labels) of a split of `stacked_digits`, without TFDS."""
  from sklearn.datasets import load_digits

  source = load_digits()
  return stack(digits.digits_uint8_16x16(source.images), source.target, triples(split))


class StackedDigits(tfds.core.GeneratorBasedBuilder):
  """Three `digits` images stacked as R, G, B; label 100a + 10b + c (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "50,000 train / 10,000 test triples of digits' own splits, seed 2017."}
  code_path = None  # as digits.Digits: no checksums file to look for

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Stacked digits: three scikit-learn digits as the R, G, B channels (1000 modes).",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=IMAGE_SHAPE),
          "label": tfds.features.ClassLabel(num_classes=NUM_MODES),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://archive.ics.uci.edu/dataset/80",
      citation=_CITATION,
      # Stored in key order: example i of a split is triple i, and tfds skips its shuffle pass.
      disable_shuffling=True,
    )

  def _log_download_bytes(self) -> None:  # as digits.Digits: nothing is downloaded
    pass

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from scikit-learn's bundled copy.
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    images, labels = stacked_split(split)
    for key, (image, label) in enumerate(zip(images, labels)):
      yield key, {"image": _png(image), "label": int(label)}


def _png(image: np.ndarray) -> bytes:
  """PNG bytes by PIL (tfds encodes an array with TensorFlow, a PIL image at PIL's default zlib
  level 6); level 1 encodes 1.5× faster for 11% more bytes, and decodes to the same pixels."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def ensure_stacked_digits_prepared(data_dir: str | None = None) -> StackedDigits:
  """Builds `stacked_digits` as array_record into `data_dir` unless present (as `digits`)."""
  return digits.ensure_prepared(StackedDigits, data_dir)
