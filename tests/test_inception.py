"""jaxdiff.metrics' Inception network, FID and weight conversion against pytorch-fid 0.3.0.

tests/data/inception_reference.npz holds pytorch-fid's outputs for seeded random weights and images
(tests/make_inception_reference.py); both are regenerated here by tests/inception_fixtures.py,
without torch.
"""

import json
import os
import subprocess
import sys

import chex
import fake_torch
import jax.numpy as jnp
import numpy as np
import pytest
from inception_fixtures import IMAGE_GROUPS, feature_sets, image_groups, random_inception_weights
from numerics import relative_error
from safetensors.numpy import load_file, save_file

from jaxdiff.convert.__main__ import main
from jaxdiff.convert.torch_files import TORCH_INSTALL
from jaxdiff.metrics import (
  fid_from_features,
  images_from_uint8,
  inception_features,
  load_inception,
  preprocess,
  reference_statistics,
  sample_metrics,
)
from jaxdiff.metrics.inception import expected_torch_shapes

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GROUPS = [name for name, *_ in IMAGE_GROUPS]


@pytest.fixture(scope="module")
def reference() -> dict:
  with np.load(os.path.join(DATA, "inception_reference.npz")) as f:
    return dict(f)


@pytest.fixture(scope="module")
def weights(reference) -> dict:
  shapes = {k: tuple(v) for k, v in json.loads(str(reference["state_dict"])).items()}
  return random_inception_weights(shapes)


@pytest.fixture(scope="module")
def weights_file(weights, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("inception") / "weights.safetensors")
  save_file(weights, path)
  return path


@pytest.fixture(scope="module")
def model(weights_file):
  return load_inception(weights_file)


@pytest.fixture(scope="module")
def outputs(model) -> dict:
  # Batches of 2 for every group: one compiled network, padding exercised by the single 512 image.
  return {
    name: inception_features(model, images, batch_size=2) for name, images in image_groups().items()
  }


def test_state_dict_names_and_shapes_are_pytorch_fids(reference):
  shapes = json.loads(str(reference["state_dict"]))
  assert {k: tuple(v) for k, v in shapes.items()} == expected_torch_shapes()
  assert sum(int(np.prod(s)) for s in shapes.values()) == 23_885_392


