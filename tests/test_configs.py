"""Every shipped config builds its real architecture, reads (mock) data of its dataset, and its train
step traces on it."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdiff import config as config_lib
from jaxdiff import data, parallel
from jaxdiff import run as run_lib
from jaxdiff.config import default_config, validate
from jaxdiff.train.step import make_train_fn

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def load(name):
  return config_lib.load_file(CONFIGS / f"{name}.py")


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.py")))
def test_config_shares_the_schema_and_validates(name):
  config = load(name)
  validate(config)
  # the model section holds the keys of the config's own network (models/table.py)
  default = default_config(arch=config.model.arch)
  assert set(config.keys()) == set(default.keys())
  for section in config.keys():
    if hasattr(config[section], "keys"):
      assert set(config[section].keys()) == set(default[section].keys()), section


def test_cifar10_is_the_ddpm_model():
  config = load("cifar10")
  shapes = jax.eval_shape(lambda: run_lib.build(config).state)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes.params))
  assert count == 35_746_307  # google/ddpm-cifar10-32


@pytest.mark.parametrize("name", ["cifar10", "imagenet64", "mnist"])
def test_config_reads_its_dataset_and_its_train_step_traces(name):
  # The dataset's (mock) batches go through the real pipeline; the train step of the config's
  # full-size network is traced on them with shapes only (jax.eval_shape: nothing compiled, as
  # compiling the CIFAR/ImageNet networks here took a minute each while the digits configs'
  # steps are compiled and run by the other tests).
  config = load(name)
  config.data.batch_size = 2
  config.train.num_devices = 1
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = data.make_dataset(
      name=config.data.name,
      split=config.data.split,
      batch_size=2,
      image_size=config.data.image_size,
      random_flip=config.data.random_flip,
      seed=0,
    )
    batch = next(iter(dataset))
  d = config.data
  assert batch["image"].shape == (2, d.image_size, d.image_size, d.channels)
  assert (
    batch["image"].dtype == np.float32 and -1 <= batch["image"].min() <= batch["image"].max() <= 1
  )
  mesh = parallel.make_mesh(1)
  built = []  # the run's components, built while tracing: their state is shapes only

  def build_state():
    built.append(run_lib.build(config))
    return built[0].state

  state = jax.eval_shape(build_state)
  fn = make_train_fn(mesh, state, steps_per_call=1, **built[0].step_kwargs())
  host = {k: v[None] for k, v in batch.items() if k == "image" or config.model.class_conditional}
  global_batch = data.make_global_batch(host, parallel.stacked_batch_sharded(mesh))
  new_state, metrics = jax.eval_shape(fn, state, global_batch, None)
  assert metrics["loss"].shape == (1,) and metrics["loss"].dtype == np.float32
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state.params) == jax.tree.map(
    lambda a: (a.shape, a.dtype), state.params
  )


def test_guidance_needs_a_class_conditional_model():
  # Classifier-free guidance mixes conditional and null-label predictions: an unconditional model
  # would be sampled unguided without a word, so the config check refuses the scale.
  config = load("digits")
  validate(config)  # conditional, guided at 1.5
  config.model.class_conditional = False
  config.sample.guidance_scale = 3.0
  with pytest.raises(ValueError) as error:
    validate(config)
  assert str(error.value) == (
    "sample.guidance_scale=3.0 needs a class-conditional model (model.class_conditional=True); "
    "set sample.guidance_scale=1.0 for an unconditional one."
  )
  config.sample.guidance_scale = 1.0
  validate(config)
  # a network that is no denoiser (the autoencoder) samples by itself: guidance is refused too,
  # without pointing at model.class_conditional, which the autoencoder refuses
  vae = load("digits_vae")
  vae.sample.guidance_scale = 2.0
  no_effect = r"^sample\.guidance_scale=2\.0 has no effect on model\.arch='autoencoder'.*=1\.0\.$"
  with pytest.raises(ValueError, match=no_effect):
    validate(vae)


def test_cli_refuses_guidance_of_an_unconditional_model_before_any_work(tmp_path):
  # --mode=sample validates the config before it looks for a checkpoint or makes the workdir
  workdir = tmp_path / "work"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxdiff.main",
      "--mode=sample",
      f"--config={CONFIGS / 'digits.py'}",
      f"--workdir={workdir}",
      f"--config.data.data_dir={tmp_path / 'data'}",
      "--config.model.class_conditional=False",
      "--config.sample.guidance_scale=3.0",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ),
    check=False,
  )
  assert result.returncode == 1, result.stderr
  assert result.stderr == (
    "error: sample.guidance_scale=3.0 needs a class-conditional model "
    "(model.class_conditional=True); set sample.guidance_scale=1.0 for an unconditional one.\n"
  )
  assert not workdir.exists() and not (tmp_path / "data").exists()
