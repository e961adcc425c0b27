"""What training, sampling and evaluation share: the workdir, mesh, model, state and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import ml_collections

from jaxdiff import data, parallel, schedules
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.config import default_config, validate
from jaxdiff.train import state as state_lib


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


@dataclasses.dataclass
class Run:
  """What training and sampling share: the mesh, the model and its state, the checkpoints."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  schedule: schedules.Schedule
  tx: object
  model_def: state_lib.ModelDef
  state: state_lib.TrainState
  checkpointer: Checkpointer


# Sections that fix what a checkpoint means; changing them under an existing workdir is an error.
_FIXED = ("model", "diffusion", "data.image_size", "data.channels", "data.num_classes")


def _flatten(value, prefix=""):
  if isinstance(value, dict):
    return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: json.loads(json.dumps(value))}  # tuples and lists compare alike


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict):
  """Refuses settings that change what the workdir's checkpoints mean.

  An option newer than the saved config.json is accepted at its default value, so workdirs made
  by an older jaxdiff stay usable.
  """
  path = workdir / "config.json"
  if not path.exists():
    path.write_text(config.to_json(indent=2))
    return
  saved = _flatten(json.loads(path.read_text()))
  new, default = _flatten(config.to_dict()), _flatten(default_config().to_dict())
  for key, value in new.items():
    if not any(key == f or key.startswith(f + ".") for f in _FIXED):
      continue
    if value != saved.get(key, default.get(key)):
      raise TrainingError(
        f"{key} differs from the run already in {workdir} ({path}); use a new "
        "--workdir or the same settings."
      )


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Turns on JAX's persistent compilation cache unless the environment already chose a folder."""
  if config.compilation_cache_dir and not jax.config.jax_compilation_cache_dir:
    jax.config.update(
      "jax_compilation_cache_dir", str(pathlib.Path(config.compilation_cache_dir).expanduser())
    )
    # Initialization compiles many small programs; caching them all is what makes restarts fast.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def setup(config: ml_collections.ConfigDict, workdir) -> Run:
  validate(config)
  enable_compilation_cache(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _check_workdir_config(workdir, config)
  mesh = parallel.make_mesh(config.train.num_devices, fsdp=config.train.fsdp)
  schedule = schedules.make(config.diffusion.schedule, config.diffusion.num_timesteps)
  tx = state_lib.make_optimizer(config)
  model_def, state = state_lib.create(config, tx)
  state = jax.device_put(state, parallel.state_shardings(mesh, state))
  checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  return Run(config, workdir, mesh, schedule, tx, model_def, state, checkpointer)


def make_dataset(
  config: ml_collections.ConfigDict,
  split: str,
  *,
  shuffle=True,
  num_epochs=None,
  batch_size=None,
  drop_remainder=True,
  random_flip=None,
):
  """The config's dataset; training's batch size and flips unless given."""
  d = config.data
  if d.name == "digits":
    data.ensure_digits_prepared(d.data_dir)
  return data.make_dataset(
    name=d.name,
    split=split,
    batch_size=batch_size or d.batch_size,
    drop_remainder=drop_remainder,
    data_dir=d.data_dir,
    image_size=d.image_size,
    random_flip=d.random_flip if random_flip is None else random_flip,
    seed=config.seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    num_workers=d.num_workers,
    label_key="label" if d.num_classes else None,
  )
