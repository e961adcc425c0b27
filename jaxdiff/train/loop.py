"""The training loop: data → jitted sharded steps → metrics, checkpoints and sample grids."""

from __future__ import annotations

import json
import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter

from jaxdiff import data, generate, models, parallel, storage
from jaxdiff import state as state_lib
from jaxdiff.checkpoint import abstract
from jaxdiff.run import Run, RunError, setup, training_dataset
from jaxdiff.train.step import make_train_fn


# The exit status of a run stopped by a preemption notice with its checkpoint saved (sysexits.h's
# EX_TEMPFAIL: try again): rerunning the same command resumes it.
PREEMPTED_EXIT_CODE = 75


class Preempted(RuntimeError):
  """Training stopped at a preemption notice (SIGTERM, SIGINT) after saving its checkpoint."""


class _Preemption:
  """When to stop for a preemption notice: SIGTERM, or SIGINT (Ctrl-C).

  One process: the signal sets a flag that the loop reads after each call, and the run saves at
  the step it reached. Several processes: each gets the notice at its own moment, and one that
  stopped stepping while the others enter the next collective would hang the job. JAX's
  preemption sync manager (part of `jax.distributed`, which handles SIGTERM itself) tells every
  process and picks the first call that all of them will reach;
  `multihost_utils.reached_preemption_sync_point(call)` is True at that call on every process.
  SIGINT is handed to it as a SIGTERM. A second notice while saving changes nothing."""

  def __init__(self):
    self.signal = None
    self._synced = jax.process_count() > 1
    signals = (signal.SIGINT,) if self._synced else (signal.SIGTERM, signal.SIGINT)
    self._previous = {s: signal.signal(s, self._handle) for s in signals}

  def _handle(self, signum, frame):
    self.signal = self.signal or signum
    if self._synced and signum != signal.SIGTERM:
      signal.raise_signal(signal.SIGTERM)  # to JAX's notifier, which tells every process

  def reached(self, call: int) -> bool:
    """Whether the loop, after its `call`-th call of this process (the same on all processes),
    must save and stop."""
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(call)
    return self.signal is not None

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


class _Metrics:
  """metrics.jsonl and TensorBoard events in the workdir, written by process 0."""

  def __init__(self, workdir: epath.Path):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      self._jsonl = workdir / "metrics.jsonl"
      storage.register_tensorboard_writer()  # events in a bucket too
      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, values: dict):
    if not self.enabled:
      return
    storage.append_text(self._jsonl, json.dumps({"step": step, **values}) + "\n")
    for name, value in values.items():
      self._tb.add_scalar(f"train/{name}", value, step)
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._tb.close()


def train(config: ml_collections.ConfigDict, workdir) -> state_lib.TrainState:
  """Trains to config.train.num_steps, resuming from the newest good checkpoint in workdir."""
  run = setup(config, workdir)
  t = config.train
  parallel.check_batch_size(config.data.batch_size, run.mesh)
  if t.steps_per_call < 1:
    raise ValueError(f"train.steps_per_call must be at least 1, got {t.steps_per_call}.")
  iterator = iter(training_dataset(run))
  state = run.state
  restored = run.checkpointer.restore_latest(abstract(state))
  if restored is not None:
    step, state, data_state = restored
    if data_state is not None:
      iterator.set_state(data_state)
    if jax.process_index() == 0:
      print(f"resumed from the checkpoint at step {step} in {run.checkpointer.directory}")
  step = int(state.step)

  kwargs = run.step_kwargs()
  train_fns = {1: make_train_fn(run.mesh, state, steps_per_call=1, **kwargs)}
  if t.steps_per_call > 1:
    train_fns[t.steps_per_call] = make_train_fn(
      run.mesh, state, steps_per_call=t.steps_per_call, **kwargs
    )
  grids = _GridWriter(run) if t.sample_every else None
  stacked = parallel.stacked_batch_sharded(run.mesh)
  metrics_out = _Metrics(run.workdir)
  metrics_out.write(step, {"params": models.parameter_count(state.params)})
  preemption = _Preemption()
  bar = tqdm.tqdm(
    total=t.num_steps,
    initial=step,
    unit="step",
    dynamic_ncols=True,
    disable=jax.process_index() != 0,
  )
  began = started = time.time()
  last_log, calls = step, 0
  try:
    while step < t.num_steps:
      # Calls never cross a checkpoint or sample boundary, so a resumed run makes the same calls.
      boundaries = [t.num_steps] + [
        (step // e + 1) * e for e in (t.checkpoint_every, t.sample_every) if e
      ]
      n = t.steps_per_call if min(boundaries) - step >= t.steps_per_call else 1
      batches = [next(iterator) for _ in range(n)]
      host = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
      batch = data.make_global_batch(host, stacked)
      state, metrics = train_fns[n](state, batch, run.codec.params)
      losses = np.asarray(metrics["loss"])
      if not np.all(np.isfinite(losses)):
        good = run.checkpointer.steps()
        raise RunError(
          f"the loss became {losses[~np.isfinite(losses)][0]} at step {step + 1}; stopped "
          f"without saving. The last good checkpoint is step {good[-1] if good else 'none'}. "
          "Lower optim.learning_rate or set optim.grad_clip_norm, then rerun to resume."
        )
      step += n
      calls += 1
      stop = preemption.reached(calls)
      bar.update(n)
      bar.set_postfix(loss=f"{losses[-1]:.4f}")
      if step // t.log_every > (step - n) // t.log_every or step == t.num_steps or stop:
        now = time.time()
        values = {k: float(np.asarray(v)[-1]) for k, v in metrics.items()}
        values["steps_per_sec"] = (step - last_log) / max(now - started, 1e-9)
        values["wall_seconds"] = now - began  # since this process started training
        metrics_out.write(step, values)
        started, last_log = now, step
      if step % t.checkpoint_every == 0 or step == t.num_steps or stop:
        # Returns once the state is copied off the device (the next call donates it; with several
        # processes, once Orbax has started the save); the files are written in the background,
        # and the loop waits for them only where it must: Orbax before it starts the next save,
        # this loop on preemption and at exit.
        run.checkpointer.save(step, state, iterator.get_state(), force=True)
      if grids is not None and (step % t.sample_every == 0 or step == t.num_steps):
        grids.write(state.ema_params, step)
      if stop:
        run.checkpointer.wait()
        where = " on every process" if jax.process_count() > 1 else ""
        raise Preempted(
          f"stopped by a preemption notice at step {step}{where}; the checkpoint is saved: "
          "rerun the same command to resume."
        )
  finally:
    bar.close()
    try:
      run.checkpointer.wait()  # before the handlers go: a late signal must not cut a save short
    finally:  # a save that failed in the background raises here, after everything is closed
      run.checkpointer.close()
      metrics_out.close()
      preemption.restore()
  return state


class _GridWriter:
  """Writes samples/grid_STEP.png from the EMA parameters during training."""

  def __init__(self, run: Run):
    count = run.config.sample.grid_samples
    self._path = run.workdir / "samples"
    self._generator = generate.Generator(run, count)

  def write(self, params, step: int):
    images, _ = self._generator.images(params, generate.grid_key(self._generator.config, step))
    if jax.process_index() == 0:
      generate.save_grid(images, self._path / f"grid_{step}.png")
