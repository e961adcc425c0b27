"""Sample quality for 16×16 digits on a CPU: a small held-out classifier's view of a samples npz.

    python benchmarks/digits_quality.py SAMPLES.npz    # prints one JSON line

The npz is jaxdiff's sample format: arr_0 uint8 images (N, 16, 16, 1) or (N, 16, 16) (32×32 ones,
as latent diffusion on the digits draws, are averaged 2×2 down to 16×16 first), optionally
arr_1 the class labels that were asked for. Needs only NumPy, SciPy and scikit-learn.

What it measures. A classifier (scikit-learn MLP, one hidden layer of 64 ReLU units, fixed seed)
is trained on the digits *test* split only (270 images), which no diffusion model in jaxdiff
trains on; inputs are the 256 pixels / 255. Its hidden layer plays the role Inception's pool
layer plays in FID:
  frechet_distance            Fréchet distance between Gaussians fitted to the hidden features of
                              the samples and of the 1,527 training-split images (what the model
                              was asked to imitate). Lower is better.
  frechet_distance_test_split the same for the 270 test images: real digits the model never saw.
  frechet_distance_test_split_same_n
                              the same, averaged over 10 random subsets of the test images of the
                              samples' size N (None when N > 270): the floor to read the samples'
                              distance against, since the distance grows as N shrinks (with 100
                              real unseen digits it is ~3× the 270-image value).
  confident_share             share of samples whose top class probability is ≥ 0.9.
  class_histogram             predicted class counts, 0..9 (mode collapse shows here).
  label_accuracy              share of samples classified as the label asked for (needs arr_1).
  classifier_cv_accuracy      the classifier's 5-fold cross-validated accuracy on the 270 test
                              images, and classifier_train_split_accuracy its accuracy on the
                              1,527 training images it never saw: how far to trust the above.

Limits. The features come from a 64-unit MLP fit to 270 images, not Inception: the numbers rank
models on this dataset and nothing else, and are not comparable with published FIDs; compare
distances only at the same N. The floor's images are the classifier's own training data, which
may sit a little closer to its class centres than unseen digits do. Softmax confidence is no
out-of-distribution detector (uniform noise gets a "confident" class for most images), and
confident_share and label_accuracy reward easy, prototypical digits while saying nothing about
diversity: read them beside class_histogram and the Fréchet distance.
"""

import json
import sys
import warnings

import numpy as np
import scipy.linalg
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

NUM_TEST = 270  # jaxdiff.data.digits: the first 270 of default_rng(0).permutation(1797)
CONFIDENT = 0.9


def digits_16x16():
  """jaxdiff's `digits` recomputed from scikit-learn: ({split: uint8 NHWC}, {split: labels}).

  Follows the rule documented in jaxdiff/data/digits.py (pixels round(v · 255 / 16), nearest 2×
  upsampling, test = first 270 of a seed-0 permutation) without importing jaxdiff, whose data
  module needs tensorflow_datasets.
  """
  digits = load_digits()
  scaled = np.floor(digits.images * 255 / 16 + 0.5).astype(np.uint8)
  # The documented rule: 17 levels, v = 8 (the only tie) → 128, and these exact values.
  assert np.array_equal(np.unique(scaled), (np.arange(17) * 255 + 8) // 16), np.unique(scaled)
  images = scaled.repeat(2, axis=1).repeat(2, axis=2)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  assert images.shape == (1797, 16, 16, 1)
  splits = {"test": order[:NUM_TEST], "train": order[NUM_TEST:]}
  return (
    {k: images[v] for k, v in splits.items()},
    {k: digits.target[v] for k, v in splits.items()},
  )


def as_inputs(images):
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.shape[1:] == (32, 32):
    # 32×32 digits (latent diffusion's data.image_size=32): 2×2 means back to the 16×16 grid
    images = np.round(images.reshape(-1, 16, 2, 16, 2).mean(axis=(2, 4)))
  if images.shape[1:] != (16, 16):
    raise ValueError(
      f"expected images of shape (N, 16, 16[, 1]) or (N, 32, 32[, 1]), got {images.shape}."
    )
  return images.reshape(len(images), -1).astype(np.float64) / 255.0


def make_classifier():
  return MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=0)


