"""Sample-quality metrics on the FID Inception network: FID, Inception Score, precision/recall;
and the mode count of stacked digits (modes.py).

Typical use, with weights converted once by `python -m jaxdiff.convert pytorch-fid-inception`:

    model = load_inception("pt_inception-2015-12-05.safetensors")
    reference = reference_statistics(workdir, "digits_train", load_images, model=model)
    metrics = sample_metrics(model, read_samples("samples_10000x16x16x1.npz"), reference)
"""

from jaxdiff.metrics.features import (
  ReferenceBatch,
  ReferenceStatistics,
  inception_features,
  read_reference_batch,
  read_samples,
  reference_statistics,
  sample_metrics,
)
from jaxdiff.metrics.fid import (
  FIDStatistics,
  feature_statistics,
  fid_from_features,
  frechet_distance,
)
from jaxdiff.metrics.inception import InceptionV3, images_from_uint8, load_inception, preprocess
from jaxdiff.metrics.inception_score import inception_score
from jaxdiff.metrics.lpips import LPIPS, load_lpips
from jaxdiff.metrics.modes import ModeCounter, kl_to_uniform, mode_statistics
from jaxdiff.metrics.precision_recall import knn_radii, manifold_coverage, precision_recall

__all__ = [
  "LPIPS",
  "FIDStatistics",
  "InceptionV3",
  "ModeCounter",
  "ReferenceBatch",
  "ReferenceStatistics",
  "feature_statistics",
  "fid_from_features",
  "frechet_distance",
  "images_from_uint8",
  "inception_features",
  "inception_score",
  "kl_to_uniform",
  "knn_radii",
  "load_inception",
  "load_lpips",
  "manifold_coverage",
  "mode_statistics",
  "precision_recall",
  "preprocess",
  "read_reference_batch",
  "read_samples",
  "reference_statistics",
  "sample_metrics",
]
