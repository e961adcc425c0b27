"""TFDS datasets (the `digits` builder) and the grain input pipeline."""

from jaxdiff.data.digits import Digits, ensure_digits_prepared
from jaxdiff.data.latent_records import make_latent_dataset, write_records
from jaxdiff.data.pipeline import (
  DatasetNotPreparedError,
  make_dataset,
  grain_shard,
  make_global_batch,
  open_source,
)

__all__ = [
  "DatasetNotPreparedError",
  "Digits",
  "ensure_digits_prepared",
  "grain_shard",
  "make_dataset",
  "make_latent_dataset",
  "make_global_batch",
  "open_source",
  "write_records",
]
