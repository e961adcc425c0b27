"""The FID InceptionV3 (TensorFlow's 2015-12-05 graph) in Flax NNX, NHWC, as pytorch-fid ports it.

FID, Inception Score and precision/recall are only comparable across papers when computed with this
one network. pytorch-fid 0.3.0 (`pytorch_fid/inception.py`) ports the graph onto torchvision's
Inception3 with four changes, reproduced here: the average pools of Mixed_5b-d, Mixed_6b-e and
Mixed_7b ignore padded zeros (TensorFlow's `count_include_pad=False`), Mixed_7c pools with a max
instead of an average, the classifier has 1008 outputs, and BatchNorm uses eps = 1e-3. Module names
follow torchvision (`Mixed_5b.branch1x1.conv`, `.bn`), so a pytorch-fid state dict maps by name.

Everything runs in float32 at `Precision.HIGHEST`: by default GPUs and TPUs run float32 convs and
matmuls as TF32 / bfloat16 passes, which would no longer match the float32 reference.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx
from safetensors import SafetensorError

from jaxdiff import storage

INPUT_SIZE = 299
FEATURES = 2048
NUM_CLASSES = 1008
_HIGHEST = jax.lax.Precision.HIGHEST

# nnx leaf name -> PyTorch state-dict leaf name.
_TORCH_LEAVES = {
  "kernel": "weight",
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
}


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else v


class BasicConv2d(nnx.Module):
  """Conv (no bias) -> BatchNorm with running statistics, eps 1e-3 -> ReLU."""

  def __init__(self, cin: int, cout: int, kernel, *, stride: int = 1, padding=0, rngs: nnx.Rngs):
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(
      cin,
      cout,
      _pair(kernel),
      strides=stride,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=_HIGHEST,
      rngs=rngs,
    )
    self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.bn(self.conv(x)))


def _max_pool(x: jax.Array, *, stride: int, padding: int = 0) -> jax.Array:
  pads = ((padding, padding), (padding, padding))
  return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=pads)


def _avg_pool_tf(x: jax.Array) -> jax.Array:
  # TensorFlow divides by the number of real pixels in the window, not by 9, at the border.
  return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class InceptionA(nnx.Module):
  """35x35 block (Mixed_5b-d), FID variant: border-aware average pool."""

  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    pool = self.branch_pool(_avg_pool_tf(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, pool], axis=-1)


class InceptionB(nnx.Module):
  """35x35 -> 17x17 reduction (Mixed_6a)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, _max_pool(x, stride=2)], axis=-1)


class InceptionC(nnx.Module):
  """17x17 block with factorised 7x7 convs (Mixed_6b-e), FID variant: border-aware average pool."""

  def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for conv in (
      self.branch7x7dbl_1,
      self.branch7x7dbl_2,
      self.branch7x7dbl_3,
      self.branch7x7dbl_4,
      self.branch7x7dbl_5,
    ):
      d = conv(d)
    pool = self.branch_pool(_avg_pool_tf(x))
    return jnp.concatenate([self.branch1x1(x), b7, d, pool], axis=-1)


class InceptionD(nnx.Module):
  """17x17 -> 8x8 reduction (Mixed_7a)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(b7)))
    return jnp.concatenate([b3, b7, _max_pool(x, stride=2)], axis=-1)


class InceptionE(nnx.Module):
  """8x8 block with split 1x3/3x1 branches: Mixed_7b pools with a border-aware average, Mixed_7c
  with a 3x3 max (a quirk of the TensorFlow graph that FID depends on)."""

  def __init__(self, cin: int, *, max_pool: bool, rngs: nnx.Rngs):
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = _max_pool(x, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
    return jnp.concatenate(
      [
        self.branch1x1(x),
        self.branch3x3_2a(b3),
        self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(d),
        self.branch3x3dbl_3b(d),
        self.branch_pool(pooled),
      ],
      axis=-1,
    )


def preprocess(images: jax.Array) -> jax.Array:
  """NHWC images in [0, 1], any size, 1 or 3 channels -> the network's 299x299x3 input in [-1, 1].

  The resize is bilinear with half-pixel centres and no antialiasing: `F.interpolate(mode='bilinear',
  align_corners=False)` as in pytorch-fid, to float32 rounding whether it enlarges or shrinks
  (measured: at most 2e-7 apart for 32- to 1024-pixel inputs).
  Shrinking (e.g. 512 -> 299) thus reads only the 2x2 input pixels around each output pixel and
  ignores the rest, aliasing high frequencies exactly as pytorch-fid does. (TensorFlow's original
  graph resized without half-pixel centres and scaled by x/128 - 1 on [0, 255]: pytorch-fid, and so
  jaxdiff, differ from it slightly.) Grey images are repeated to RGB, as PIL's convert('RGB').
  """
  images = jnp.asarray(images, jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  shape = (images.shape[0], INPUT_SIZE, INPUT_SIZE, images.shape[-1])
  images = jax.image.resize(images, shape, "bilinear", antialias=False, precision=_HIGHEST)
  return 2 * images - 1


def images_from_uint8(images: np.ndarray | jax.Array) -> jax.Array:
  """uint8 NHWC in [0, 255] (jaxdiff's and guided-diffusion's sample npz) -> float32 in [0, 1], the
  input of `InceptionV3`; x / 255 in float32, as pytorch-fid's ToTensor()."""
  if images.dtype != np.uint8:
    raise ValueError(
      f"Expected uint8 images, got {images.dtype}: pass values in [0, 255] as uint8."
    )
  return jnp.asarray(images).astype(jnp.float32) / 255


