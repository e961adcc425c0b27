"""Quiets TFDS where its output means nothing to a jaxdiff user.

TFDS speaks through absl logging (WARNING lines), tqdm progress bars (on stderr, with cursor-up
escapes between nested bars) and bold prints. jaxdiff builds `digits` itself in about a second,
and reads images with PIL on purpose, so none of that says anything the user can act on.
"""

from __future__ import annotations

import contextlib
import logging
import os

import tensorflow_datasets as tfds
from absl import logging as absl_logging
from tensorflow_datasets.core.utils import tqdm_utils

_TFDS_DIR = os.path.dirname(tfds.__file__) + os.sep
_OPENCV_NOTICE = "OpenCV is not installed"


def _from_tfds(record: logging.LogRecord) -> bool:
  # absl's logger records the frame that called absl.logging, so this is the TFDS source file.
  return record.pathname.startswith(_TFDS_DIR)


class _OpenCVNoticeFilter(logging.Filter):
  """Drops TFDS's "OpenCV is not installed ... Defaulting to PIL" warning and nothing else."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (_from_tfds(record) and str(record.msg).startswith(_OPENCV_NOTICE))


class _TfdsNoticeFilter(logging.Filter):
  """Drops TFDS's records below ERROR (an unprepared dir's "has no dataset_info.json", ...)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not _from_tfds(record)


def drop_opencv_notice() -> None:
  """Filters out TFDS's OpenCV warning, logged on the first image it decodes, for good.

  Decoding runs in grain's reader threads (and worker processes, which import this package), so
  a filter on absl's logger is the one place that sees every decode. Idempotent.
  """
  logger = absl_logging.get_absl_logger()
  if not any(isinstance(f, _OpenCVNoticeFilter) for f in logger.filters):
    logger.addFilter(_OpenCVNoticeFilter())


@contextlib.contextmanager
def quiet_tfds_build():
  """No TFDS progress bars and no TFDS log records below ERROR inside the block.

  Both are restored afterwards; errors still raise (and ERROR records still show).
  """
  logger = absl_logging.get_absl_logger()
  notice_filter = _TfdsNoticeFilter()
  # tfds has a setter but no getter for its progress-bar switch; default to on, its own default.
  bars_were_on = getattr(tqdm_utils, "_active", True)
  logger.addFilter(notice_filter)
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(bars_were_on)
    logger.removeFilter(notice_filter)
