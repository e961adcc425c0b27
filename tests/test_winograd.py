"""Winograd 3x3 convolutions (jaxdiff.cpu.winograd) against the direct convolution's definition
in float64 NumPy, the choice of where they run, and jaxdiff.cpu's switch (off by default)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import relative_error

from jaxdiff import cpu
from jaxdiff.cpu import winograd
from jaxdiff.models import layers

NHWC = ("NHWC", "HWIO", "NHWC")


def correlate(x, w):
  """y[n, h, w, d] = sum_{i, j, c} xp[n, h + i, w + j, c] w[i, j, c, d], xp zero-padded by one."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  _, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(
    np.einsum("nhwc,cd->nhwd", xp[:, i : i + h, j : j + wd], w[i, j])
    for i in range(3)
    for j in range(3)
  )


def correlate_grads(x, w, dy):
  """The closed-form gradients of sum(correlate(x, w) * dy) with respect to x and w."""
  x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
  _, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dxp = np.zeros_like(xp)
  dw = np.zeros_like(w)
  for i in range(3):
    for j in range(3):
      dw[i, j] = np.einsum("nhwc,nhwd->cd", xp[:, i : i + h, j : j + wd], dy)
      dxp[:, i : i + h, j : j + wd] += np.einsum("nhwd,cd->nhwc", dy, w[i, j])
  return dxp[:, 1:-1, 1:-1], dw


def data(shape_x, out_channels, seed=0):
  kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
  cin = shape_x[-1]
  x = jax.random.normal(kx, shape_x, jnp.float32)
  w = jax.random.normal(kw, (3, 3, cin, out_channels), jnp.float32) / np.sqrt(9 * cin)
  dy = jax.random.normal(kg, shape_x[:3] + (out_channels,), jnp.float32)
  return x, w, dy


# Sizes that are not multiples of the tile (the last tile is partly padding), non-square images.
SHAPES = [(2, 9, 13, 5), (1, 8, 8, 16), (3, 6, 11, 4), (1, 1, 2, 3)]


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_the_direct_correlation(m, shape):
  x, w, _ = data(shape, 7)
  y = jax.jit(winograd.winograd_conv3x3, static_argnums=2)(x, w, m)
  assert y.shape == shape[:3] + (7,)
  # float32 rounding through the transforms: F(2x2) ~5e-7, F(4x4) (constants up to 8 and 1/24)
  # ~3e-6 relative; 2e-5 leaves room for the sizes and seeds here.
  assert relative_error(y, correlate(x, w)) < 2e-5


@pytest.mark.parametrize("m", winograd.TILES)
def test_custom_vjp_gives_the_convolutions_gradients(m):
  x, w, dy = data((2, 10, 7, 6), 5, seed=1)
  y, vjp = jax.vjp(lambda x, w: winograd.conv3x3_winograd(x, w, m), x, w)
  dx, dw = jax.jit(vjp)(dy)
  ref_dx, ref_dw = correlate_grads(x, w, dy)
  assert relative_error(y, correlate(x, w)) < 2e-5
  assert (
    relative_error(dx, ref_dx) < 1e-5
  )  # XLA's direct input / filter gradients: float32 rounding
  assert relative_error(dw, ref_dw) < 1e-5


def test_each_tile_reproduces_the_published_transform_identity():
  """One tile, one channel: A^T[(G g G^T) * (B^T d B)]A equals the 3x3 correlation of d with g
  (Lavin & Gray's identity), for the matrices as stored; a mistyped coefficient fails here."""
  rng = np.random.default_rng(2)
  for m, (bt, g, at) in winograd._MATRICES.items():
    bt, g, at = (np.array(a, np.float64) for a in (bt, g, at))
    d = rng.standard_normal((m + 2, m + 2))
    k = rng.standard_normal((3, 3))
    y = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i : i + 3, j : j + 3] * k) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def lowered(fn, *args, platform="cpu") -> str:
  """The StableHLO ops of fn lowered for `platform` (no device of that kind needed)."""
  text = jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()
  return " ".join(re.findall(r"stablehlo\.\w+", text))


def dispatched(x, w, **kw):
  return lambda x, w: cpu.conv_general_dilated(
    x, w, kw.get("strides", (1, 1)), kw.get("padding", ((1, 1), (1, 1))), dimension_numbers=NHWC
  )


@pytest.fixture
def winograd_on(monkeypatch):
  monkeypatch.setattr(cpu.settings, "winograd", True)