class InceptionV3(nnx.Module):
  """The FID Inception network; `model(images)` -> (pool features (B, 2048), logits (B, 1008)).

  `images` are NHWC in [0, 1] of any size (see `preprocess`). The logits are `features @ fc.kernel`
  without `fc.bias`: the original Inception Score code (improved-gan) and guided-diffusion's
  evaluator take the graph's softmax/logits/MatMul, before the bias, so published IS values use
  these. `model.fc(features)` gives the network's biased logits.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)
    self.fc = nnx.Linear(FEATURES, NUM_CLASSES, precision=_HIGHEST, rngs=rngs)

  def pool_features(self, x: jax.Array) -> jax.Array:
    """(B, 299, 299, 3) in [-1, 1] (the output of `preprocess`) -> (B, 2048) pool_3 features."""
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool(x, stride=2)
    x = _max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), stride=2)
    for block in (
      self.Mixed_5b,
      self.Mixed_5c,
      self.Mixed_5d,
      self.Mixed_6a,
      self.Mixed_6b,
      self.Mixed_6c,
      self.Mixed_6d,
      self.Mixed_6e,
      self.Mixed_7a,
      self.Mixed_7b,
      self.Mixed_7c,
    ):
      x = block(x)
    return x.mean(axis=(1, 2))

  def logits(self, features: jax.Array) -> jax.Array:
    """The unbiased 1008 logits that the Inception Score is defined on (see the class docstring)."""
    return jnp.matmul(features, self.fc.kernel[...], precision=_HIGHEST)

  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    features = self.pool_features(preprocess(images))
    return features, self.logits(features)


def abstract_inception() -> InceptionV3:
  """An InceptionV3 of shapes only (no random init, which takes half a minute on CPU)."""
  return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))


def torch_name(path: tuple) -> str:
  """The pytorch-fid state-dict name of the variable at `path` (as in nnx.to_flat_state)."""
  *modules, leaf = (str(p) for p in path)
  return ".".join([*modules, _TORCH_LEAVES[leaf]])


def _to_jax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # conv OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:  # linear (out, in) -> (in, out)
    return array.T
  return array


def _listing(names: list[str]) -> str:
  shown = ", ".join(names[:8])
  return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


@functools.cache
def _torch_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
  # Traced once per process: building even the abstract network takes seconds.
  flat = nnx.to_flat_state(nnx.state(abstract_inception()))
  shapes = {}
  for path, var in flat:
    shape = tuple(var.shape)
    if len(shape) == 4:
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif len(shape) == 2:
      shape = shape[::-1]
    shapes[torch_name(path)] = shape
  return tuple(shapes.items())


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
  """pytorch-fid's state-dict names and PyTorch-layout shapes, without the BatchNorm step counters."""
  return dict(_torch_shapes())


def check_inception_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The tensors of a pytorch-fid state dict that the network uses, checked for names and shapes;
  the BatchNorm `num_batches_tracked` counters (unused at inference) are dropped."""
  tensors = {k: v for k, v in tensors.items() if not k.endswith(".num_batches_tracked")}
  expected = expected_torch_shapes()
  missing, unused = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
  if missing or unused:
    raise ValueError(
      "These are not pytorch-fid's FID Inception weights: missing tensors "
      f"[{_listing(missing)}], unused tensors [{_listing(unused)}]."
    )
  for name, shape in expected.items():
    if tuple(tensors[name].shape) != shape:
      raise ValueError(f"Tensor {name} has shape {tensors[name].shape}, expected {shape}.")
  return tensors


def load_inception(path: str | os.PathLike) -> InceptionV3:
  """The FID InceptionV3 from a safetensors file with pytorch-fid's state-dict names, e.g. the one
  `python -m jaxdiff.convert pytorch-fid-inception` writes from pt_inception-2015-12-05-6726825d.pth."""
  file = storage.path(path, what="eval.inception_weights")  # a local file or a bucket URL
  if not file.is_file():
    raise ValueError(
      f"{path} does not exist: convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with "
      "`python -m jaxdiff.convert pytorch-fid-inception SRC.pth DST.safetensors`."
    )
  try:
    tensors = check_inception_tensors(safetensors.numpy.load(file.read_bytes()))
  except SafetensorError as e:
    raise ValueError(f"{path} is not a readable safetensors file ({e}).") from e
  model = abstract_inception()
  values = [
    (p, jnp.asarray(_to_jax_layout(tensors[torch_name(p)]), jnp.float32))
    for p, _ in nnx.to_flat_state(nnx.state(model))
  ]
  nnx.update(model, nnx.from_flat_state(values))
  return model
