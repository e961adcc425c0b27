"""Orbax checkpoints of the train state and the data iterator, restored from the newest good one.

A checkpoint that cannot be read (a file truncated or missing) is moved aside into
`<workdir>/checkpoints_corrupt/` with a warning and the previous one is tried: nothing is deleted
except by Orbax's keep-K rotation of good checkpoints, and a crash never loses a good one because
Orbax commits a checkpoint by an atomic rename once every file is written. A checkpoint that is
readable but holds a different tree (written by another model or jaxdiff version) is not corrupt:
restoring stops with an error and leaves it in place.

A dataclass state is stored as a dict of its fields that are not None, so an optional part (the
importance sampler's loss history) leaves no trace when unused, and checkpoints written before
such a field existed restore unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxdiff import storage


class CheckpointError(RuntimeError):
  """No checkpoint in a directory could be restored."""


class Checkpointer:
  """Saves {'state': pytree, 'data': JSON} every few steps, keeping the newest `keep`."""

  def __init__(self, directory, *, keep: int = 3, async_save: bool = True):
    self.directory = _absolute(directory)
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)

  def save(self, step: int, state, data_state: dict | None = None, *, force: bool = False):
    items = {"state": ocp.args.StandardSave(_fields(state))}
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore_latest(self, abstract_state, *, with_data: bool = True):
    """(step, state, data_state) of the newest readable checkpoint, or None when there is none.

    `abstract_state` gives the tree structure, shapes, dtypes and shardings to restore into.
    """
    tried = []
    for step in reversed(self.steps()):
      try:
        return step, *self._restore(step, abstract_state, with_data)
      except Exception as e:  # noqa: BLE001 — any other failure to read means "corrupt", by design
        if "tree structures do not match" in str(e):
          raise CheckpointError(
            f"the checkpoint at step {step} in {self.directory} holds a different state than "
            f"this config builds ({str(e).splitlines()[0]}); run with the config it was "
            "written with (config.json in the workdir) or use a new --workdir."
          ) from e
        tried.append(step)
        logging.warning(
          "checkpoint at step %d cannot be restored (%s: %s); moving it aside and "
          "trying the previous one.",
          step,
          type(e).__name__,
          e,
        )
        self._set_aside(step)
    if tried:
      raise CheckpointError(
        f"none of the checkpoints in {self.directory} (steps {tried}) could be restored; they "
        f"were moved to {self.directory.parent / 'checkpoints_corrupt'}. Restore a good copy or "
        "start in a new --workdir."
      )
    return None

  def _restore(self, step, abstract_state, with_data):
    items = {"state": ocp.args.StandardRestore(_fields(abstract_state))}
    if with_data and (self.directory / str(step) / "data").exists():
      items["data"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = restored["state"]
    if dataclasses.is_dataclass(abstract_state):
      state = dataclasses.replace(abstract_state, **state)
    return state, restored.get("data") if with_data else None

  def _set_aside(self, step):
    if jax.process_index() == 0:
      aside = self.directory.parent / "checkpoints_corrupt"
      aside.mkdir(parents=True, exist_ok=True)
      target = aside / f"{step}"
      suffix = 0
      while target.exists():
        suffix += 1
        target = aside / f"{step}.{suffix}"
      (self.directory / str(step)).rename(target)
    # Orbax caches the step list; a fresh manager sees the directory as it now is.
    self._manager.close()
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)


def read_latest(directory, abstract_fields: dict):
  """(step, {name: value}) of the fields `abstract_fields` names (e.g. {'ema_params': shapes}) in
  the newest checkpoint of another run's `directory`, or None when it holds none. Only those
  fields are read (a teacher's or an autoencoder's EMA weights, not its optimizer state).
  Read-only: that run's checkpoints are not this one's to move aside or rotate, so a checkpoint
  that cannot be read raises instead. Orbax commits a step's folder by renaming it to the step
  number, so the numbered folders are the finished checkpoints."""
  directory = _absolute(directory)
  steps = (
    sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    if directory.is_dir()
    else []
  )
  if not steps:
    return None
  # shapes without a sharding (an nnx.eval_shape model's) are read onto this process's first device
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def placed(x):
    return x if x.sharding else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)

  target = jax.tree.map(placed, abstract_fields)
  with ocp.PyTreeCheckpointer() as reader:
    fields = reader.restore(
      directory / str(steps[-1]) / "state",
      args=ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      ),
    )
  return steps[-1], fields


def _fields(tree):
  """A dataclass as a dict of its fields that are not None; any other tree as it is."""
  if not dataclasses.is_dataclass(tree):
    return tree
  fields = ((f.name, getattr(tree, f.name)) for f in dataclasses.fields(tree))
  return {name: value for name, value in fields if value is not None}


def abstract(tree):
  """Shapes, dtypes and shardings of a tree of arrays, for restoring into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _absolute(directory) -> epath.Path:
  """A local folder as an absolute path (Orbax's), a URL as it is."""
  directory = epath.Path(directory)
  return directory if storage.is_url(directory) else directory.absolute()
