"""Make the pytorch-fid reference data that tests/test_inception.py checks `jaxdiff.metrics` against.

Run from the repository root with a PyTorch environment (never needed by jaxdiff itself):

    pip install torch==2.13.0 torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu
    pip install pytorch-fid==0.3.0 scipy numpy
    python tests/make_inception_reference.py

The real weights file cannot be fetched here, so pytorch-fid's own `InceptionV3` (FID blocks, resize,
input scaling) is built with the seeded random weights of tests/inception_fixtures.py, handed to it
in place of the download; the state-dict names and shapes it accepts are stored too, so the test
also checks jaxdiff's naming. For the images of `IMAGE_GROUPS` (read as x / 255, as pytorch-fid's
ToTensor) it writes tests/data/inception_reference.npz with:

- `state_dict`: JSON {name: shape} of pytorch-fid's FID Inception (without num_batches_tracked);
- `features_G`, `logits_G`, `biased_logits_G`: pool_3 features, `features @ fc.weight.T` (the
  Inception Score's logits) and `fc(features)`, per image group G;
- `resized_G`: its first image after pytorch-fid's F.interpolate to 299x299, every 6th row/column;
- `fd_S`: pytorch-fid's `calculate_frechet_distance` of the mean/covariance of feature set pair S;
- `fid_up64_up48`: the FID between image groups up64 and up48 through the whole pipeline.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from inception_fixtures import feature_sets, image_groups, random_inception_weights

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _import_torchvision() -> torch.library.Library | None:
  """PyPI's torchvision wheels are CUDA builds whose C++ ops cannot load next to a CPU-only torch;
  torchvision 0.28 then fails at import registering fake kernels for two of those ops. Declaring
  their schemas first lets the pure-Python model code, all pytorch-fid needs, import. The returned
  Library must stay alive while torchvision is used."""
  try:
    importlib.import_module("torchvision")
    return None
  except RuntimeError:
    for module in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
      del sys.modules[module]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    importlib.import_module("torchvision")
    return lib


def _state_dict_shapes(inception_module) -> dict[str, tuple[int, ...]]:
  net = inception_module._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  return {
    k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")
  }


def _to_torch(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


def main() -> None:
  torch.set_num_threads(2)
  schemas = _import_torchvision()  # noqa: F841 — kept alive until main returns
  from pytorch_fid import inception
  from pytorch_fid.fid_score import calculate_frechet_distance

  shapes = _state_dict_shapes(inception)
  weights = random_inception_weights(shapes)
  state = {k: torch.from_numpy(v) for k, v in weights.items()}
  inception.load_state_dict_from_url = lambda *args, **kwargs: state
  model = inception.InceptionV3([inception.InceptionV3.DEFAULT_BLOCK_INDEX]).eval()
  fc_weight, fc_bias = state["fc.weight"], state["fc.bias"]

  out = {"state_dict": np.array(json.dumps(shapes))}
  features = {}
  with torch.no_grad():
    for name, images in image_groups().items():
      x = _to_torch(images)
      pool = model(x)[0][:, :, 0, 0]
      features[name] = pool.numpy()
      out[f"features_{name}"] = pool.numpy()
      out[f"logits_{name}"] = (pool @ fc_weight.T).numpy()
      out[f"biased_logits_{name}"] = F.linear(pool, fc_weight, fc_bias).numpy()
      resized = F.interpolate(x[:1], size=(299, 299), mode="bilinear", align_corners=False)
      out[f"resized_{name}"] = resized[0].permute(1, 2, 0).numpy()[::6, ::6]
      logits = torch.from_numpy(out[f"logits_{name}"])
      print(
        f"{name}: features mean {pool.mean():.3f} std {pool.std():.3f}, zero fraction "
        f"{(pool == 0).float().mean():.2f}, std over images {pool.std(0, correction=0).mean():.3f}; "
        f"|logits| {logits.abs().mean():.2f}, max softmax {logits.softmax(1).max(1).values.mean():.2f}"
      )

  def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.mean(x, axis=0), np.cov(x, rowvar=False)

  for name, (x1, x2) in feature_sets().items():
    out[f"fd_{name}"] = np.float64(calculate_frechet_distance(*stats(x1), *stats(x2)))
  out["fid_up64_up48"] = np.float64(
    calculate_frechet_distance(*stats(features["up64"]), *stats(features["up48"]))
  )
  print({k: float(v) for k, v in out.items() if k.startswith("f") and np.ndim(v) == 0})
  np.savez_compressed(os.path.join(DATA, "inception_reference.npz"), **out)


if __name__ == "__main__":
  main()
