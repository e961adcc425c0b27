"""TFDS datasets (the `digits` and `stacked_digits` builders) and the grain input pipeline."""

from jaxdiff.data.digits import Digits, ensure_digits_prepared
from jaxdiff.data.latent_records import make_latent_dataset, write_records
from jaxdiff.data.pipeline import (
  BUILT_DATASETS,
  BuiltDataset,
  DatasetNotPreparedError,
  grain_shard,
  make_dataset,
  make_global_batch,
  open_source,
  prepare_if_built,
)
from jaxdiff.data.stacked_digits import StackedDigits, ensure_stacked_digits_prepared

__all__ = [
  "BUILT_DATASETS",
  "BuiltDataset",
  "DatasetNotPreparedError",
  "Digits",
  "StackedDigits",
  "ensure_digits_prepared",
  "ensure_stacked_digits_prepared",
  "grain_shard",
  "make_dataset",
  "make_global_batch",
  "make_latent_dataset",
  "open_source",
  "prepare_if_built",
  "write_records",
]