@pytest.mark.parametrize("group", GROUPS)
def test_resize_matches_torch_interpolate(reference, group):
  # Up (48, 64 -> 299), identity (299) and down (512 -> 299, no antialiasing) sampling positions.
  images = image_groups()[group][:1]
  ours = (np.asarray(preprocess(images_from_uint8(images)))[0, ::6, ::6] + 1) / 2
  np.testing.assert_allclose(ours, reference[f"resized_{group}"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("group", GROUPS)
def test_features_and_logits_match_pytorch_fid(model, outputs, reference, group):
  features, logits = outputs[group]
  n = len(image_groups()[group])
  chex.assert_shape([features, logits], [(n, 2048), (n, 1008)])
  # The random weights must give informative activations, or agreement would prove little.
  assert np.isfinite(features).all() and 0.5 < features.std() < 10
  assert (features == 0).mean() < 0.5
  # Both sides compute in float32 from identical weights through ~100 layers; only summation order
  # differs (measured ~5e-7 relative). The subtlest FID patch, average pools that count padded
  # zeros, already gives 4e-2.
  assert relative_error(features, reference[f"features_{group}"]) <= 1e-4
  assert relative_error(logits, reference[f"logits_{group}"]) <= 1e-4
  biased = np.asarray(model.fc(jnp.asarray(features)))
  assert relative_error(biased, reference[f"biased_logits_{group}"]) <= 1e-4


@pytest.mark.parametrize("name", ["full_rank", "rank_deficient"])
def test_frechet_distance_matches_pytorch_fid(reference, name):
  ours = fid_from_features(*feature_sets()[name])
  # float64 on both sides (measured ~1e-13 full rank, ~9e-9 rank deficient, where scipy's sqrtm is
  # the less accurate one).
  assert abs(ours / reference[f"fd_{name}"] - 1) <= 1e-3


def test_end_to_end_fid_matches_pytorch_fid(outputs, reference):
  # 4 images per side: rank-3 covariances in 2048 dimensions, the regime where sqrtm of Σ1Σ2 is
  # most fragile; pytorch-fid's result was finite without its eps fallback (measured ~2e-6 apart).
  ours = fid_from_features(outputs["up64"][0], outputs["up48"][0])
  assert ours > 1 and abs(ours / reference["fid_up64_up48"] - 1) <= 1e-3


def test_reference_statistics_are_cached_and_sample_metrics_run(model, tmp_path):
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
  calls = []

  def images():
    calls.append(1)
    return grey

  first = reference_statistics(tmp_path, "grey16", images, model=model, batch_size=2)
  again = reference_statistics(tmp_path, "grey16", images, model=model, batch_size=2)
  assert len(calls) == 1 and sorted(os.listdir(tmp_path)) == ["grey16.npz"]
  chex.assert_trees_all_equal(first, again)
  # A grey image is its RGB version with three equal channels (PIL's convert('RGB')).
  rgb, _ = inception_features(model, np.repeat(grey, 3, axis=-1), batch_size=2)
  np.testing.assert_allclose(first.features, rgb, rtol=1e-6)

  metrics = sample_metrics(model, grey, first, batch_size=2, splits=2)
  assert metrics["fid"] == pytest.approx(0, abs=1e-6 * np.trace(first.sigma))
  assert metrics["precision"] == metrics["recall"] == 1
  assert metrics["inception_score"] >= 1
  with pytest.raises(ValueError, match="plain file name"):
    reference_statistics(tmp_path, "../escape", grey, model=model)


def test_load_reports_missing_unused_and_misshaped_tensors(weights, tmp_path):
  path = str(tmp_path / "bad.safetensors")
  bad = dict(weights)
  bad["extra.weight"] = bad.pop("fc.bias")
  save_file(bad, path)
  with pytest.raises(
    ValueError, match=r"missing tensors \[fc.bias\], unused tensors \[extra.weight\]"
  ):
    load_inception(path)
  bad = {**weights, "fc.bias": np.zeros(1000, np.float32)}
  save_file(bad, path)
  with pytest.raises(ValueError, match=r"fc.bias has shape \(1000,\), expected \(1008,\)"):
    load_inception(path)
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a readable safetensors"):
    load_inception(tmp_path / "junk.safetensors")
  with pytest.raises(ValueError, match="pytorch-fid-inception"):
    load_inception(tmp_path / "absent.safetensors")


def test_convert_loads_weights_only_and_drops_step_counters(weights, monkeypatch, tmp_path):
  calls = []

  def load(path, **kwargs):
    calls.append(kwargs)
    state = {k: fake_torch.FakeTensor(v) for k, v in weights.items()}
    state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = fake_torch.FakeTensor(
      np.array(0, np.int64)
    )
    return state

  monkeypatch.setitem(sys.modules, "torch", fake_torch.module(load))
  src, dst = tmp_path / "pt_inception.pth", tmp_path / "inception.safetensors"
  src.write_bytes(b"")
  assert main(["pytorch-fid-inception", str(src), str(dst)]) == 0
  assert calls == [{"map_location": "cpu", "weights_only": True}]
  converted = load_file(dst)
  assert converted.keys() == weights.keys()
  np.testing.assert_array_equal(
    converted["Conv2d_1a_3x3.conv.weight"], weights["Conv2d_1a_3x3.conv.weight"]
  )
  # An existing output is never overwritten.
  assert main(["pytorch-fid-inception", str(src), str(dst)]) == 1


def test_convert_without_torch_is_one_sentence_naming_the_install(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  src = tmp_path / "pt_inception.pth"
  src.write_bytes(b"")
  assert main(["pytorch-fid-inception", str(src), str(tmp_path / "out.safetensors")]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and TORCH_INSTALL in err
  assert not (tmp_path / "out.safetensors").exists()


def test_importing_jaxdiff_never_imports_torch():
  code = "import sys, jaxdiff.convert, jaxdiff.metrics; sys.exit('torch' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_eval_mode_scores_samples_with_inception_weights(weights_file, tmp_path):
  from test_train import tiny_config

  from jaxdiff import data, evaluation
  from jaxdiff.train import loop

  data_dir = tmp_path / "tfds"
  data.ensure_digits_prepared(str(data_dir))
  reference = tmp_path / "reference_batch.npz"
  np.savez(reference, arr_0=seeded_uint8(6))
  config = tiny_config(
    data_dir,
    **{
      "train.num_steps": 2,
      "eval.bits_per_dim": False,
      "eval.num_samples": 10,  # IS takes 10 splits
      "eval.inception_weights": weights_file,
      "eval.reference_batch": str(reference),
    },
  )
  loop.train(config, tmp_path / "run")
  result = evaluation.evaluate(config, tmp_path / "run")
  assert result["eval_samples"] == 10 and "eval_bpd" not in result
  assert result["fid"] > 0 and result["inception_score"] >= 1.0
  assert 0.0 <= result["precision"] <= 1.0 and 0.0 <= result["recall"] <= 1.0
  assert (tmp_path / "run" / "reference_stats" / "reference_batch.npz").exists()  # cached
  # a reference batch of precomputed mu/sigma only (as guided-diffusion ships some): the same
  # samples give the same FID; precision/recall need the reference's features and are left out
  with np.load(tmp_path / "run" / "reference_stats" / "reference_batch.npz") as cached:
    np.savez(tmp_path / "stats_only.npz", mu=cached["mu"], sigma=cached["sigma"])
  config.eval.reference_batch = str(tmp_path / "stats_only.npz")
  again = evaluation.evaluate(config, tmp_path / "run")
  np.testing.assert_allclose(again["fid"], result["fid"], rtol=1e-9)  # float64, same inputs
  assert again["inception_score"] == result["inception_score"] and "precision" not in again


def seeded_uint8(count):
  return np.random.default_rng(0).integers(0, 256, (count, 16, 16, 1), dtype=np.uint8)
