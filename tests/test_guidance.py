"""Classifier-free guidance against its defining combination."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def rescaled_reference(cond, guided, phi):
  """diffusers' rescale_noise_cfg in NumPy float64: the sample std (torch.std's) per example."""
  axes = tuple(range(1, cond.ndim))
  std_cond = cond.std(axis=axes, ddof=1, keepdims=True)
  std_guided = guided.std(axis=axes, ddof=1, keepdims=True)
  return phi * guided * (std_cond / std_guided) + (1 - phi) * guided


def test_guidance_rescale_matches_closed_form():
  x = jax.random.normal(jax.random.key(2), (3, 4, 4, 6))
  t, y = jnp.array([5, 6, 7]), jnp.array([1, 2, 3])
  cond = np.asarray(conditional_model(x, t, y), np.float64)
  uncond = np.asarray(conditional_model(x, t, jnp.full((3,), NULL)), np.float64)
  guided = uncond[..., :4] + 7.5 * (cond[..., :4] - uncond[..., :4])
  for phi in (0.7, 1.0):
    g = guidance.classifier_free(
      conditional_model,
      y,
      guidance_scale=7.5,
      null_label=NULL,
      num_guided_channels=4,
      guidance_rescale=phi,
    )
    out = np.asarray(g(x, t), np.float64)
    # Only the guided channels are rescaled, by the stds of those channels alone; float32 means
    # and stds over 64 values round to ~1e-7.
    assert relative_error(out[..., :4], rescaled_reference(cond[..., :4], guided, phi)) < 1e-6
    np.testing.assert_array_equal(out[..., 4:], cond[..., 4:])
  # φ = 1 gives the guided channels the conditional ones' std, example by example.
  np.testing.assert_allclose(
    out[..., :4].std(axis=(1, 2, 3)), cond[..., :4].std(axis=(1, 2, 3)), rtol=1e-6
  )


def test_guidance_rescale_zero_is_plain_guidance_and_range_is_checked():
  x = jax.random.normal(jax.random.key(3), (2, 2, 2, 4))
  t, y = jnp.array([1, 2]), jnp.array([4, 5])
  run = lambda **kw: guidance.classifier_free(
    conditional_model, y, guidance_scale=3.0, null_label=NULL, **kw
  )(x, t)
  np.testing.assert_array_equal(run(guidance_rescale=0.0), run())
  for phi in (-0.1, 1.5):
    with pytest.raises(ValueError, match=r"guidance_rescale must lie in \[0, 1\]"):
      run(guidance_rescale=phi)
