"""Stacked digits, the mode-collapse benchmark: the `stacked_digits` builder (built on first use
like `digits`), the mode counter (jaxdiff/metrics/modes.py), configs/stacked_digits.py through the
front door, and the one-sentence refusal of a model with the wrong channel count."""

import json
import math
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from test_describe import run_main

from jaxdiff import config as config_lib
from jaxdiff import data, evaluation, metrics, parallel
from jaxdiff import run as run_lib
from jaxdiff.data import digits, stacked_digits
from jaxdiff.metrics import digits_classifier, modes
from jaxdiff.train.step import make_train_fn

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "stacked_digits.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """`stacked_digits` built through the data layer's table, as a run's first read builds it."""
  path = str(tmp_path_factory.mktemp("tfds"))
  data.prepare_if_built("stacked_digits", path)
  return path


@pytest.fixture(scope="module")
def counter():
  """One fit of the digits classifier (seconds) for every test here."""
  return modes.ModeCounter(digits_classifier.DigitsFeatures())


# --- the builder ------------------------------------------------------------------------------


def test_examples_are_three_digits_of_the_same_split_stacked_with_label_100a_10b_c(data_dir):
  sk = load_digits()
  pixels = digits.digits_uint8_16x16(sk.images)
  rows_of = digits.split_indices()
  for split, size in stacked_digits.SPLIT_SIZES.items():
    source = tfds.data_source("stacked_digits", split=split, data_dir=data_dir, download=False)
    assert len(source) == size
    rows = stacked_digits.triples(split)
    assert rows.shape == (size, 3) and set(rows.ravel()) <= set(rows_of[split])  # its own split
    for i in (0, 1, size // 2, size - 1):  # stored in key order: example i is triple i
      example = source[i]
      assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
      for k in range(3):
        np.testing.assert_array_equal(example["image"][..., k], pixels[rows[i, k], ..., 0])
      a, b, c = sk.target[rows[i]]
      assert example["label"] == 100 * a + 10 * b + c
  # train and test share no image; the draw is a fixed function of the seed
  assert not set(stacked_digits.triples("train").ravel()) & set(rows_of["test"])
  np.testing.assert_array_equal(stacked_digits.triples("test"), stacked_digits.triples("test"))
  builder = data.ensure_stacked_digits_prepared(data_dir)
  assert builder.info.features["label"].num_classes == 1000


def test_the_pipeline_reads_it_and_the_data_table_knows_both_built_datasets(data_dir):
  assert {n: (b.channels, b.num_classes) for n, b in data.BUILT_DATASETS.items()} == {
    "digits": (1, 10),
    "stacked_digits": (3, 1000),
  }
  batch = next(
    iter(
      data.make_dataset(
        name="stacked_digits", split="test", batch_size=8, data_dir=data_dir,
        random_flip=False, seed=0, shuffle=False,
      )
    )
  )  # fmt: skip
  images, labels = stacked_digits.stacked_split("test")
  np.testing.assert_allclose(batch["image"], images[:8] / 127.5 - 1.0, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], labels[:8])


# --- the mode counter -------------------------------------------------------------------------


def test_kl_to_uniform_and_coverage_match_their_closed_forms():
  one = modes.mode_statistics(np.full(10_000, 417))
  assert one["modes"] == 1 and one["num_samples"] == 10_000
  assert one["kl_to_uniform"] == pytest.approx(math.log(1000), rel=1e-12)
  uniform = modes.mode_statistics(np.tile(np.arange(1000), 10))
  assert uniform["modes"] == 1000 and uniform["kl_to_uniform"] == pytest.approx(0, abs=1e-12)
  half = modes.mode_statistics(np.repeat(np.arange(500), 3))  # 500 modes, equally often
  assert half["modes"] == 500 and half["kl_to_uniform"] == pytest.approx(math.log(2), rel=1e-12)
  # KL(p || U) = ln K − H(p)
  counts = np.random.default_rng(0).integers(0, 5, 1000)
  p = counts[counts > 0] / counts.sum()
  assert metrics.kl_to_uniform(counts) == pytest.approx(math.log(1000) + np.sum(p * np.log(p)))
  with pytest.raises(ValueError, match="mode ids"):
    modes.mode_statistics(np.array([0, 1000]))


def test_the_classifier_per_channel_recovers_the_real_triples(counter):
  # The classifier is fit on digits' test split: stacked test triples are its own training
  # images, stacked train triples are held out and score its held-out digits accuracy per channel
  # (measured: 0.9463 on digits' train split; per channel here 0.946, 0.946, 0.946; 0.847 a triple)
  accuracy = counter.classifier.train_accuracy
  assert 0.93 < accuracy < 0.96
  for split, expected in (("test", 1.0), ("train", accuracy)):
    images, labels = stacked_digits.stacked_split(split)
    images, labels = images[:10_000], labels[:10_000]
    for k in range(3):
      digit = (labels // 10 ** (2 - k)) % 10
      hit = np.mean(counter.classifier.predict(images[..., k : k + 1]) == digit)
      assert hit == pytest.approx(expected, abs=0.01), (split, k)
    found = counter.modes(images)
    np.testing.assert_array_equal(found, counter.modes(images / 127.5 - 1.0))  # [-1, 1] floats
    assert np.mean(found == labels) == pytest.approx(expected**3, abs=0.02)
    # real data covers (nearly) every mode at N = 10,000; counting noise alone gives KL ≈ 0.05
    score = counter(images)
    assert score["modes"] >= 995 and score["kl_to_uniform"] < 0.1, score
  assert counter.real_floor(10_000) == counter(stacked_digits.stacked_split("train")[0][:10_000])
  assert counter.real_floor(50_001) is None
  with pytest.raises(ValueError, match=r"\(N, 16, 16, 3\), got \(2, 16, 16, 1\)"):
    counter.modes(np.zeros((2, 16, 16, 1), np.uint8))


def test_eval_reports_modes_and_kl_for_stacked_digits(counter, monkeypatch):
  monkeypatch.setattr(modes, "DigitsFeatures", lambda: counter.classifier)  # the fit, once
  collapsed = np.repeat(stacked_digits.stacked_split("test")[0][:1], 200, axis=0)
  scores = evaluation._WITHOUT_INCEPTION["stacked_digits"](collapsed)
  assert scores["modes"] == 1 and scores["modes_kl_to_uniform"] == pytest.approx(math.log(1000))
  assert scores["modes_real"] > 150 and scores["modes_kl_to_uniform_real"] < 2
  assert "nats" in scores["modes_note"]
  json.dumps(scores)  # eval prints and appends them as one JSON line


# --- the config, through the front door -------------------------------------------------------


def test_cli_describes_the_unconditional_three_channel_model(tmp_path):
  result = run_main(tmp_path, "--mode=describe", f"--config={CONFIG}")
  assert result.returncode == 0, result.stderr
  info = json.loads(result.stdout.strip().splitlines()[-1])
  assert info["image_shape"] == info["diffusion_shape"] == [16, 16, 3]
  assert info["num_classes"] is None and "unconditional" in result.stdout
  assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


def test_a_one_channel_model_on_stacked_digits_is_one_sentence_before_any_work(tmp_path):
  result = run_main(
    tmp_path,
    f"--config={REPO / 'configs' / 'digits.py'}",
    "--config.data.name=stacked_digits",
    f"--workdir={tmp_path / 'work'}",
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip() == (
    "error: data.name='stacked_digits' has 3 channels but data.channels=1; set "
    "--config.data.channels=3."
  )
  assert list(tmp_path.iterdir()) == []  # no workdir, no dataset built


def test_config_is_the_digits_recipe_unconditional_and_its_train_step_traces(data_dir):
  config = config_lib.load_file(CONFIG)
  recipe = config_lib.load_file(REPO / "configs" / "digits.py")
  for key in ("model", "diffusion", "optim", "train"):
    differs = {k for k in config[key] if config[key][k] != recipe[key][k]}
    assert differs <= {"class_conditional", "class_dropout"}, (key, differs)
  assert not config.model.class_conditional and config.sample.guidance_scale == 1.0
  assert config.eval.num_samples >= 10_000
  config.data.data_dir = data_dir
  config.train.num_devices = 1
  # a conditional model would need 1000 classes: one sentence, not labels past its table
  wrong = config_lib.load_file(CONFIG)
  wrong.model.class_conditional, wrong.data.num_classes = True, 10
  with pytest.raises(ValueError, match=r"has 1000 classes but data\.num_classes=10 with"):
    config_lib.validate(wrong)
  # real batches through run.make_dataset; the step of the real network traced on them
  batch = next(iter(run_lib.make_dataset(config, "train", batch_size=2)))
  assert set(batch) == {"image"} and batch["image"].shape == (2, 16, 16, 3)
  mesh = parallel.make_mesh(1)
  built = []

  def build_state():
    built.append(run_lib.build(config))
    return built[0].state

  state = jax.eval_shape(build_state)
  fn = make_train_fn(mesh, state, steps_per_call=1, **built[0].step_kwargs())
  host = {"image": batch["image"][None]}
  global_batch = data.make_global_batch(host, parallel.stacked_batch_sharded(mesh))
  _, out = jax.eval_shape(fn, state, global_batch, None)
  assert out["loss"].shape == (1,)


def test_the_stacked_digits_gan_in_bf16_runs_every_mode_on_two_processes_as_on_one(
  tmp_path, data_dir
):
  """The GAN through the front door as a cluster runs it: 2 processes × 4 devices, bfloat16
  activations, parameters split in 2 (FSDP); train with its grid, sample, eval (modes and KL on
  the eval samples) equal to one process of 8 devices."""
  from cluster import every_mode, same_as_one_process

  config = REPO / "configs" / "stacked_digits_gan.py"
  overrides = {
    "data.data_dir": data_dir,
    "data.batch_size": 16,
    "model.latent_dim": 8,
    "model.generator_channels": 16,
    "model.discriminator_channels": 8,
    "train.num_steps": 4,
    "train.steps_per_call": 2,
    "train.checkpoint_every": 4,
    "train.log_every": 2,
    "train.sample_every": 4,
    "train.fsdp": 2,
    "train.compute_dtype": "bfloat16",
    "sample.num_samples": 12,
    "sample.batch_size": 6,
    "eval.num_samples": 12,
  }
  npz, result = every_mode(config, tmp_path / "run", overrides)
  assert np.load(npz)["arr_0"].shape == (12, 16, 16, 3)
  assert result["eval_samples"] == 12 and 1 <= result["modes"] <= 12
  same_as_one_process(config, overrides, tmp_path / "run", tmp_path, npz, result)
