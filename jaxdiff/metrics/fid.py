"""Fréchet Inception Distance (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to
the Inception pool features of two image sets."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FIDStatistics(NamedTuple):
  """Mean (d,) and covariance (d, d) of a feature set, float64."""

  mu: np.ndarray
  sigma: np.ndarray


def feature_statistics(features: np.ndarray) -> FIDStatistics:
  """Mean and unbiased covariance (N - 1 denominator, NumPy's `np.cov`, as pytorch-fid and
  guided-diffusion's evaluator) of (N, d) features, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"Need (N >= 2, d) features for a covariance, got shape {features.shape}.")
  return FIDStatistics(features.mean(axis=0), np.cov(features, rowvar=False))


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2), in float64.

  Σ1 Σ2 is not symmetric, and the usual route, scipy's `sqrtm` of it (pytorch-fid, guided-diffusion),
  runs a complex Schur decomposition that can return NaN or complex parts for the near-singular
  covariances FID has with fewer samples than 2048 dimensions, patched with an ad-hoc eps * I.
  Instead, with Σ1 = A Aᵀ from its symmetric eigendecomposition (A = V √W), Σ1 Σ2 = A (Aᵀ Σ2) has
  the nonzero eigenvalues of Aᵀ Σ2 A, which is symmetric positive semi-definite: tr √(Σ1 Σ2) is the
  sum of the square roots of its eigenvalues, from two backward-stable symmetric eigensolvers.
  Eigenvalues of Σ1 below its numerical-rank tolerance are dropped (A loses those columns), so
  rank-deficient Σ1 is both exact and cheaper; rounding's tiny negatives are clipped to 0. About 5x
  faster than sqrtm at d = 2048.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(
      f"Statistics do not match: means {mu1.shape}, {mu2.shape}, covariances "
      f"{sigma1.shape}, {sigma2.shape}; compute both with the same feature extractor."
    )
  w, v = np.linalg.eigh(sigma1)
  # np.linalg.matrix_rank's tolerance: smaller eigenvalues are rounding noise around 0.
  keep = w > w.max(initial=0) * len(w) * np.finfo(np.float64).eps
  factor = v[:, keep] * np.sqrt(w[keep])
  eigenvalues = np.linalg.eigvalsh(factor.T @ sigma2 @ factor)
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID between two (N, d) feature sets."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
