"""Make the lpips reference data that tests/test_lpips.py checks `jaxdiff.metrics.LPIPS` against.

Run from the repository root with a PyTorch environment (never needed by jaxdiff itself):

    pip install torch torchvision lpips==0.1.4
    python tests/make_lpips_reference.py

The reference is the lpips package's own `LPIPS(net='vgg', version='0.1')` (built with
pnet_rand=True: no VGG16 download), its VGG16 layers then swapped, index by index, for the layers of
a narrow VGG16 (torchvision's `make_layers` on VGG16's configuration with widths `WIDTHS`, so
lpips' slicing by torchvision index is unchanged) and its lin layers for seeded random ones of those
widths. tests/data/lpips_reference.npz then holds:

- `features.N.weight`/`.bias`, `linK.model.1.weight`: that network's state dict under torchvision's
  and lpips' names, in PyTorch layout;
- `x32`, `y32` (3, 32, 32, 3) and `x64`, `y64` (1, 64, 64, 3): NHWC image pairs in [-1, 1];
- `out32`, `out64`: lpips' distances (normalize=False), flattened to (B,);
  `layers32`: its five per-tap terms (5, B) (retPerLayer=True);
- `grad32`: the gradient of sum(out32) with respect to x32, NHWC.

`--full-size DIR` instead writes DIR/vgg16_random.pth (torchvision's full VGG16 with random
weights), and DIR/full_size.npz with 64x64 pairs and the distances of lpips with that backbone and
the package's trained lin layers (lpips/weights/v0.1/vgg.pth): the hand check that those files
convert with `python -m jaxdiff.convert lpips DIR/vgg16_random.pth .../vgg.pth DST` and give lpips'
distances with `jaxdiff.metrics.load_lpips(DST)`.
"""

from __future__ import annotations

import argparse
import os

import lpips
import numpy as np
import torch
import torchvision

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
WIDTHS = (8, 16, 16, 32, 32)
# lpips' slices of torchvision's vgg16().features: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG16_STAGES = (2, 2, 3, 3, 3)


def _nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _nhwc(tensor: torch.Tensor) -> np.ndarray:
  return tensor.detach().numpy().transpose(0, 2, 3, 1)


def tiny_lpips(widths=WIDTHS, seed: int = 0) -> tuple[lpips.LPIPS, dict[str, np.ndarray]]:
  """lpips' LPIPS-VGG with a seeded random narrow backbone and lin layers; and its state dict."""
  torch.manual_seed(seed)
  model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
  cfg = []
  for width, convs in zip(widths, VGG16_STAGES):
    cfg += [width] * convs + ["M"]
  features = torchvision.models.vgg.make_layers(cfg)
  with torch.no_grad():
    for layer in features:
      if isinstance(layer, torch.nn.Conv2d):
        # He init keeps the activations' scale through the 13 layers, so every tap contributes;
        # nonzero biases so that their mapping is checked too.
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        layer.bias.normal_(0.0, 0.1)
  for k, (start, stop) in enumerate(SLICES):
    part = getattr(model.net, f"slice{k + 1}")
    assert list(part._modules) == [str(i) for i in range(start, stop)]
    for i in range(start, stop):
      part._modules[str(i)] = features[i]
  state = {f"features.{k}": v for k, v in features.state_dict().items()}
  for k, width in enumerate(widths):
    lin = torch.nn.Conv2d(width, 1, 1, bias=False)
    with torch.no_grad():
      lin.weight.copy_(torch.rand(1, width, 1, 1))  # lpips' trained lin weights are >= 0
    assert model.lins[k] is getattr(model, f"lin{k}")
    model.lins[k].model[1] = lin
    state[f"lin{k}.model.1.weight"] = lin.weight
  model.eval()
  return model, {k: v.detach().numpy().copy() for k, v in state.items()}


def image_pairs(rng: np.random.Generator, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """NHWC pairs in [-1, 1]: the first pair independent, the others a noisy copy (small distances)."""
  x = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  y = np.clip(x + 0.2 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  y[0] = rng.uniform(-1, 1, (size, size, 3))
  return x, y


def reference() -> dict[str, np.ndarray]:
  model, state = tiny_lpips()
  rng = np.random.default_rng(0)
  x32, y32 = image_pairs(rng, 3, 32)
  x64, y64 = image_pairs(rng, 1, 64)
  x = _nchw(x32).requires_grad_(True)
  out32, layers = model(x, _nchw(y32), retPerLayer=True)
  out32.sum().backward()
  with torch.no_grad():
    out64 = model(_nchw(x64), _nchw(y64))
  layers32 = np.stack([v.detach().numpy().reshape(-1) for v in layers])
  print("per-tap terms (32x32):\n", layers32)
  return {
    **state,
    "x32": x32,
    "y32": y32,
    "out32": out32.detach().numpy().reshape(-1),
    "layers32": layers32,
    "grad32": _nhwc(x.grad),
    "x64": x64,
    "y64": y64,
    "out64": out64.numpy().reshape(-1),
  }


def full_size(directory: str) -> None:
  torch.manual_seed(1)
  backbone = torchvision.models.vgg16(weights=None)
  path = os.path.join(directory, "vgg16_random.pth")
  torch.save(backbone.state_dict(), path)
  model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
  for k, (start, stop) in enumerate(SLICES):
    part = getattr(model.net, f"slice{k + 1}")
    for i in range(start, stop):
      part._modules[str(i)] = backbone.features[i]
  model.eval()
  x, y = image_pairs(np.random.default_rng(1), 3, 64)
  with torch.no_grad():
    out = model(_nchw(x), _nchw(y)).numpy().reshape(-1)
  np.savez(os.path.join(directory, "full_size.npz"), x=x, y=y, out=out)
  linear = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
  print(f"wrote {path} and full_size.npz; lpips' lin layers: {linear}; distances {out}")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full-size", metavar="DIR", help="write the full-size hand check to DIR")
  args = parser.parse_args()
  if args.full_size:
    full_size(args.full_size)
  else:
    data, path = reference(), os.path.join(DATA, "lpips_reference.npz")
    np.savez(path, **data)
    print(f"wrote {path}: {sum(v.nbytes for v in data.values())} bytes")