def test_tile_size_policy():
  assert winograd.tile_size(32, 32, 128, 128) == 4
  assert winograd.tile_size(16, 16, 512, 256) == 4
  assert winograd.tile_size(8, 8, 256, 256) == 2
  assert winograd.tile_size(16, 8, 256, 256) == 2  # the smaller side decides
  assert winograd.tile_size(4, 4, 256, 256) == 0
  assert winograd.tile_size(32, 32, 64, 256) == 0
  assert winograd.tile_size(32, 32, 128, 3) == 0  # conv_out of an RGB model


def test_off_by_default_and_the_switch_turns_it_on(monkeypatch):
  """Its compile time and memory (jaxdiff/cpu/__init__.py) make Winograd opt-in. Each lowering is
  of a new function: the switch is read when tracing, and jit would reuse an old trace."""
  monkeypatch.delenv(cpu.WINOGRAD_ENV, raising=False)
  x, w, _ = data((2, 16, 16, 128), 128)
  assert not cpu.winograd_enabled()
  text = lowered(dispatched(x, w), x, w)
  assert "stablehlo.convolution" in text and "stablehlo.dot_general" not in text
  for value, on in [("1", True), ("on", True), ("0", False)]:
    monkeypatch.setenv(cpu.WINOGRAD_ENV, value)
    assert cpu.winograd_enabled() == on
    assert ("stablehlo.convolution" not in lowered(dispatched(x, w), x, w)) == on, value
  monkeypatch.setattr(cpu.settings, "winograd", False)  # settings win over the environment
  monkeypatch.setenv(cpu.WINOGRAD_ENV, "1")
  assert "stablehlo.convolution" in lowered(dispatched(x, w), x, w)
  monkeypatch.setattr(cpu.settings, "winograd", True)
  monkeypatch.setenv(cpu.WINOGRAD_ENV, "0")
  assert lowered(dispatched(x, w), x, w).count("stablehlo.dot_general") == 36 + 1


def test_cpu_uses_winograd_where_it_pays_and_the_convolution_elsewhere(winograd_on):
  x, w, _ = data((2, 16, 16, 128), 128)
  fn = dispatched(x, w)
  text = lowered(fn, x, w)
  # F(4x4): one product per point of the 6x6 tile, and one for the kernel transform.
  assert "stablehlo.convolution" not in text
  assert text.count("stablehlo.dot_general") == 36 + 1
  x8, w8, _ = data((2, 8, 8, 128), 128)
  assert lowered(fn, x8, w8).count("stablehlo.dot_general") == 16 + 1  # F(2x2): 4x4
  assert relative_error(jax.jit(fn)(x, w), correlate(x, w)) < 2e-5

  small, w_small, _ = data((2, 16, 16, 64), 64)
  assert "stablehlo.convolution" in lowered(fn, small, w_small)  # too few channels
  tiny, w_tiny, _ = data((2, 4, 4, 256), 256)
  assert "stablehlo.convolution" in lowered(fn, tiny, w_tiny)  # too small an image
  bf16 = (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert "stablehlo.convolution" in lowered(fn, *bf16)  # float32 only
  assert "stablehlo.convolution" in lowered(dispatched(x, w, strides=(2, 2)), x, w)
  assert "stablehlo.convolution" in lowered(dispatched(x, w, padding=((0, 0), (0, 0))), x, w)
  for platform in ("cuda", "tpu"):
    text = lowered(fn, x, w, platform=platform)
    assert "stablehlo.convolution" in text and "stablehlo.dot_general" not in text


@pytest.mark.parametrize("on", [False, True])
def test_unet_conv3x3_keeps_nnx_conv_parameters_and_values(monkeypatch, on):
  monkeypatch.setattr(cpu.settings, "winograd", on)
  conv = layers.conv3x3(128, 160, dtype=jnp.float32, rngs=nnx.Rngs(0))
  plain = nnx.Conv(128, 160, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
  assert jax.tree.map(jnp.shape, nnx.state(conv)) == jax.tree.map(jnp.shape, nnx.state(plain))
  x, _, _ = data((2, 16, 12, 128), 160)
  text = lowered(lambda x: conv(x), x)
  assert ("stablehlo.convolution" not in text) == on
  y = nnx.jit(lambda c, x: c(x))(conv, x)
  ref = correlate(x, conv.kernel[...]) + np.asarray(conv.bias[...], np.float64)
  assert relative_error(y, ref) < 2e-5
  assert relative_error(y, nnx.jit(lambda c, x: c(x))(plain, x)) < 2e-5  # same init, same values
