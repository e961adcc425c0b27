"""Seeded stand-ins for the Inception weights and inputs, made by NumPy alone.

pytorch-fid's weights file cannot be fetched in tests, so tests/make_inception_reference.py (with
torch) and tests/test_inception.py (without) both regenerate the same random weights, images and
feature sets from these rules; only the reference outputs are stored.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

# (name, seed, count, side): uint8 NHWC images, one group per input size the resize must handle.
IMAGE_GROUPS = (
  ("up64", 1, 4, 64),
  ("same299", 2, 2, 299),
  ("down512", 3, 1, 512),
  ("up48", 4, 4, 48),
)


def _rng(seed: int, name: str) -> np.random.Generator:
  # Keyed by name, so a tensor's values do not depend on the order of the state dict.
  return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_inception_weights(
  shapes: Mapping[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
  """float32 tensors in PyTorch layout that keep activations O(1) through all ~100 layers.

  Convs are He-scaled, N(0, 2 / fan_in), which preserves the second moment through conv + ReLU;
  BatchNorm gets weight U(0.8, 1.2), bias N(0, 0.2²), running_mean N(0, 0.1²) and running_var
  U(0.5, 1.5) (positive), so each layer rescales by O(1) without being the identity; fc.weight is
  N(0, 1 / 2048) and fc.bias N(0, 1), giving logits of a few units, so softmax is neither flat nor
  one-hot.
  """
  out = {}
  for name, shape in shapes.items():
    rng = _rng(seed, name)
    if name == "fc.weight":
      value = rng.standard_normal(shape) / np.sqrt(shape[1])
    elif name == "fc.bias":
      value = rng.standard_normal(shape)
    elif name.endswith("conv.weight"):
      value = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))
    elif name.endswith("bn.weight"):
      value = rng.uniform(0.8, 1.2, shape)
    elif name.endswith("bn.bias"):
      value = rng.standard_normal(shape) * 0.2
    elif name.endswith("bn.running_mean"):
      value = rng.standard_normal(shape) * 0.1
    elif name.endswith("bn.running_var"):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      raise ValueError(f"No rule for tensor {name}.")
    out[name] = value.astype(np.float32)
  return out


def seeded_images(seed: int, count: int, side: int) -> np.ndarray:
  """uint8 (count, side, side, 3): a random 4x4 colour mosaic per image plus pixel noise, so images
  differ in content (their features spread) and have edges and noise for the resize to get right."""
  rng = np.random.default_rng(seed)
  mosaic = rng.uniform(0, 255, (count, 4, 4, 3))
  cells = np.arange(side) * 4 // side
  images = mosaic[:, cells][:, :, cells] + rng.normal(0, 20, (count, side, side, 3))
  return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def image_groups() -> dict[str, np.ndarray]:
  return {name: seeded_images(seed, n, side) for name, seed, n, side in IMAGE_GROUPS}


def feature_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Pairs of float64 feature sets for the Fréchet distance: full-rank (N > d) and rank-deficient
  (N < d, as FID on fewer than 2048 images), with correlated, shifted and rescaled coordinates."""
  rng = np.random.default_rng(5)
  sets = {}
  for name, d, n1, n2 in (("full_rank", 16, 300, 200), ("rank_deficient", 64, 40, 30)):
    mix1, mix2 = rng.standard_normal((d, d)), rng.standard_normal((d, d)) / 2
    x1 = rng.standard_normal((n1, d)) @ mix1
    x2 = rng.standard_normal((n2, d)) @ mix2 + rng.standard_normal(d)
    sets[name] = (x1, x2)
  return sets
