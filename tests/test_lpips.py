"""jaxdiff.metrics' LPIPS against the lpips package (0.1.4, LPIPS-VGG16 v0.1), its weight loading and
the conversion from PyTorch.

tests/data/lpips_reference.npz holds lpips' distances and input gradients for a narrow VGG16 of
seeded random weights (tests/make_lpips_reference.py); the suite has no torch, so the converter's
torch.load is a stand-in here (the real one was checked with that script's --full-size files).
"""

import os
import sys

import fake_torch
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error
from safetensors.numpy import load_file, save_file

from jaxdiff.convert import convert_lpips
from jaxdiff.convert.__main__ import main
from jaxdiff.convert.torch_files import TORCH_INSTALL
from jaxdiff.metrics import LPIPS, load_lpips
from jaxdiff.metrics.lpips import expected_torch_shapes, lpips_from_tensors

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
WIDTHS = (8, 16, 16, 32, 32)
# Both sides compute in float32 from identical weights (jaxdiff at Precision.HIGHEST): what differs
# is the order of the convolutions' sums, ~1e-6 relative after 13 convs (measured: distances 5e-7,
# per-tap terms 1.2e-6, input gradients 2.7e-6). A mis-mapped or mis-transposed tensor, a wrong
# scaling constant or a missing ReLU moves the result by far more than 1e-3.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict:
  with np.load(os.path.join(DATA, "lpips_reference.npz")) as f:
    return dict(f)


@pytest.fixture(scope="module")
def tensors(reference) -> dict:
  return {k: v for k, v in reference.items() if k.startswith(("features.", "lin"))}


@pytest.fixture(scope="module")
def model(tensors) -> LPIPS:
  return lpips_from_tensors(tensors)


@pytest.fixture(scope="module")
def distance(model):
  return jax.jit(lambda x, y: model(x, y))


def test_state_dict_names_are_torchvisions_and_lpips(tensors, model):
  assert model.widths == WIDTHS
  assert {k: v.shape for k, v in tensors.items()} == expected_torch_shapes(WIDTHS)
  full = expected_torch_shapes()
  assert full["features.28.weight"] == (512, 512, 3, 3) and full["lin4.model.1.weight"][1] == 512
  assert sum(int(np.prod(s)) for s in full.values()) == 14_714_688 + 1472  # VGG16 convs + lins


@pytest.mark.parametrize("size", [32, 64])
def test_distances_match_lpips(distance, reference, size):
  out = distance(reference[f"x{size}"], reference[f"y{size}"])
  assert relative_error(out, reference[f"out{size}"]) <= TOLERANCE


def test_per_tap_terms_match_lpips(model, reference):
  terms = model.layer_distances(reference["x32"], reference["y32"])
  assert relative_error(terms, reference["layers32"]) <= TOLERANCE


def test_gradient_matches_lpips_and_is_finite(model, reference):
  grad = jax.jit(jax.grad(lambda x, y: model(x, y).sum()))
  g = grad(jnp.asarray(reference["x32"]), jnp.asarray(reference["y32"]))
  assert np.all(np.isfinite(g)) and np.linalg.norm(g) > 0
  assert relative_error(g, reference["grad32"]) <= TOLERANCE


def test_gradient_is_finite_at_pixels_without_active_features(tensors, reference):
  # relu1_2 biased off at half its pixels: their features are all 0, their norm too (lpips._unit)
  model = lpips_from_tensors({**tensors, "features.2.bias": tensors["features.2.bias"] - 3})
  x, y = jnp.asarray(reference["x32"]), jnp.asarray(reference["y32"])
  dead = np.asarray(model.feature_maps(x)[0]).max(-1) == 0
  assert 0.2 < dead.mean() < 0.8
  grad = jax.jit(jax.grad(lambda x, y: model(x, y).sum()))
  g = grad(x, y)
  assert np.all(np.isfinite(g)) and np.linalg.norm(g) > 0
  assert np.all(np.asarray(grad(x, x)) == 0)  # a perfect reconstruction: exactly 0, not NaN


def test_distance_to_itself_is_zero_and_symmetric(distance, reference):
  x, y = reference["x32"], reference["y32"]
  assert np.all(np.asarray(distance(x, x)) == 0)
  np.testing.assert_allclose(distance(y, x), distance(x, y), rtol=1e-6)


def test_grey_images_are_repeated_to_rgb(distance, reference):
  x, y = reference["x32"][..., :1], reference["y32"][..., :1]
  np.testing.assert_array_equal(distance(x, y), distance(x.repeat(3, -1), y.repeat(3, -1)))


