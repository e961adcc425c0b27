"""FID, Inception Score and precision/recall against closed forms; the npz readers."""

import numpy as np
import pytest

from jaxdiff.metrics import (
  FIDStatistics,
  feature_statistics,
  fid_from_features,
  frechet_distance,
  inception_score,
  knn_radii,
  precision_recall,
  read_reference_batch,
  read_samples,
)


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
  q, r = np.linalg.qr(rng.standard_normal((d, d)))
  return q * np.sign(np.diag(r))


def test_fid_of_identical_statistics_is_zero():
  rng = np.random.default_rng(0)
  mu, sigma = feature_statistics(rng.standard_normal((500, 64)) @ rng.standard_normal((64, 64)))
  assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9 * np.trace(sigma))


@pytest.mark.parametrize("rank", [32, 20])
def test_fid_of_gaussians_with_diagonal_covariances(rank):
  # ‖μ1 − μ2‖² + Σ (σ1 + σ2 − 2 √(σ1 σ2)), also after a common rotation (non-diagonal covariances,
  # same distance) and with zero variances (rank-deficient, as with fewer samples than dimensions).
  rng = np.random.default_rng(rank)
  d = 32
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  var1, var2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  var1[rank:] = 0
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
  assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
    expected, rel=1e-10
  )
  q = _random_rotation(d, rng)
  rotated = frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
  assert rotated == pytest.approx(expected, rel=1e-9)


def test_feature_statistics_are_mean_and_unbiased_covariance():
  mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]]))
  np.testing.assert_allclose(mu, [2, 2])
  np.testing.assert_allclose(sigma, [[4, 3], [3, 3]])


def test_fid_refuses_mismatched_statistics():
  with pytest.raises(ValueError, match="do not match"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_score_of_one_hot_predictions_spread_evenly_is_the_class_count():
  # 10 chunks of 16 rows, each holding every one of the 8 classes twice.
  logits = 1e4 * np.eye(8)[np.arange(160) % 8]
  mean, std = inception_score(logits)
  assert mean == pytest.approx(8, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_inception_score_of_identical_predictions_is_one():
  logits = np.tile(np.random.default_rng(0).standard_normal(1008), (50, 1))
  mean, std = inception_score(logits)
  assert mean == pytest.approx(1, abs=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_inception_score_of_two_equally_likely_classes():
  # p(y|x) = (p, 1 − p) or (1 − p, p) in equal numbers: p(y) = (½, ½) and
  # KL = log 2 + p log p + (1 − p) log(1 − p) for every x.
  p = 0.9
  logits = np.log(np.array([[p, 1 - p], [1 - p, p]] * 10))
  expected = np.exp(np.log(2) + p * np.log(p) + (1 - p) * np.log(1 - p))
  assert inception_score(logits, splits=5)[0] == pytest.approx(expected, rel=1e-12)


def test_inception_score_chunks_as_improved_gan():
  # 25 rows in 10 chunks [i*25//10, (i+1)*25//10) start at rows 0, 2, 5, 7, 10, ...: rows 2 and 4,
  # one-hot on class 1 among uniform rows, share chunk 1 (np.array_split would part them).
  logits = np.zeros((25, 4))
  logits[[2, 4], 1] = 1e4
  p = np.array([[0, 1, 0, 0], [0.25] * 4, [0, 1, 0, 0]])
  marginal = p.mean(axis=0)
  kl = np.mean([np.sum(r[r > 0] * np.log(r[r > 0] / marginal[r > 0])) for r in p])
  mean, std = inception_score(logits, splits=10)
  assert mean == pytest.approx((9 + np.exp(kl)) / 10, rel=1e-12)
  assert std == pytest.approx(np.std([1] * 9 + [np.exp(kl)]), rel=1e-9)


def test_precision_recall_of_identical_and_of_far_apart_sets():
  rng = np.random.default_rng(0)
  real = rng.standard_normal((60, 16)).astype(np.float32)
  assert precision_recall(real, real.copy()) == (1.0, 1.0)
  assert precision_recall(real, real + 100) == (0.0, 0.0)


def test_precision_recall_of_a_shrunken_set():
  # Fake = real points pulled to 30 % of their distance from the origin: they fall in the dense
  # core of the real manifold, but the real points outside that core lie outside the fake balls.
  rng = np.random.default_rng(1)
  real = rng.standard_normal((200, 2))
  precision, recall = precision_recall(real, real * 0.3)
  assert precision > 0.95 and recall < 0.7


def test_knn_radii_match_brute_force_in_any_block_size():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((37, 5)).astype(np.float32)
  d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
  expected = np.sort(d, axis=1)[:, 3]  # column 0 is the point itself
  for block in (5000, 7, 4):
    np.testing.assert_allclose(knn_radii(x, k=3, block_size=block), expected, rtol=1e-5)
  fake = rng.standard_normal((23, 5)).astype(np.float32)
  assert precision_recall(x, fake, block_size=6) == precision_recall(x, fake)


def test_read_samples(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "samples.npz", images)
  np.testing.assert_array_equal(read_samples(tmp_path / "samples.npz"), images)

  np.savez(tmp_path / "float.npz", images.astype(np.float32))
  with pytest.raises(ValueError, match="not uint8 NHWC"):
    read_samples(tmp_path / "float.npz")
  np.savez(tmp_path / "named.npz", images=images)
  with pytest.raises(ValueError, match="no arr_0"):
    read_samples(tmp_path / "named.npz")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="not a readable npz"):
    read_samples(tmp_path / "junk.npz")


def test_read_reference_batch(tmp_path):
  images = np.zeros((2, 4, 4, 3), np.uint8)
  mu, sigma = np.arange(3.0), np.eye(3)
  # guided-diffusion's reference batches hold both, plus spatial statistics jaxdiff ignores.
  np.savez(tmp_path / "both.npz", images, mu=mu, sigma=sigma, mu_s=mu, sigma_s=sigma)
  batch = read_reference_batch(tmp_path / "both.npz")
  np.testing.assert_array_equal(batch.images, images)
  assert isinstance(batch.statistics, FIDStatistics)
  np.testing.assert_array_equal(batch.statistics.sigma, sigma)

  np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
  assert read_reference_batch(tmp_path / "stats.npz").images is None
  np.savez(tmp_path / "images.npz", images)
  assert read_reference_batch(tmp_path / "images.npz").statistics is None
  np.savez(tmp_path / "neither.npz", x=mu)
  with pytest.raises(ValueError, match="neither arr_0 nor mu and sigma"):
    read_reference_batch(tmp_path / "neither.npz")


def test_digits_classifier_features_separate_digits_from_noise():
  from jaxdiff.metrics import digits_classifier

  features = digits_classifier.DigitsFeatures()
  # fit on the 270 test digits only: accuracy on the 1,527 unseen training digits says the
  # hidden layer carries digit identity (measured: 0.946)
  assert features.train_accuracy > 0.9
  test_images, _ = digits_classifier.digits_split("test")
  real = fid_from_features(features.features(test_images), features.train_features)
  noise = np.random.default_rng(0).integers(0, 256, test_images.shape, dtype=np.uint8)
  fake = fid_from_features(features.features(noise), features.train_features)
  assert fake > 20 * real
  with pytest.raises(ValueError, match="uint8 images of shape"):
    features.features(test_images.astype(np.float32))
