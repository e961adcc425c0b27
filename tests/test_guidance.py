"""Classifier-free guidance against its defining combination."""

import jax
import jax.numpy as jnp
import numpy as np
from numerics import relative_error

from jaxdiff import guidance

NULL = 10


def conditional_model(x, t, y):
  """A model whose output depends on the label in a way easy to write down: x·(1 + y) + t."""
  return x * (1.0 + y[:, None, None, None]) + t[:, None, None, None]


def test_scale_one_is_conditional_and_zero_unconditional():
  x = jax.random.normal(jax.random.key(0), (3, 2, 2, 4))
  t = jnp.array([5, 6, 7])
  y = jnp.array([1, 2, 3])
  cond = conditional_model(x, t, y)
  uncond = conditional_model(x, t, jnp.full((3,), NULL))
  g1 = guidance.classifier_free(conditional_model, y, guidance_scale=1.0, null_label=NULL)
  # uncond + s·(cond − uncond) rounds once per op in float32 (values up to ~10): ~1e-7 relative.
  assert relative_error(g1(x, t), cond) < 1e-6
  g0 = guidance.classifier_free(conditional_model, y, guidance_scale=0.0, null_label=NULL)
  assert relative_error(g0(x, t), uncond) < 1e-6
  g4 = guidance.classifier_free(conditional_model, y, guidance_scale=4.0, null_label=NULL)
  assert relative_error(g4(x, t), uncond + 4.0 * (cond - uncond)) < 1e-6


def test_unguided_channels_come_from_the_conditional_half():
  x = jax.random.normal(jax.random.key(1), (2, 2, 2, 4))
  t, y = jnp.array([1, 2]), jnp.array([4, 4])
  cond = conditional_model(x, t, y)
  g = guidance.classifier_free(
    conditional_model, 4, guidance_scale=3.0, null_label=NULL, num_guided_channels=2
  )
  out = g(x, t)
  np.testing.assert_allclose(out[..., 2:], cond[..., 2:], rtol=1e-6)
  assert not np.allclose(out[..., :2], cond[..., :2])