def hidden_features(classifier, x):
  return np.maximum(x @ classifier.coefs_[0] + classifier.intercepts_[0], 0.0)


def frechet_distance(a, b, eps=1e-6):
  """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to feature rows a and b."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  with warnings.catch_warnings():
    # ~10 of the 64 ReLU units never fire on real digits, so the product is singular; its root's
    # trace still matches an eigendecomposition of Σa^½ Σb Σa^½ to 1e-6 (checked on real digits,
    # noise and 10-image sets).
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
      # Offset both diagonals, as pytorch-fid does when the root itself fails.
      offset = np.eye(len(cov_a)) * eps
      root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
  if np.iscomplexobj(root):
    # Rounding leaves tiny imaginary parts on an otherwise real root; large ones mean a bug.
    if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm has an imaginary part of {np.abs(root.imag).max():.3g}.")
    root = root.real
  return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


class DigitsQuality:
  """Fits the held-out classifier once; `evaluate` then scores any number of sample sets.

  Both run with one BLAS thread: multithreaded OpenBLAS on these tiny matrices ran 10-20× slower
  on a busy 2-core machine.
  """

  def __init__(self):
    images, labels = digits_16x16()
    x_test, x_train = as_inputs(images["test"]), as_inputs(images["train"])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    with threadpool_limits(limits=1):
      self.cv_accuracy = float(
        cross_val_score(make_classifier(), x_test, labels["test"], cv=folds).mean()
      )
      self.classifier = make_classifier().fit(x_test, labels["test"])
      self.train_split_accuracy = float(self.classifier.score(x_train, labels["train"]))
      self.train_features = hidden_features(self.classifier, x_train)
      self.test_features = hidden_features(self.classifier, x_test)
      self.test_split_distance = frechet_distance(self.test_features, self.train_features)

  def test_subset_distance(self, n: int, repeats: int = 10):
    """Mean distance of `repeats` random n-image subsets of the test split: the floor at n."""
    if not 1 < n <= len(self.test_features):
      return None
    rng = np.random.default_rng(0)
    subsets = [rng.choice(len(self.test_features), n, replace=False) for _ in range(repeats)]
    return float(
      np.mean([frechet_distance(self.test_features[i], self.train_features) for i in subsets])
    )

  def evaluate(self, images, labels=None) -> dict:
    x = as_inputs(images)
    if labels is not None and len(labels) != len(x):
      raise ValueError(f"{len(labels)} labels for {len(x)} images.")
    with threadpool_limits(limits=1):
      probs = self.classifier.predict_proba(x)
      distance = frechet_distance(hidden_features(self.classifier, x), self.train_features)
      floor = self.test_subset_distance(len(x))
    predicted = probs.argmax(1)
    return {
      "num_samples": len(x),
      "frechet_distance": distance,
      "frechet_distance_test_split": self.test_split_distance,
      "frechet_distance_test_split_same_n": floor,
      "confident_share": float((probs.max(1) >= CONFIDENT).mean()),
      "class_histogram": np.bincount(predicted, minlength=10).tolist(),
      "label_accuracy": None if labels is None else float((predicted == labels).mean()),
      "classifier_cv_accuracy": self.cv_accuracy,
      "classifier_train_split_accuracy": self.train_split_accuracy,
    }

  def evaluate_npz(self, path) -> dict:
    with np.load(path) as f:
      return self.evaluate(f["arr_0"], f["arr_1"] if "arr_1" in f else None)


def main(argv):
  if len(argv) != 2:
    sys.exit(f"usage: python {argv[0]} SAMPLES.npz")
  print(json.dumps({"npz": argv[1], **DigitsQuality().evaluate_npz(argv[1])}))


if __name__ == "__main__":
  main(sys.argv)
