"""The mode count of stacked digits: how many of the 1,000 digit triples N samples cover, and the KL
divergence of their mode histogram from uniform (Metz et al. 2017; Srivastava et al. 2017; Lin et
al. 2018, who report both over 26,000 samples of Stacked MNIST).

Each channel of a (N, 16, 16, 3) sample is classified as a 1-channel digit by the digits classifier
(jaxdiff/metrics/digits_classifier.py: the 64-unit MLP fit on the `digits` test split), and the
sample's mode is 100·a + 10·b + c for the digits a, b, c of its R, G and B channels. The KL is
KL(p ‖ U) = Σ_m p_m ln(1000 p_m) over the modes with p_m > 0, in nats (natural log, as the papers
report it): 0 for an exactly uniform histogram, ln 1000 ≈ 6.91 for one mode. Both numbers depend
on N — a perfect sampler's expected histogram is not exactly uniform at finite N — so compare runs
only at equal N, and beside the real data's numbers at that N (`real_floor`).
"""

from __future__ import annotations

import numpy as np

from jaxdiff.data import stacked_digits
from jaxdiff.metrics.digits_classifier import DigitsFeatures

NUM_MODES = stacked_digits.NUM_MODES


def kl_to_uniform(counts) -> float:
  """KL(counts/Σcounts ‖ uniform over len(counts) modes) in nats."""
  counts = np.asarray(counts, np.float64)
  if counts.ndim != 1 or counts.sum() <= 0 or (counts < 0).any():
    raise ValueError(f"a histogram needs non-negative counts with a positive sum, got {counts}.")
  p = counts[counts > 0] / counts.sum()
  return float(np.sum(p * np.log(p * len(counts))))


def mode_statistics(modes) -> dict:
  """{'modes': modes covered of 1000, 'kl_to_uniform': nats, 'num_samples': N} of N mode ids."""
  modes = np.asarray(modes)
  if modes.ndim != 1 or not len(modes) or modes.min() < 0 or modes.max() >= NUM_MODES:
    raise ValueError(f"mode ids are N ≥ 1 integers in [0, {NUM_MODES}), got {modes!r}.")
  counts = np.bincount(modes, minlength=NUM_MODES)
  return {
    "modes": int(np.count_nonzero(counts)),
    "kl_to_uniform": kl_to_uniform(counts),
    "num_samples": len(modes),
  }


class ModeCounter:
  """The digits classifier (fit once, seconds) applied per channel of stacked digits."""

  def __init__(self, classifier: DigitsFeatures | None = None):
    self.classifier = classifier or DigitsFeatures()

  def modes(self, images) -> np.ndarray:
    """Mode ids 100a + 10b + c of uint8 or [-1, 1] float images (N, 16, 16, 3) (or 32×32)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
        f"the mode counter takes stacked digits of shape (N, 16, 16, 3), got {images.shape}."
      )
    if images.dtype != np.uint8:  # [-1, 1], rounded as generate.to_uint8 writes samples
      images = np.clip(np.round((images.astype(np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
    a, b, c = (self.classifier.predict(images[..., k : k + 1]) for k in range(3))
    return 100 * a + 10 * b + c

  def __call__(self, images) -> dict:
    """mode_statistics of the images' modes."""
    return mode_statistics(self.modes(images))

  def real_floor(self, count: int, split: str = "train") -> dict | None:
    """The same numbers for the first `count` real examples of a `stacked_digits` split (None if
    it has fewer): what the training data itself scores at this N. The train split is the default
    because the classifier never saw its images, so its errors count as they do on samples."""
    if not 0 < count <= stacked_digits.SPLIT_SIZES[split]:
      return None
    images, _ = stacked_digits.stacked_split(split)
    return self(images[:count])
