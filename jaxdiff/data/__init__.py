"""TFDS datasets (the `digits` builder) and the grain input pipeline."""

from jaxdiff.data.digits import Digits, ensure_digits_prepared
from jaxdiff.data.pipeline import (
  DatasetNotPreparedError,
  make_dataset,
  make_global_batch,
  open_source,
)

__all__ = [
  "DatasetNotPreparedError",
  "Digits",
  "ensure_digits_prepared",
  "make_dataset",
  "make_global_batch",
  "open_source",
]
