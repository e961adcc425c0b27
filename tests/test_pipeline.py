"""The pipeline's seams: one generation path, objectives with extra parameter sets, codecs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import data_dir, read_params, tiny_config  # noqa: F401 — data_dir is a fixture

from jaxdiff import codecs, diffusion, evaluation, objectives, sampling
from jaxdiff import run as run_lib
from jaxdiff.checkpoint import abstract
from jaxdiff.models import unet
from jaxdiff.objectives import Objective, ObjectiveEntry
from jaxdiff.train import loop


def test_eval_draws_the_first_samples_of_sample_mode(tmp_path, data_dir):  # noqa: F811
  config = tiny_config(data_dir, **{"train.num_steps": 2, "sample.batch_size": 8})
  config.sample.num_samples = 16  # two batches, so batch b's key and label offset matter
  workdir = tmp_path / "run"
  loop.train(config, workdir)
  written = np.load(sampling.sample(config, workdir))["arr_0"]
  config.eval.num_samples = 12
  run = run_lib.setup(config, workdir)
  step, state, _ = run.checkpointer.restore_latest(abstract(run.state), with_data=False)
  drawn = evaluation.draw_samples(config, run, state, step)
  run.checkpointer.close()
  assert drawn.shape == (12, 16, 16, 1)
  np.testing.assert_array_equal(drawn, written[:12])
  assert len(np.unique(written.reshape(16, -1), axis=0)) == 16  # not one image repeated


# A toy objective with two extra parameter sets: a frozen teacher (the initial network) whose
# output the model also regresses on, and a target network that follows the parameters as an EMA.
def _teacher_objective(config, schedule):
  def loss(key, networks, x0, *, t=None, weights=None):
    total, per_example = diffusion.mse_loss(key, networks["model"], x0, schedule=schedule)
    x = x0 + 0.1
    t = jnp.full((x0.shape[0],), 500)
    pull = jnp.mean(jnp.square(networks["model"](x, t) - networks["teacher"](x, t)))
    drift = jnp.mean(jnp.square(networks["target"](x, t) - networks["teacher"](x, t)))
    return total + pull, per_example, {"target_drift": drift}

  def init_extra(params):
    return {"teacher": jax.tree.map(jnp.copy, params), "target": jax.tree.map(jnp.copy, params)}

  def update_extra(extra, params, step):
    target = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, extra["target"], params)
    return {**extra, "target": target}

  return Objective(loss, init_extra=init_extra, update_extra=update_extra)


def test_extra_parameter_sets_resume_bit_exactly_under_fsdp(tmp_path, data_dir, monkeypatch):  # noqa: F811
  monkeypatch.setitem(objectives.OBJECTIVES, "teacher_toy", ObjectiveEntry(_teacher_objective))
  # the tiny U-Net (one resolution: its compile is most of the test's time), 4 steps, resumed at 2
  overrides = {
    "diffusion.loss": "teacher_toy",
    "train.num_devices": 8,
    "train.fsdp": 8,
    "train.num_steps": 4,
  }
  straight = tmp_path / "straight"
  final = loop.train(tiny_config(data_dir, **overrides), straight)
  resumed = tmp_path / "resumed"
  loop.train(tiny_config(data_dir, **{**overrides, "train.num_steps": 2}), resumed)
  loop.train(tiny_config(data_dir, **overrides), resumed)
  a, b = read_params(straight, 4), read_params(resumed, 4)
  assert set(a["extra"]) == {"teacher", "target"}
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # the teacher stays the initial network; the target moved towards the trained parameters
  initial = run_lib.build(tiny_config(data_dir, **overrides)).state.params
  jax.tree.map(np.testing.assert_array_equal, final.extra["teacher"], initial)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  assert not np.array_equal(flat(final.extra["target"]), flat(initial))
  kernel = final.extra["target"]["down_blocks"][0]["resnets"][0]["conv1"]["kernel"][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
  last = (straight / "metrics.jsonl").read_text().splitlines()[-1]
  assert "target_drift" in last


def test_a_run_without_extras_checkpoints_what_it_always_did(tmp_path, data_dir):  # noqa: F811
  workdir = tmp_path / "run"
  loop.train(tiny_config(data_dir, **{"train.num_steps": 2}), workdir)
  assert set(read_params(workdir, 2)) == {"step", "params", "ema_params", "opt_state", "rng"}


def _patch_codec():
  """An exactly invertible toy latent codec: 2×2 space-to-depth, so (16, 16, 1) → (8, 8, 4)."""
  return codecs.Codec(
    encode=lambda params, images, key: unet.space_to_depth(images, 2) * params["scale"],
    decode=lambda params, latents: unet.depth_to_space(latents / params["scale"], 2),
    latent_shape=lambda size, channels: (size // 2, channels * 4),
    pixel_space=False,
    params={"scale": jnp.asarray(2.0)},
  )


def test_a_latent_codec_is_used_by_training_sampling_and_eval(tmp_path, data_dir, monkeypatch):  # noqa: F811
  monkeypatch.setitem(codecs.CODECS, "patches", lambda config: _patch_codec())
  config = tiny_config(data_dir, **{"codec.name": "patches", "train.num_steps": 2})
  run = run_lib.setup(config, tmp_path / "shapes")
  assert dataclasses.asdict(run.spec)["in_channels"] == 4 and run.spec.image_size == 8
  conv_in = run.state.params["conv_in"]["kernel"][...]
  assert conv_in.shape[2] == 4 * 2 * 2  # latent channels × the U-Net's own 2×2 patches
  run.checkpointer.close()
  workdir = tmp_path / "run"
  loop.train(config, workdir)
  images = np.load(sampling.sample(config, workdir))["arr_0"]
  assert images.shape == (8, 16, 16, 1)  # decoded back to data space
  with pytest.raises(run_lib.RunError, match="latent space of codec 'patches'"):
    evaluation.evaluate(config, workdir)


class _PixelMLP(nnx.Module):
  """A toy network: a per-pixel MLP of (x, t), conditioned on nothing else."""

  def __init__(self, channels: int, width: int, out_channels: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(channels + 1, width, rngs=rngs)
    self.out = nnx.Linear(width, out_channels, rngs=rngs)

  def __call__(self, x, t, y=None):
    t = jnp.broadcast_to(t.astype(x.dtype)[:, None, None, None] / 1000, x.shape[:-1] + (1,))
    return self.out(nnx.silu(self.hidden(jnp.concatenate([x, t], -1))))


@dataclasses.dataclass(frozen=True)
class _PixelMLPConfig:
  width: int = 16


def _build_pixel_mlp(config, spec, rngs):
  out = spec.in_channels * (2 if spec.learn_sigma else 1)
  return _PixelMLP(spec.in_channels, config.width, out, rngs=rngs)


def test_a_new_network_is_one_table_entry(tmp_path, data_dir, monkeypatch):  # noqa: F811
  from jaxdiff import config as config_lib
  from jaxdiff import models, parallel
  from jaxdiff.train.step import make_train_fn

  entry = models.table.Architecture(_PixelMLP, _PixelMLPConfig, _build_pixel_mlp)
  monkeypatch.setitem(models.ARCHITECTURES, "pixel_mlp", entry)
  config = config_lib.default_config(arch="pixel_mlp")
  # the model section holds the shared keys and the network's own, no U-Net key
  assert set(config.model.keys()) == {*models.table.COMMON, "width"}
  config.model.width = 8
  config.data.data_dir = str(data_dir)
  config_lib.validate(config)
  parts = run_lib.build(config)
  assert models.parameter_count(parts.state.params) == (1 + 1) * 8 + 8 + 8 * 1 + 1
  mesh = parallel.make_mesh(1)
  fn = make_train_fn(mesh, parts.state, steps_per_call=1, **parts.step_kwargs())
  batch = {"image": np.zeros((1, 8, 16, 16, 1), np.float32), "label": np.zeros((1, 8), np.int32)}
  state, metrics = fn(parts.state, jax.device_put(batch), None)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"][0]))
  # a U-Net config that names the new network is refused: its model keys are the U-Net's
  unet_config = tiny_config(data_dir, **{"model.arch": "pixel_mlp"})
  with pytest.raises(ValueError, match=r"foreign: \['attention_resolutions'"):
    config_lib.validate(unet_config)
