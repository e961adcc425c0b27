"""The trainer: sharding invariance, checkpoints, exact resume after SIGKILL, NaN stop, the CLI."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cluster import configured

from jaxdiff import data, generate, parallel
from jaxdiff import run as run_lib
from jaxdiff.checkpoint import Checkpointer, abstract
from jaxdiff.run import RunError
from jaxdiff.train import loop
from jaxdiff.train.step import make_train_fn

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = {
  "data.batch_size": 16,
  "model.base_channels": 32,
  "model.channel_mult": (1,),
  "model.num_res_blocks": 1,
  "model.class_conditional": True,
  "train.num_steps": 8,
  "train.checkpoint_every": 2,
  "train.log_every": 2,
  "train.keep_checkpoints": 10,
  "train.num_devices": 1,
  "train.steps_per_call": 2,
  "sample.num_steps": 4,
  "sample.num_samples": 8,
  "sample.batch_size": 8,
  "optim.warmup_steps": 2,
  # A rate that does not depend on train.num_steps, so runs of different lengths share programs.
  "optim.schedule": "constant",
}


def tiny_config(data_dir, **overrides):
  """configs/digits.py with TINY applied: the config the CLI builds from the same overrides."""
  wanted = {**TINY, "data.data_dir": str(data_dir), **overrides}
  return configured(ROOT / "configs" / "digits.py", wanted)


def cli(workdir, data_dir, *extra, mode="train", **overrides):
  flags = [
    f"--config.{k}={v}"
    for k, v in {**TINY, "data.data_dir": data_dir, **overrides}.items()
    if not isinstance(v, tuple)
  ]
  flags += [
    f"--config.{k}=({','.join(map(str, v))},)" for k, v in TINY.items() if isinstance(v, tuple)
  ]
  return [
    sys.executable,
    "-m",
    "jaxdiff.main",
    f"--config={ROOT / 'configs' / 'digits.py'}",
    f"--workdir={workdir}",
    f"--mode={mode}",
    *flags,
    *extra,
  ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  data.ensure_digits_prepared(str(path))
  return path


def synthetic_batches(config, num_steps):
  rng = np.random.default_rng(0)
  d = config.data
  return [
    {
      "image": rng.uniform(-1, 1, (1, d.batch_size, d.image_size, d.image_size, d.channels)).astype(
        np.float32
      ),
      "label": rng.integers(0, 10, (1, d.batch_size)).astype(np.int32),
    }
    for _ in range(num_steps)
  ]


def losses_on(num_devices, config, batches, fsdp=1):
  mesh = parallel.make_mesh(num_devices, fsdp=fsdp)
  parts = run_lib.build(config)
  state = jax.device_put(parts.state, parallel.state_shardings(mesh, parts.state))
  fn = make_train_fn(mesh, state, steps_per_call=1, **parts.step_kwargs())
  sharding = parallel.stacked_batch_sharded(mesh)
  losses = []
  for batch in batches:
    state, metrics = fn(state, data.make_global_batch(batch, sharding), None)
    losses.append(float(metrics["loss"][0]))
  return np.array(losses), state


def multiprocess_reference_setup(num_steps=5):
  """(train fn, state, global batches) of the tiny config over every device of every process.

  Every process makes the same global synthetic batches and contributes the rows its devices
  hold, so any split into processes trains on the same data (tests/multiprocess_worker.py).
  """
  config = tiny_config("unused", **{"train.num_devices": None, "model.dropout": 0.1})
  mesh = parallel.make_mesh()
  parts = run_lib.build(config)
  state = jax.device_put(parts.state, parallel.state_shardings(mesh, parts.state))
  fn = make_train_fn(mesh, state, steps_per_call=1, **parts.step_kwargs())
  rows = config.data.batch_size // jax.process_count()
  own = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  sharding = parallel.stacked_batch_sharded(mesh)
  batches = [
    data.make_global_batch({k: v[:, own] for k, v in batch.items()}, sharding)
    for batch in synthetic_batches(config, num_steps)
  ]
  return fn, state, batches


def test_two_processes_of_four_devices_train_like_one_of_eight(tmp_path):
  fn, state, batches = multiprocess_reference_setup()
  expected = []
  for batch in batches:
    state, metrics = fn(state, batch, None)
    expected.append(float(metrics["loss"][0]))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    "JAX_PLATFORMS": "cpu",
  }
  worker = ROOT / "tests" / "multiprocess_worker.py"
  procs = [
    subprocess.Popen(
      [sys.executable, str(worker), f"127.0.0.1:{port}", "2", str(i), str(tmp_path)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  result = json.loads(outputs[0][0].strip().splitlines()[-1])
  # the same global batches and keys; the cross-process reductions (gloo) differ in order only
  np.testing.assert_allclose(result["losses"], expected, rtol=1e-5)
  assert result["restored_step"] == 5 and result["restored_equal"]


def test_one_and_eight_devices_give_the_same_losses(tmp_path):
  config = tiny_config(tmp_path, **{"model.dropout": 0.1})
  batches = synthetic_batches(config, 10)
  one, _ = losses_on(1, config, batches)
  eight, state = losses_on(8, config, batches)
  # Same global batch and keys; only the order of the cross-device reductions differs (float32).
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  assert one[-1] < one[0]  # it is learning, not returning a constant
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def device_bytes(tree):
  """Bytes each device holds of a tree of arrays."""
  held = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held


def test_fsdp_splits_the_state_eight_ways_and_trains_like_the_replicated_run(tmp_path):
  config = tiny_config(tmp_path, **{"model.channel_mult": (1, 2), "model.dropout": 0.1})
  batches = synthetic_batches(config, 4)
  replicated, state_1 = losses_on(8, config, batches)
  sharded, state_8 = losses_on(8, config, batches, fsdp=8)
  # Same global batch and keys; XLA gathers the weights and reduce-scatters the gradients, which
  # changes the order of float32 reductions only.
  np.testing.assert_allclose(sharded, replicated, rtol=1e-5)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  a, b = flat(state_8.params), flat(state_1.params)
  # Adam divides by √v: where a gradient is ~0, reduction-order noise moves single weights by up
  # to lr; over all weights the difference stays at float32 rounding
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5
  total = sum(x.nbytes for x in jax.tree.leaves(state_8.params))
  for part in ("params", "ema_params", "opt_state"):
    held = device_bytes(getattr(state_8, part))
    assert len(held) == 8
    # only arrays below parallel.MIN_SHARDED_SIZE (biases, norms) stay whole on every device
    assert max(held.values()) < 0.2 * sum(x.nbytes for x in jax.tree.leaves(getattr(state_8, part)))
  assert max(device_bytes(state_1.params).values()) == total  # the replicated run: all of it
  kernel = state_8.params["down_blocks"][0]["resnets"][0]["conv1"]["kernel"][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")


def test_checkpoint_round_trip(tmp_path):
  config = tiny_config(tmp_path)
  state = run_lib.build(config).state.replace(step=jnp.asarray(7, jnp.int32))
  ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
  ckpt.save(7, state, {"next_index": 3})
  ckpt.wait()
  step, restored, data_state = ckpt.restore_latest(abstract(state))
  assert step == 7 and data_state == {"next_index": 3}
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert jax.tree.structure(restored) == jax.tree.structure(state)


def test_a_checkpoint_of_another_state_is_refused_and_left_in_place(tmp_path):
  from jaxdiff import importance
  from jaxdiff.checkpoint import CheckpointError

  config = tiny_config(tmp_path)
  state = run_lib.build(config).state
  with_history = state.replace(loss_history=importance.init_history(1000, 10))
  ckpt = Checkpointer(tmp_path / "ckpt")
  ckpt.save(3, with_history)
  ckpt.wait()
  _, restored, _ = ckpt.restore_latest(abstract(with_history))
  jax.tree.map(np.testing.assert_array_equal, restored, with_history)
  with pytest.raises(CheckpointError, match="holds a different state than this config builds"):
    ckpt.restore_latest(abstract(state))
  assert ckpt.steps() == [3] and not (tmp_path / "checkpoints_corrupt").exists()


def read_params(workdir, step):
  """A checkpoint's state onto this process's first device, whatever mesh wrote it."""
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as reader:
    saved = reader.metadata(path).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    return reader.restore(path, target)


def kill_at_checkpoint_4(command, workdir, env):
  """Starts a train `command` of 8 steps with a checkpoint every 2 and SIGKILLs it once
  checkpoint 4 exists in `workdir` (before checkpoint 8)."""
  proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "4").exists():
    assert proc.poll() is None and time.time() < deadline, "the run ended before checkpoint 4"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "checkpoints" / "8").exists()


def test_sigkill_and_resume_is_bit_identical(tmp_path, data_dir):
  straight = tmp_path / "straight"
  loop.train(tiny_config(data_dir), straight)
  killed = tmp_path / "killed"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  kill_at_checkpoint_4(cli(killed, data_dir), killed, env)
  subprocess.run(cli(killed, data_dir), env=env, check=True, capture_output=True)
  a, b = read_params(straight, 8), read_params(killed, 8)
  assert int(a["step"]) == int(b["step"]) == 8
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, data_dir, caplog):
  workdir = tmp_path / "run"
  loop.train(tiny_config(data_dir, **{"train.num_steps": 4}), workdir)
  newest = workdir / "checkpoints" / "4" / "state"
  victim = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[:10])  # truncated
  run = run_lib.setup(tiny_config(data_dir, **{"train.num_steps": 4}), workdir)
  step, _, _ = run.checkpointer.restore_latest(abstract(run.state))
  assert step == 2
  assert "checkpoint at step 4 cannot be restored" in caplog.text
  assert (workdir / "checkpoints_corrupt" / "4").exists()  # moved aside, not deleted
  assert (workdir / "checkpoints" / "2").exists()
  run.checkpointer.close()
  final = loop.train(tiny_config(data_dir, **{"train.num_steps": 6}), workdir)
  assert int(final.step) == 6


class _NaNAtThirdBatch:
  """Digits batches, except the third, which holds a NaN."""

  def __init__(self, inner):
    self.inner, self.count = inner, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.inner)
    self.count += 1
    if self.count == 3:
      batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
  real = loop.training_dataset
  monkeypatch.setattr(loop, "training_dataset", lambda run: _NaNAtThirdBatch(iter(real(run))))
  workdir = tmp_path / "run"
  with pytest.raises(
    RunError,
    match=r"loss became nan at step 3.*last good checkpoint is "
    r"step 2",
  ):
    loop.train(tiny_config(data_dir), workdir)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]


def test_cli_train_then_sample_and_never_overwrite(tmp_path, data_dir):
  workdir = tmp_path / "run"
  subprocess.run(
    cli(workdir, data_dir, **{"train.num_steps": 4, "train.sample_every": 4}),
    check=True,
    capture_output=True,
  )
  assert (workdir / "samples" / "grid_4.png").exists()
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert lines[0]["step"] == 0 and lines[0]["params"] > 0
  assert [line["step"] for line in lines[1:]] == [2, 4] and all("loss" in x for x in lines[1:])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  subprocess.run(
    cli(workdir, data_dir, mode="sample", **{"train.num_steps": 4}), check=True, capture_output=True
  )
  (folder,) = [p for p in (workdir / "samples").iterdir() if p.is_dir()]
  assert folder.name.startswith("step4_unipc4_guidance1.5_seed0_")  # what made them
  samples = np.load(folder / "samples_8x16x16x1.npz")
  assert samples["arr_0"].shape == (8, 16, 16, 1) and samples["arr_0"].dtype == np.uint8
  np.testing.assert_array_equal(samples["arr_1"], np.arange(8) % 10)
  assert (folder / "grid.png").exists() and not (folder / "partial").exists()
  # the same command again: the same images exist, nothing is drawn or written
  stamp = (folder / "samples_8x16x16x1.npz").stat().st_mtime_ns
  again = subprocess.run(
    cli(workdir, data_dir, mode="sample", **{"train.num_steps": 4}), capture_output=True, text=True
  )
  assert again.returncode == 0 and "exists already" in again.stdout
  assert (folder / "samples_8x16x16x1.npz").stat().st_mtime_ns == stamp
  # other settings write beside it and leave it alone
  other = {"train.num_steps": 4, "sample.num_steps": 3}
  subprocess.run(cli(workdir, data_dir, mode="sample", **other), check=True, capture_output=True)
  folders = sorted(p.name for p in (workdir / "samples").iterdir() if p.is_dir())
  assert len(folders) == 2 and any(f.startswith("step4_unipc3_guidance1.5_seed0_") for f in folders)
  assert (folder / "samples_8x16x16x1.npz").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--config.train.no_such_key=1", "no_such_key"),
    ("--config.sample.sampler=not_a_sampler", "sample.sampler must be one of"),
    ("--config.data.batch_size=12", "must be divisible"),
    ("--config.train.fsdp=3", "fsdp=3 must divide"),
    ("--coordinator_address=127.0.0.1:1234", "needs --num_processes and --process_id"),
  ],
)
def test_config_errors_exit_nonzero_with_one_message(tmp_path, data_dir, flag, message):
  result = subprocess.run(
    cli(tmp_path, data_dir, flag, **{"train.num_devices": 8}), capture_output=True, text=True
  )
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_sigterm_saves_a_checkpoint_and_exits_with_the_preempted_status(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
    cli(workdir, data_dir, **{"train.num_steps": 400, "train.checkpoint_every": 100}),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 300
  metrics = workdir / "metrics.jsonl"
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
    assert proc.poll() is None and time.time() < deadline, "training did not start"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  proc.send_signal(signal.SIGTERM)  # a second notice while saving changes nothing
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == loop.PREEMPTED_EXIT_CODE == 75  # EX_TEMPFAIL: try again
  assert "rerun the same command to resume" in stderr
  saved = [int(p.name) for p in (workdir / "checkpoints").iterdir()]
  assert len(saved) == 1 and 2 <= saved[0] < 100  # saved at the step it stopped, off the grid
  # the checkpoint is whole: the run resumes from it
  resumed = loop.train(tiny_config(data_dir, **{"train.num_steps": saved[0] + 2}), workdir)
  assert int(resumed.step) == saved[0] + 2


def test_hybrid_loss_training_and_eval_mode(tmp_path, data_dir):
  from jaxdiff import evaluation

  config = tiny_config(
    data_dir,
    **{
      "model.learn_sigma": True,
      "diffusion.loss": "hybrid",
      "sample.sampler": "ddim",  # DDPM and DDIM use a learned variance
      "sample.variance": "learned_range",
      "train.num_steps": 2,
      "eval.num_timesteps": 3,
      "eval.batch_size": 16,
      "eval.num_samples": 12,
    },
  )
  workdir = tmp_path / "run"
  loop.train(config, workdir)
  result = evaluation.evaluate(config, workdir)
  assert result["eval_examples"] == 270  # the whole test split, the short last batch unpadded
  assert (
    result["eval_timesteps"] == 3 and np.isfinite(result["eval_bpd"]) and result["eval_bpd"] > 0
  )
  # 12 samples of 2 training steps: far from the digits, and the note says this is not FID
  assert result["eval_samples"] == 12
  assert result["digits_classifier_fd"] > 3 * result["digits_classifier_fd_real"] > 0
  assert "not FID" in result["digits_classifier_fd_note"]
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["eval_bpd"] == result["eval_bpd"] and last["step"] == 2


def test_importance_sampled_vlb_keeps_its_loss_history_across_a_resume(tmp_path, data_dir):
  overrides = {
    "model.learn_sigma": True,
    "diffusion.loss": "vlb",
    "diffusion.timestep_sampler": "loss_second_moment",
    # 20 steps × history 2: 16 examples per step fill every history within the 8 steps
    "diffusion.num_timesteps": 20,
    "diffusion.loss_history_size": 2,
    "sample.sampler": "ddim",  # DDPM and DDIM use a learned variance
    "sample.variance": "learned_range",
  }
  straight = tmp_path / "straight"
  loop.train(tiny_config(data_dir, **overrides), straight)
  resumed = tmp_path / "resumed"
  loop.train(tiny_config(data_dir, **{**overrides, "train.num_steps": 4}), resumed)
  loop.train(tiny_config(data_dir, **overrides), resumed)
  a, b = read_params(straight, 8), read_params(resumed, 8)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  counts = np.asarray(a["loss_history"]["counts"])
  assert counts.shape == (20,) and np.all(counts == 2)  # warmed up: t was importance-sampled
  assert np.all(np.isfinite(a["loss_history"]["values"])) and np.all(
    a["loss_history"]["values"] > 0
  )


def test_sampling_is_one_program_sharded_along_the_batch(tmp_path):
  config = tiny_config(tmp_path, **{"sample.num_steps": 3})
  parts = run_lib.build(config)
  # nonzero weights everywhere (the zero-initialized output layer would make the model trivial)
  leaves, tree = jax.tree.flatten(parts.state.ema_params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  ema = tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  labels = np.arange(8) % 10
  outputs = {}
  for devices in (1, 8):
    mesh = parallel.make_mesh(devices)
    fn = generate.make_sample_fn(
      parts.model_def, parts.schedule, config, mesh, 8, codec=parts.codec, spec=parts.spec
    )
    params = jax.device_put(ema, parallel.replicated(mesh))
    # the whole sampler (3 DDIM steps, guidance) is one XLA program: no Python loop per step
    assert "while" in fn.lower(params, None, jax.random.key(0), labels).as_text()
    outputs[devices] = fn(params, None, jax.random.key(0), labels)
  assert outputs[8].sharding.spec == jax.sharding.PartitionSpec(parallel.BATCH)
  assert len(outputs[8].sharding.device_set) == 8
  # the same draws on 1 and 8 devices; only the placement differs
  np.testing.assert_allclose(outputs[8], outputs[1], rtol=1e-5, atol=1e-6)
