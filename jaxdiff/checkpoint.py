"""Orbax checkpoints of the train state and the data iterator, restored from the newest good one.

A checkpoint that cannot be read (a file truncated or missing) is moved aside into
`<workdir>/checkpoints_corrupt/` with a warning and the previous one is tried: nothing is deleted
except by Orbax's keep-K rotation of good checkpoints, and a crash never loses a good one because
Orbax marks a checkpoint finished only once every file is written: in a local folder it renames
the step's temporary folder to the step number, in a bucket (which has no rename of folders) it
writes the step folder in place and `commit_success.txt` last. A step folder without that mark is
unfinished (a run killed while saving) and is never read. A checkpoint that is readable but holds
a different tree (written by another model or jaxdiff version) is not corrupt: restoring stops
with an error and leaves it in place.

Saving asynchronously (the default) with one process, `save` returns once the state is copied off
the device: the step loop may then donate and overwrite its buffers, and the files are written in
the background. The caller waits (`wait`) only where correctness needs it: Orbax waits for the
previous save before it starts the next, and the loop waits at exit and on preemption.

A dataclass state is stored as a dict of its fields that are not None, so an optional part (the
importance sampler's loss history) leaves no trace when unused, and checkpoints written before
such a field existed restore unchanged.
"""

from __future__ import annotations

import dataclasses
import threading

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxdiff import storage

# The file with which Orbax marks a finished checkpoint written in place (in a bucket).
COMMIT_FILE = "commit_success.txt"


class CheckpointError(RuntimeError):
  """No checkpoint in a directory could be restored."""


class Checkpointer:
  """Saves {'state': pytree, 'data': JSON} every few steps, keeping the newest `keep`."""

  def __init__(self, directory, *, keep: int = 3, async_save: bool = True):
    self.directory = _absolute(directory)
    self._async_save = async_save
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    self._starting = None  # the thread still starting the last save (_Starting)
    self._copy = None  # (what it copies, the jitted copy to host memory) of the last save

  def save(self, step: int, state, data_state: dict | None = None, *, force: bool = False):
    """Saves `state` (and the iterator's `data_state`) as checkpoint `step`.

    Asynchronously, with one process: returns once the state's arrays are copied to host memory
    (the device-to-host copy, what the caller must wait for before it may overwrite them); Orbax's
    own start of the save (a few hundred microseconds of Python per array: 0.4 s for the CIFAR-10
    state's 1,316 arrays, benchmarks/RESULTS.md) and the writing go on in the background. Errors of
    a save surface at the next `save`, `wait` or `close`. With several processes Orbax starts the
    save on the calling thread: its barriers there are device collectives, which must not race
    the train step's. Synchronously: returns once the checkpoint is written."""
    self._finish_starting()
    if not force and not self._manager.should_save(int(step)):
      return False
    fields = _fields(state)
    snapshot = self._host_copy(fields) if self._async_save and jax.process_count() == 1 else None
    if snapshot is None:
      return self._manager.save(int(step), args=_save_args(fields, data_state), force=force)
    args = _save_args(snapshot, data_state)
    self._starting = _Starting(lambda: self._manager.save(int(step), args=args, force=force))
    return True

  def wait(self):
    """Until every save so far is written and finished."""
    self._finish_starting()
    self._manager.wait_until_finished()

  def close(self):
    try:
      self._finish_starting()
    finally:
      self._manager.close()

  def steps(self) -> list[int]:
    self._finish_starting()
    return sorted(self._manager.all_steps())

  def _host_copy(self, tree):
    """A copy of `tree`'s arrays in host memory, sharded as they are (the same arrays to Orbax),
    once the copy is done; None where there is no host memory to copy to (or the arrays are there
    already). One jitted program copies them all: a device_put per array costs 0.1 s more for the
    CIFAR-10 state. It compiles once per run (and is then in the persistent cache)."""
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves or not all(isinstance(x, jax.Array) for x in leaves):
      return None
    shardings = tuple(x.sharding for x in leaves)
    devices = {d for s in shardings for d in s.device_set}
    if any(s.memory_kind == "pinned_host" for s in shardings) or not all(
      "pinned_host" in {m.kind for m in d.addressable_memories()} for d in devices
    ):
      return None
    key = (treedef, shardings)
    if self._copy is None or self._copy[0] != key:
      host = [s.with_memory_kind("pinned_host") for s in shardings]
      self._copy = key, jax.jit(lambda arrays: arrays, out_shardings=host)
    return jax.tree.unflatten(treedef, jax.block_until_ready(self._copy[1](leaves)))

  def _finish_starting(self):
    starting, self._starting = self._starting, None
    if starting is not None:
      starting.join()
      if starting.error is not None:
        raise starting.error

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
      _move_folder(self.directory / str(step), target)
    # Orbax caches the step list; a fresh manager sees the directory as it now is.
    self._manager.close()
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)


class _Starting(threading.Thread):
  """Runs `begin_save` (Orbax's start of an async save) in the background; `error` is what it
  raised."""

  def __init__(self, begin_save):
    super().__init__(name="jaxdiff-checkpoint-start")
    self._start_save, self.error = begin_save, None
    self.start()

  def run(self):
    try:
      self._start_save()
    except BaseException as e:  # noqa: BLE001 — handed to the caller, raised on its thread
      self.error = e
    finally:
      self._start_save = None  # nor the host copy kept alive until the next join


def _save_args(fields, data_state):
  items = {"state": ocp.args.StandardSave(fields)}
  if data_state is not None:
    items["data"] = ocp.args.JsonSave(data_state)
  return ocp.args.Composite(**items)


def _move_folder(source: epath.Path, target: epath.Path) -> None:
  """Moves folder `source` to `target` (which does not exist): a rename in a local folder; in a
  bucket, which cannot rename a folder, a copy of every object and then the deletion of the
  originals, the commit mark first, so that a crash midway leaves an unfinished step, never a
  finished one with files missing."""
  if not storage.is_url(source):
    source.rename(target)
    return
  storage.copy_folder(source, target)
  (source / COMMIT_FILE).unlink(missing_ok=True)
  source.rmtree()


def finished_steps(directory) -> list[int]:
  """The steps of the finished checkpoints in `directory` (a local folder or a URL), in order, by
  Orbax's own test: locally a step folder that is no temporary folder, in a bucket one holding
  its commit mark (`commit_success.txt`)."""
  directory = _absolute(directory)
  if not directory.is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


def read_latest(directory, abstract_fields: dict):
  """(step, {name: value}) of the fields `abstract_fields` names (e.g. {'ema_params': shapes}) in
  the newest finished checkpoint of another run's `directory`, or None when it holds none. Only
  those fields are read (a teacher's or an autoencoder's EMA weights, not its optimizer state).
  Read-only: that run's checkpoints are not this one's to move aside or rotate, so a checkpoint
  that cannot be read raises instead. A step folder that run is still writing (or was killed
  writing) is not finished and is passed over."""
  directory = _absolute(directory)
  steps = finished_steps(directory)
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