@pytest.mark.parametrize(
  "x_shape, y_shape, match",
  [
    ((1, 32, 32, 4), (1, 32, 32, 4), "RGB or grey NHWC images, got 4 channels"),
    ((1, 32, 32, 3), (1, 32, 16, 3), "images of one shape"),
    ((1, 8, 8, 3), (1, 8, 8, 3), "at least 16x16"),
  ],
)
def test_bad_images_are_one_clear_error(model, x_shape, y_shape, match):
  with pytest.raises(ValueError, match=match):
    model(jnp.zeros(x_shape), jnp.zeros(y_shape))


def _one_sentence(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert "\n" not in message and message.endswith(".")
  return message


def test_load_lpips_round_trips_and_refuses_other_files(tensors, model, reference, tmp_path):
  path = tmp_path / "lpips.safetensors"
  save_file(tensors, path)
  loaded = load_lpips(path)
  assert loaded.widths == WIDTHS
  x, y = reference["x32"], reference["y32"]
  np.testing.assert_array_equal(loaded(x, y), model(x, y))

  save_file({k: v for k, v in tensors.items() if k != "lin4.model.1.weight"}, path)
  with pytest.raises(ValueError, match="not LPIPS-VGG16 weights") as e:
    load_lpips(path)
  assert "missing tensors [lin4.model.1.weight]" in _one_sentence(e)
  save_file({**tensors, "features.5.weight": np.zeros((16, 4, 3, 3), np.float32)}, path)
  with pytest.raises(ValueError, match=r"features.5.weight has shape \(16, 4, 3, 3\)") as e:
    load_lpips(path)
  _one_sentence(e)
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a readable safetensors"):
    load_lpips(tmp_path / "junk.safetensors")
  with pytest.raises(ValueError, match="python -m jaxdiff.convert lpips") as e:
    load_lpips(tmp_path / "absent.safetensors")
  _one_sentence(e)


def _fake_torch(monkeypatch, files: dict) -> list:
  """A stand-in `torch` whose `load` returns `files[basename]` as fake tensors (the suite has no
  PyTorch); the calls' keyword arguments are recorded."""
  calls = []

  def load(path, **kwargs):
    calls.append(kwargs)
    return {k: fake_torch.FakeTensor(v) for k, v in files[os.path.basename(path)].items()}

  monkeypatch.setitem(sys.modules, "torch", fake_torch.module(load))
  return calls


def _sources(tensors, tmp_path) -> tuple[dict, str, str]:
  backbone = {k: v for k, v in tensors.items() if k.startswith("features.")}
  backbone["classifier.0.weight"] = np.zeros((4, 8), np.float32)  # torchvision's, dropped
  files = {"vgg16.pth": backbone, "vgg.pth": {k: v for k, v in tensors.items() if k[:3] == "lin"}}
  for name in files:
    (tmp_path / name).write_bytes(b"")  # torch.load is faked: only existence is checked
  return files, str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth")


def test_convert_keeps_the_conv_stack_and_lin_layers(tensors, reference, monkeypatch, tmp_path):
  files, backbone, linear = _sources(tensors, tmp_path)
  calls = _fake_torch(monkeypatch, files)
  dst = tmp_path / "lpips.safetensors"
  assert main(["lpips", backbone, linear, str(dst)]) == 0
  assert calls == [{"map_location": "cpu", "weights_only": True}] * 2
  assert load_file(dst).keys() == tensors.keys()
  out = load_lpips(dst)(reference["x32"], reference["y32"])
  assert relative_error(out, reference["out32"]) <= TOLERANCE
  with pytest.raises(ValueError, match="already exists"):  # never overwritten
    convert_lpips(backbone, linear, dst)


def test_cli_refuses_bad_input_in_one_line(tensors, monkeypatch, tmp_path, capsys):
  files, backbone, linear = _sources(tensors, tmp_path)
  _fake_torch(monkeypatch, files)
  dst = str(tmp_path / "out.safetensors")
  for argv, message in [
    ([str(tmp_path / "absent.pth"), linear], "does not exist: pass torchvision's VGG16"),
    ([backbone, str(tmp_path / "absent.pth")], "does not exist: pass lpips' linear layers"),
    ([linear, backbone], "holds no features.* tensors"),
  ]:
    assert main(["lpips", *argv, dst]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
  files["vgg.pth"] = {k: v for k, v in files["vgg.pth"].items() if k != "lin2.model.1.weight"}
  assert main(["lpips", backbone, linear, dst]) == 1
  assert "missing tensors [lin2.model.1.weight]" in capsys.readouterr().err
  assert not os.path.exists(dst)


def test_convert_without_torch_is_one_sentence_naming_the_install(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  src = tmp_path / "vgg16.pth"
  src.write_bytes(b"")
  assert main(["lpips", str(src), str(src), str(tmp_path / "out.safetensors")]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and TORCH_INSTALL in err
