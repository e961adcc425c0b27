"""Inception features of uint8 image arrays, the npz files they come in, cached reference statistics
and the sample metrics computed from them.

Samples are jaxdiff's (and guided-diffusion's) `samples_NxHxWxC.npz`: `arr_0`, uint8 NHWC. Reference
batches are guided-diffusion's (e.g. VIRTUAL_imagenet64_labeled.npz): `arr_0` images and/or the
precomputed `mu`, `sigma`. Those statistics come from TensorFlow's graph, whose resize differs a
little from pytorch-fid's (see `inception.preprocess`); recompute from `arr_0` for exact comparisons.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from jaxdiff import storage
from jaxdiff.metrics.fid import FIDStatistics, feature_statistics, frechet_distance
from jaxdiff.metrics.inception import InceptionV3, images_from_uint8, preprocess
from jaxdiff.metrics.inception_score import inception_score
from jaxdiff.metrics.precision_recall import precision_recall


class ReferenceBatch(NamedTuple):
  """A guided-diffusion reference batch: images (uint8 NHWC) and/or precomputed FID statistics."""

  images: np.ndarray | None
  statistics: FIDStatistics | None


class ReferenceStatistics(NamedTuple):
  """What a sample set is compared with: FID statistics and the features for precision/recall."""

  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray


def _check_images(images: np.ndarray, source: str) -> np.ndarray:
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
      f"{source} holds {images.dtype} {images.shape}, not uint8 NHWC images with 1 or 3 channels."
    )
  return images


def _load_npz(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
  try:
    f = np.load(io.BytesIO(storage.path(path).read_bytes()))  # a local file or a URL
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a readable npz file ({e}).") from e
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise ValueError(f"{path} is a single array, not an npz file.")  # noqa: TRY004 — a user's file
  return f


def read_samples(path: str | os.PathLike) -> np.ndarray:
  """The uint8 NHWC images in `arr_0` of a sample npz."""
  with _load_npz(path) as f:
    if "arr_0" not in f:
      raise ValueError(f"{path} has no arr_0: pass a samples npz written by jaxdiff or ADM.")
    return _check_images(f["arr_0"], f"{path}:arr_0")


def read_reference_batch(path: str | os.PathLike) -> ReferenceBatch:
  """A guided-diffusion reference batch: `arr_0` images, `mu`/`sigma` statistics, or both."""
  with _load_npz(path) as f:
    images = _check_images(f["arr_0"], f"{path}:arr_0") if "arr_0" in f else None
    stats = FIDStatistics(f["mu"], f["sigma"]) if "mu" in f and "sigma" in f else None
  if images is None and stats is None:
    raise ValueError(f"{path} has neither arr_0 nor mu and sigma: pass a reference batch npz.")
  return ReferenceBatch(images, stats)


_preprocess_uint8 = jax.jit(lambda images: preprocess(images_from_uint8(images)))


@functools.partial(jax.jit, static_argnums=0)
def _features_and_logits(graphdef, state, x):
  model = nnx.merge(graphdef, state)
  features = model.pool_features(x)
  return features, model.logits(features)


def inception_features(
  model: InceptionV3, images: np.ndarray, *, batch_size: int = 100
) -> tuple[np.ndarray, np.ndarray]:
  """Pool features (N, 2048) and Inception Score logits (N, 1008), float32, of uint8 NHWC images.

  The network is compiled once per batch size: images are resized by a separate program (one per
  input size) and the last batch is padded to `batch_size`.
  """
  images = _check_images(np.asarray(images), "images")
  graphdef, state = nnx.split(model)
  features, logits = [], []
  for start in range(0, len(images), batch_size):
    batch = images[start : start + batch_size]
    pad = batch_size - len(batch)
    if pad:
      batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), np.uint8)])
    f, l = _features_and_logits(graphdef, state, _preprocess_uint8(batch))
    features.append(np.asarray(f)[: batch_size - pad])
    logits.append(np.asarray(l)[: batch_size - pad])
  return np.concatenate(features), np.concatenate(logits)


def reference_statistics(
  directory: str | os.PathLike,
  name: str,
  images: np.ndarray | Callable[[], np.ndarray],
  *,
  model: InceptionV3,
  batch_size: int = 100,
) -> ReferenceStatistics:
  """Statistics of a reference image set, cached as DIRECTORY/NAME.npz (mu, sigma, features).

  `images` (uint8 NHWC) may be a function, called only when the cache is missing. Delete the file
  to recompute after changing the data; the name should say which data (e.g. "cifar10_train").
  The features are kept for precision/recall: N x 2048 float32, 400 MB for 50k images.
  """
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    raise ValueError(f"Reference name {name!r} must be a plain file name: letters, digits, _ . -")
  path = storage.path(directory) / f"{name}.npz"
  if path.exists():
    with _load_npz(path) as f:
      return ReferenceStatistics(f["mu"], f["sigma"], f["features"])
  features, _ = inception_features(
    model, images() if callable(images) else images, batch_size=batch_size
  )
  stats = ReferenceStatistics(*feature_statistics(features), features)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Written under a temporary name and moved: an interrupted run never leaves a truncated cache.
  storage.save_npz(path, **stats._asdict())
  return stats


def sample_metrics(
  model: InceptionV3,
  samples: np.ndarray,
  reference: ReferenceStatistics,
  *,
  batch_size: int = 100,
  splits: int = 10,
) -> dict[str, float]:
  """FID, Inception Score (mean, std) and precision/recall of uint8 NHWC samples."""
  features, logits = inception_features(model, samples, batch_size=batch_size)
  is_mean, is_std = inception_score(logits, splits=splits)
  precision, recall = precision_recall(reference.features, features)
  return {
    "fid": frechet_distance(*feature_statistics(features), reference.mu, reference.sigma),
    "inception_score": is_mean,
    "inception_score_std": is_std,
    "precision": precision,
    "recall": recall,
  }
