"""TFDS datasets (the `digits` and `stacked_digits` builders, a folder of images prepared as one)
and the grain input pipeline."""

from jaxdiff.data.digits import Digits, ensure_digits_prepared
from jaxdiff.data.folder import FolderError, Prepared, require_split
from jaxdiff.data.folder import prepare as prepare_folder
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
  "FolderError",
  "Prepared",
  "StackedDigits",
  "ensure_digits_prepared",
  "ensure_stacked_digits_prepared",
  "grain_shard",
  "make_dataset",
  "make_global_batch",
  "make_latent_dataset",
  "open_source",
  "prepare_folder",
  "prepare_if_built",
  "require_split",
  "write_records",
]
