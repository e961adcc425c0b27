"""A CPU-sized stand-in for Inception on the digits default: a small MLP trained by jaxdiff.

FID needs Inception features, which mean nothing for 16×16 digits and cost minutes per thousand
images on a CPU. For the embedded digits config, `--mode=eval` instead fits a one-hidden-layer
MLP (64 ReLU units) on the digits *test* split, which the diffusion model never trains on, and
reports the Fréchet distance between Gaussians fitted to that hidden layer's features of the
samples and of the training split: the "digits classifier Fréchet distance". It ranks models on
this dataset at equal N and nothing else; it is not FID and not comparable with published numbers.
The fit is deterministic (fixed seed, full-batch Adam, fixed step count) and takes seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiff.data import digits

HIDDEN = 64
STEPS = 1500
SEED = 0


class DigitsMLP(nnx.Module):
  """256 pixels/255 → 64 ReLU units (the features) → 10 logits."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(256, HIDDEN, rngs=rngs)
    self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

  def features(self, images_uint8):
    x = jnp.asarray(images_uint8, jnp.float32).reshape(images_uint8.shape[0], -1) / 255.0
    return jax.nn.relu(self.hidden(x))

  def __call__(self, images_uint8):
    return self.out(self.features(images_uint8))


def digits_split(split: str):
  """(uint8 images (N, 16, 16, 1), labels) of a split of jaxdiff's `digits`, without TFDS."""
  from sklearn.datasets import load_digits

  source = load_digits()
  rows = digits.split_indices()[split]
  return digits.digits_uint8_16x16(source.images[rows]), source.target[rows].astype(np.int32)


def train_classifier(images, labels, *, steps: int = STEPS, seed: int = SEED) -> DigitsMLP:
  """Full-batch Adam (lr 1e-2, weight decay 1e-4) on softmax cross-entropy."""
  model = DigitsMLP(rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-2, weight_decay=1e-4), wrt=nnx.Param)
  images, labels = jnp.asarray(images), jnp.asarray(labels)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      logits = model(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(steps):
    step(model, optimizer)
  return model


class DigitsFeatures:
  """The classifier fit on the test split and the training split's features, computed once."""

  def __init__(self):
    test_images, test_labels = digits_split("test")
    self.model = train_classifier(test_images, test_labels)
    train_images, self.train_labels = digits_split("train")
    self.train_accuracy = float(np.mean(self.predict(train_images) == self.train_labels))
    self.train_features = self.features(train_images)

  def features(self, images_uint8) -> np.ndarray:
    return np.asarray(self.model.features(_as_digits(images_uint8)), np.float64)

  def predict(self, images_uint8) -> np.ndarray:
    return np.asarray(jnp.argmax(self.model(_as_digits(images_uint8)), -1))


def _as_digits(images_uint8):
  images = np.asarray(images_uint8)
  if images.shape[1:] == (32, 32, 1) and images.dtype == np.uint8:
    # the 32×32 digits of latent runs (data.image_size=32): 2×2 means back to the 16×16 grid
    images = np.round(images.reshape(-1, 16, 2, 16, 2, 1).mean(axis=(2, 4))).astype(np.uint8)
  if images.shape[1:] != (16, 16, 1) or images.dtype != np.uint8:
    raise ValueError(
      f"the digits classifier takes uint8 images of shape (N, 16, 16, 1) or (N, 32, 32, 1), got "
      f"{images.dtype} "
      f"{images.shape}."
    )
  return images
