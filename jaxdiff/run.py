"""What training, sampling and evaluation share: the workdir and its config check, the mesh, the
codec, the network and its state, the objective, the checkpoints and the dataset.

`train/` builds on this module; sampling and evaluation use it without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import ml_collections

from jaxdiff import codecs, data, models, objectives, parallel, schedules
from jaxdiff import state as state_lib
from jaxdiff.checkpoint import Checkpointer, abstract
from jaxdiff.config import default_config, validate


class RunError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


@dataclasses.dataclass
class Components:
  """Everything built from a config alone: the process, the codec, the network and its fresh
  state, the objective and the optimizer."""

  config: ml_collections.ConfigDict
  schedule: schedules.Schedule
  codec: codecs.Codec
  spec: models.NetworkSpec
  objective: objectives.Objective
  tx: object
  model_def: state_lib.ModelDef
  state: state_lib.TrainState

  def step_kwargs(self) -> dict:
    """The keyword arguments of train.step.train_step / make_train_fn."""
    return dict(
      model_def=self.model_def,
      objective=self.objective,
      codec=self.codec,
      tx=self.tx,
      config=self.config,
    )


@dataclasses.dataclass
class Run(Components):
  """A run's workdir with everything built from its config, before any checkpoint is restored."""

  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  checkpointer: Checkpointer


# Sections that fix what a checkpoint means; changing them under an existing workdir is an error.
_FIXED = ("model", "diffusion", "codec", "data.image_size", "data.channels", "data.num_classes")


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
  new = _flatten(config.to_dict())
  default = _flatten(default_config(arch=config.model.arch).to_dict())
  for key, value in new.items():
    if not any(key == f or key.startswith(f + ".") for f in _FIXED):
      continue
    if value != saved.get(key, default.get(key)):
      raise RunError(
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


def network_spec(config: ml_collections.ConfigDict, codec: codecs.Codec) -> models.NetworkSpec:
  """The diffusion space the network models: the data after the codec, and its conditioning."""
  d, m = config.data, config.model
  size, channels = codec.latent_shape(d.image_size, d.channels)
  return models.NetworkSpec(
    in_channels=channels,
    image_size=size,
    num_classes=d.num_classes if m.class_conditional else None,
    learn_sigma=m.learn_sigma,
    dtype=state_lib.COMPUTE_DTYPES[config.train.compute_dtype],
  )


def build(config: ml_collections.ConfigDict) -> Components:
  """The components of a run with this config, its state fresh from the config's seed."""
  schedule = schedules.make(
    config.diffusion.schedule,
    config.diffusion.num_timesteps,
    rescale_zero_terminal_snr=config.diffusion.rescale_zero_terminal_snr,
  )
  codec = codecs.build(config)
  spec = network_spec(config, codec)
  objective = objectives.build(config, schedule)
  tx = state_lib.make_optimizer(config)
  model_def, state = state_lib.create(config, tx, spec, init_extra=objective.init_extra)
  return Components(config, schedule, codec, spec, objective, tx, model_def, state)


def setup(config: ml_collections.ConfigDict, workdir) -> Run:
  """Validates the config, checks it against the workdir's, and builds the run on its mesh."""
  validate(config)
  enable_compilation_cache(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _check_workdir_config(workdir, config)
  mesh = parallel.make_mesh(config.train.num_devices, fsdp=config.train.fsdp)
  parts = build(config)
  state = jax.device_put(parts.state, parallel.state_shardings(mesh, parts.state))
  checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  fields = {f.name: getattr(parts, f.name) for f in dataclasses.fields(Components)}
  return Run(**{**fields, "state": state}, workdir=workdir, mesh=mesh, checkpointer=checkpointer)


def restore_for_inference(run: Run):
  """(step, state) of the newest checkpoint, for sampling and evaluation (no data iterator)."""
  restored = run.checkpointer.restore_latest(abstract(run.state), with_data=False)
  if restored is None:
    raise RunError(
      f"no checkpoint in {run.checkpointer.directory}; train first with "
      "--mode=train and the same --workdir."
    )
  step, state, _ = restored
  return step, state


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
