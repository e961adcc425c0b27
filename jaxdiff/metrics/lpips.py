"""LPIPS (Zhang et al. 2018), the learned perceptual image distance, in Flax NNX, NHWC.

The variant is the `lpips` package's `LPIPS(net='vgg', version='0.1')`, the usual choice for a
training loss (VAE reconstruction, consistency distillation): torchvision's ImageNet VGG16 conv stack,
tapped after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, and one learned non-negative 1x1 conv
per tap ("lin" layer, no bias) fitted to human similarity judgements. For images x, y in [-1, 1]:

    d(x, y) = sum over taps l of mean over pixels of lin_l((f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)²)

where f_l are the tap's features of the scaled input (x - shift) / scale and |.| is the Euclidean norm
over channels plus 1e-10. Weights keep their PyTorch names and layout in a safetensors file (written
once by `python -m jaxdiff.convert lpips`): torchvision's `features.N.weight`/`.bias` for the backbone
and lpips' `linK.model.1.weight` for the lin layers; `load_lpips` maps and transposes on load.

Everything runs in float32 at `Precision.HIGHEST` (see jaxdiff.metrics.inception), so the distance
matches the PyTorch reference in float32 and, as a loss, does not depend on the accelerator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx
from safetensors import SafetensorError

from jaxdiff import storage

VGG16_WIDTHS = (64, 128, 256, 512, 512)
# The indices in torchvision's `vgg16().features` of the 3x3 convs of each of the five stages; each
# conv is followed by a ReLU and stages 2-5 begin with a 2x2 max-pool (indices 4, 9, 16, 23). lpips
# taps the ReLU after each stage's last conv (indices 3, 8, 15, 22, 29).
CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
# lpips' ScalingLayer: ImageNet's per-channel mean and std, expressed for inputs in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
# Four 2x2 max-pools before relu5_3: smaller images leave that tap without pixels.
MIN_SIZE = 16
_HIGHEST = jax.lax.Precision.HIGHEST


def rgb(images: jax.Array) -> jax.Array:
  """NHWC images with 3 channels as they are, grey (1 channel) ones repeated to RGB, as LPIPS is
  usually applied to grey images (PIL's convert('RGB')); `LPIPS` calls it on its inputs."""
  channels = images.shape[-1]
  if channels == 1:
    return jnp.repeat(images, 3, axis=-1)
  if channels != 3:
    raise ValueError(f"LPIPS compares RGB or grey NHWC images, got {channels} channels.")
  return images


def _unit(features: jax.Array) -> jax.Array:
  """features / (|features| + 1e-10), the norm over channels, with a finite gradient everywhere.

  A pixel whose features are all zero (all ReLUs off, common in narrow layers) has norm 0, where the
  derivative of sqrt is infinite: a plain `jnp.sqrt(sum(x²))`, as in lpips, puts NaN into those
  features' gradient, which only the zero gradient of the ReLU before them then masks. Here the
  norm's gradient is taken as 0 at such pixels instead; the value is the same.
  """
  squares = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
  return features / (norm + NORM_EPS)


class LPIPS(nnx.Module):
  """LPIPS-VGG16 v0.1; `model(x, y)` -> (B,) perceptual distances of NHWC image pairs in [-1, 1].

  Images are at least 16x16, RGB or grey (see `rgb`); images in [0, 1] must be mapped by 2x - 1
  first (lpips' `normalize=True`). The distance is 0 for identical images, differentiable in both,
  and jit-able. `widths` are the channels of the five stages (VGG16's by default); another value
  gives a network of the same topology, e.g. a small one for tests.
  """

  def __init__(self, widths: Sequence[int] = VGG16_WIDTHS, *, rngs: nnx.Rngs):
    if len(widths) != len(CONV_INDICES):
      raise ValueError(f"LPIPS-VGG16 has 5 stages, got widths {tuple(widths)}.")
    self.widths = tuple(int(w) for w in widths)
    stages, cin = [], 3
    for width, indices in zip(self.widths, CONV_INDICES):
      convs = []
      for _ in indices:
        conv = nnx.Conv(cin, width, (3, 3), padding=((1, 1), (1, 1)), precision=_HIGHEST, rngs=rngs)
        convs.append(conv)
        cin = width
      stages.append(nnx.List(convs))
    self.stages = nnx.List(stages)
    self.lins = nnx.List(
      [nnx.Conv(w, 1, (1, 1), use_bias=False, precision=_HIGHEST, rngs=rngs) for w in self.widths]
    )

  def feature_maps(self, images: jax.Array) -> list[jax.Array]:
    """(B, H, W, 3) in [-1, 1] -> the five tapped ReLU outputs (relu1_2 ... relu5_3), NHWC."""
    x = (images - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)
    maps = []
    for i, stage in enumerate(self.stages):
      if i:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      for conv in stage:
        x = nnx.relu(conv(x))
      maps.append(x)
    return maps

  def layer_distances(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """(5, B): the distance's term of each tap; `__call__` is their sum."""
    x, y = rgb(jnp.asarray(x, jnp.float32)), rgb(jnp.asarray(y, jnp.float32))
    if x.shape != y.shape:
      raise ValueError(f"LPIPS compares images of one shape, got {x.shape} and {y.shape}.")
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {x.shape[1:3]}.")
    terms = []
    # One backbone pass per image batch rather than one over both concatenated: equal images then
    # get bitwise-equal features whatever conv algorithm a backend picks per batch position.
    for lin, fx, fy in zip(self.lins, self.feature_maps(x), self.feature_maps(y)):
      # Pixels of equal features differ by exactly 0: compiled, XLA fuses the normalisation into
      # the subtraction and contracts fx * (1 / |fx|) - fy * (1 / |fy|) into an FMA that rounds one
      # product only, which would leave d(x, x) ~1e-15. (The gradient is 0 there either way.)
      same = jnp.all(fx == fy, axis=-1, keepdims=True)
      diff = jnp.where(same, 0.0, jnp.square(_unit(fx) - _unit(fy)))
      terms.append(jnp.mean(lin(diff)[..., 0], axis=(1, 2)))
    return jnp.stack(terms)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    terms = self.layer_distances(x, y)
    total = terms[0]
    for term in terms[1:]:  # in lpips' order, so float32 rounding matches it
      total = total + term
    return total


def abstract_lpips(widths: Sequence[int] = VGG16_WIDTHS) -> LPIPS:
  """An LPIPS of shapes only, to be filled by `load_lpips`."""
  return nnx.eval_shape(lambda: LPIPS(widths, rngs=nnx.Rngs(0)))


def torch_name(path: tuple) -> str:
  """The torchvision / lpips state-dict name of the variable at `path` (as in nnx.to_flat_state)."""
  if path[0] == "lins":
    return f"lin{path[1]}.model.1.weight"
  _, stage, conv, leaf = path
  return f"features.{CONV_INDICES[stage][conv]}.{'weight' if leaf == 'kernel' else 'bias'}"


def expected_torch_shapes(widths: Sequence[int] = VGG16_WIDTHS) -> dict[str, tuple[int, ...]]:
  """The state-dict names and PyTorch-layout (OIHW) shapes of the LPIPS of these `widths`."""
  shapes, cin = {}, 3
  for stage, (width, indices) in enumerate(zip(widths, CONV_INDICES)):
    for index in indices:
      shapes[f"features.{index}.weight"] = (width, cin, 3, 3)
      shapes[f"features.{index}.bias"] = (width,)
      cin = width
    shapes[f"lin{stage}.model.1.weight"] = (1, width, 1, 1)
  return shapes


def _listing(names: list[str]) -> str:
  shown = ", ".join(names[:8])
  return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def check_lpips_tensors(tensors: Mapping[str, np.ndarray]) -> tuple[int, ...]:
  """The stage widths of an LPIPS-VGG16 state dict (torchvision's `features.*` and lpips'
  `lin*.model.1.weight`), after checking its names and shapes."""
  names = set(expected_torch_shapes())  # the names do not depend on the widths
  missing, unused = sorted(names - set(tensors)), sorted(set(tensors) - names)
  if missing or unused:
    raise ValueError(
      "These are not LPIPS-VGG16 weights: missing tensors "
      f"[{_listing(missing)}], unused tensors [{_listing(unused)}]."
    )
  widths = []
  for stage, _ in enumerate(CONV_INDICES):
    name = f"lin{stage}.model.1.weight"
    shape = tuple(tensors[name].shape)
    if len(shape) != 4:
      raise ValueError(f"Tensor {name} has shape {shape}, expected (1, channels, 1, 1).")
    widths.append(shape[1])
  for name, shape in expected_torch_shapes(widths).items():
    if tuple(tensors[name].shape) != shape:
      raise ValueError(f"Tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}.")
  return tuple(widths)


def _to_jax_layout(array: np.ndarray) -> np.ndarray:
  return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array  # conv OIHW -> HWIO


def lpips_from_tensors(tensors: Mapping[str, np.ndarray]) -> LPIPS:
  """The LPIPS of a state dict of numpy arrays with the names `check_lpips_tensors` accepts."""
  model = abstract_lpips(check_lpips_tensors(tensors))
  values = [
    (p, jnp.asarray(_to_jax_layout(np.asarray(tensors[torch_name(p)])), jnp.float32))
    for p, _ in nnx.to_flat_state(nnx.state(model))
  ]
  nnx.update(model, nnx.from_flat_state(values))
  return model


def load_lpips(path: str | os.PathLike) -> LPIPS:
  """LPIPS-VGG16 from a safetensors file of torchvision's and lpips' state-dict names, e.g. the one
  `python -m jaxdiff.convert lpips vgg16-397923af.pth vgg.pth DST.safetensors` writes; the widths
  are read from the tensor shapes."""
  file = storage.path(path, what="lpips.path")  # a local file or a bucket URL
  if not file.is_file():
    raise ValueError(
      f"{path} does not exist: convert torchvision's vgg16-397923af.pth and lpips' "
      "weights/v0.1/vgg.pth with `python -m jaxdiff.convert lpips BACKBONE.pth LINEAR.pth DST`."
    )
  try:
    tensors = safetensors.numpy.load(file.read_bytes())
  except SafetensorError as e:
    raise ValueError(f"{path} is not a readable safetensors file ({e}).") from e
  return lpips_from_tensors(tensors)
