"""jaxdiff.models.layers.GroupNorm: the closed-form backward against references, and where it runs.

The forward is checked against a float64 NumPy group norm written from the definition, the
gradients against autodiff of Flax's own `nnx.GroupNorm` (an independent implementation). The
closed form (jaxdiff.cpu.group_norm) runs on CPU only: programs lowered for GPU and TPU, and CPU
programs with it switched off, hold autodiff's backward.
Tolerances: float32 results agree to ~1e-7 relative (a few dozen ops of rounding, summation order
differs), so 1e-5 leaves margin without hiding a wrong term (a missing term is an O(1) error);
bfloat16 compute keeps 8 mantissa bits, ~4e-3 per rounding, so 2e-2.
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import relative_error

from jaxdiff import cpu
from jaxdiff.cpu import group_norm as cpu_group_norm
from jaxdiff.models.layers import GroupNorm, group_norm

C, G = 64, 8


def _pair(dtype, **kwargs):
  """(ours, Flax's) with the same random non-trivial scale and bias."""
  mods = [
    cls(
      C,
      num_groups=G,
      epsilon=1e-5,
      use_fast_variance=False,
      dtype=dtype,
      rngs=nnx.Rngs(0),
      **kwargs,
    )
    for cls in (GroupNorm, nnx.GroupNorm)
  ]
  k1, k2 = jax.random.split(jax.random.key(1))
  for m in mods:
    m.scale[...] = 1 + 0.3 * jax.random.normal(k1, (C,))
    m.bias[...] = 0.3 * jax.random.normal(k2, (C,))
  return mods


def _input(dtype, shape=(3, 8, 8, C)):
  # A mean far from 0 next to the spread: what the two-pass variance is for.
  return (3.0 + 2.0 * jax.random.normal(jax.random.key(2), shape)).astype(dtype)


def _numpy_group_norm(x, scale, bias, eps):
  x = np.asarray(x, np.float64)
  b = x.shape[0]
  grouped = x.reshape(b, -1, G, C // G)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  y = ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


@pytest.mark.parametrize("shape", [(3, 8, 8, C), (2, 5, C), (4, 2, 3, 3, C)])
def test_forward_matches_the_definition(shape):
  ours, _ = _pair(jnp.float32)
  x = _input(jnp.float32, shape)
  want = _numpy_group_norm(x, ours.scale[...], ours.bias[...], 1e-5)
  assert relative_error(jax.jit(lambda x: ours(x))(x), want) < 1e-5


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_gradients_match_autodiff_of_flax_group_norm(dtype, tol, closed_form, monkeypatch):
  monkeypatch.setattr(cpu.settings, "group_norm_backward", closed_form)
  ours, flax_gn = _pair(dtype)
  x = _input(dtype)
  w = jax.random.normal(jax.random.key(3), x.shape)

  def loss(m, x):
    return jnp.sum(m(x).astype(jnp.float32) * w)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  (g_ours, gx_ours), (g_flax, gx_flax) = grad(ours, x), grad(flax_gn, x)
  assert ours(x).dtype == flax_gn(x).dtype == dtype
  assert gx_ours.dtype == dtype
  assert relative_error(ours(x), flax_gn(x)) < tol
  assert relative_error(gx_ours, gx_flax) < tol
  assert relative_error(g_ours.scale[...], g_flax.scale[...]) < tol
  assert relative_error(g_ours.bias[...], g_flax.bias[...]) < tol


def test_gradient_is_orthogonal_to_what_normalization_removes():
  """For scale 1 and bias 0, y's group mean is 0 and its group mean square is var/(var + eps):
  shifting a group's inputs or scaling them changes neither, so the gradients of sum(y * w) for
  a w constant within each group (the mean path) and of sum(y^2) (the variance path) vanish, up
  to eps/var ~ 1e-6. Dropping either term of dx leaves an O(1) gradient."""
  gn = group_norm(C, groups=G, eps=1e-5, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = _input(jnp.float32)
  w = jnp.repeat(jax.random.normal(jax.random.key(4), (x.shape[0], 1, 1, G)), C // G, axis=-1)
  for loss in (lambda x: jnp.sum(gn(x) * w), lambda x: jnp.sum(gn(x) ** 2)):
    gx = jax.grad(loss)(x)
    assert float(jnp.abs(gx).max()) < 1e-4


def test_masked_and_fast_variance_calls_fall_back_to_flax():
  x = _input(jnp.float32)
  mask = jax.random.bernoulli(jax.random.key(5), 0.7, x.shape)
  ours, flax_gn = _pair(jnp.float32)
  assert relative_error(ours(x, mask=mask), flax_gn(x, mask=mask)) < 1e-6
  ours, flax_gn = (
    cls(C, num_groups=G, use_fast_variance=True, rngs=nnx.Rngs(0))
    for cls in (GroupNorm, nnx.GroupNorm)
  )
  np.testing.assert_array_equal(ours(x), flax_gn(x))


def test_backward_sums_over_positions_are_dots_on_cpu():
  """The reason for the class (see its docstring): on CPU, no position reduction is left to XLA's
  reduce loop in the backward; the platform switch is resolved at compile time."""
  gn = group_norm(C, groups=G, eps=1e-5, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = _input(jnp.float32)
  hlo = jax.jit(jax.grad(lambda x: jnp.sum(gn(x) ** 2))).lower(x).compile().as_text()
  assert "conditional(" not in hlo
  assert hlo.count(" dot(") >= 2


def _grad_ops(platform: str, definition: bool = False) -> collections.Counter:
  """The StableHLO ops of d/dx sum(GroupNorm(x)^2) lowered for `platform` (no device needed); with
  `definition`, of autodiff through jaxdiff.cpu.group_norm.forward instead of the module."""
  gn = group_norm(C, groups=G, eps=1e-5, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = _input(jnp.float32)

  def y(x):
    if definition:
      flat = x.reshape(x.shape[0], -1, C)
      return cpu_group_norm.forward(flat, gn.scale[...], gn.bias[...], 1e-5, G).reshape(x.shape)
    return gn(x)

  grad = jax.jit(jax.grad(lambda x: jnp.sum(y(x) ** 2)))
  text = jax.export.export(grad, platforms=(platform,))(x).mlir_module()
  return collections.Counter(re.findall(r"stablehlo\.\w+", text))


# What the platform switch itself adds to a lowered program: a `case` on the platform index (one
# branch left once the platform is known), its returns and the index's constants.
_SWITCH_OPS = (
  "stablehlo.case",
  "stablehlo.return",
  "stablehlo.constant",
  "stablehlo.broadcast_in_dim",
)


def _arithmetic(ops: collections.Counter) -> collections.Counter:
  return collections.Counter({op: n for op, n in ops.items() if op not in _SWITCH_OPS})


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_gpu_and_tpu_programs_hold_autodiffs_backward(platform):
  """The closed form was measured on CPU only; elsewhere its dots must not replace autodiff."""
  ops = _grad_ops(platform)
  assert "stablehlo.dot_general" not in ops
  assert _arithmetic(ops) == _arithmetic(_grad_ops(platform, definition=True))


def test_switched_off_the_cpu_program_is_autodiffs(monkeypatch):
  assert _grad_ops("cpu")["stablehlo.dot_general"] == 2  # on by default: the two position sums
  monkeypatch.setattr(cpu.settings, "group_norm_backward", False)
  assert _grad_ops("cpu") == _grad_ops("cpu", definition=True)
  monkeypatch.setattr(cpu.settings, "group_norm_backward", None)
  monkeypatch.setenv(cpu.GROUP_NORM_ENV, "0")
  assert "stablehlo.dot_general" not in _grad_ops("cpu")
