"""jaxdiff's CPU fast paths, and the one place that turns each on or off. GPUs and TPUs run none.

XLA:CPU flag --xla_cpu_experimental_ynn_fusion_type=individual_dot (xla_flags.py): YNNPACK for
  dots only; train step 1.7x, DDIM 1.9x faster (1.6M-parameter U-Net).
  Default: added by `apply_xla_flags()`, which `python -m jaxdiff.main`, tests/conftest.py and the
  benchmarks call first thing; `import jaxdiff` never touches the environment.
  Off: JAXDIFF_DEFAULT_XLA_FLAGS=0, or don't call it.
GroupNorm closed-form backward (group_norm.py): CIFAR-10 U-Net train step 10-15% faster.
  Default: on, CPU only (GPU/TPU programs get autodiff's backward).
  Off: JAXDIFF_GROUP_NORM_BACKWARD=0 or `settings.group_norm_backward = False`.
LayerNorm statistics as dots (layer_norm.py): the digits DiT's train step 1.5x faster.
  Default: on, CPU only (GPU/TPU programs get the plain reductions).
  Off: JAXDIFF_LAYER_NORM_DOTS=0 or `settings.layer_norm_dots = False`.
Attention as head-major matmuls (attention.py), from 128 tokens: DiT-S/2's DDIM sampling 1.2x,
  training 1.06x faster.
  Default: on, CPU only (GPU/TPU programs get XLA's jax.nn.dot_product_attention; cuDNN's where
  model.attention picks it is not affected).
  Off: JAXDIFF_ATTENTION_HEAD_MAJOR=0 or `settings.attention_head_major = False`.
Winograd forward of float32 3x3 convolutions (winograd.py): train ~1.1x, DDIM ~1.3x faster, but
  3-4x the compile time of the CIFAR-10 U-Net's train step and several times the peak memory.
  Default: off. On: JAXDIFF_WINOGRAD=1 or `settings.winograd = True` (CPU only, still).

The flag must be in XLA_FLAGS before JAX creates its backend, so a notebook calls
`jaxdiff.cpu.apply_xla_flags()` before its first computation. The other switches are read
when a model is traced (an already compiled function keeps its choice); a value set on `settings`
wins over the environment variable, None defers to it.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from jax import lax

from jaxdiff.cpu import attention as _attention
from jaxdiff.cpu import group_norm as _group_norm
from jaxdiff.cpu import layer_norm as _layer_norm
from jaxdiff.cpu import winograd as _winograd
from jaxdiff.cpu import xla_flags as _xla_flags

XLA_FLAGS_ENV = "JAXDIFF_DEFAULT_XLA_FLAGS"
GROUP_NORM_ENV = "JAXDIFF_GROUP_NORM_BACKWARD"
WINOGRAD_ENV = "JAXDIFF_WINOGRAD"
LAYER_NORM_ENV = "JAXDIFF_LAYER_NORM_DOTS"
ATTENTION_ENV = "JAXDIFF_ATTENTION_HEAD_MAJOR"
_FALSE, _TRUE = ("0", "false", "no", "off"), ("1", "true", "yes", "on")


@dataclasses.dataclass
class Settings:
  """In-process switches; None means: ask the environment variable, else the default."""

  group_norm_backward: bool | None = None
  winograd: bool | None = None
  layer_norm_dots: bool | None = None
  attention_head_major: bool | None = None


settings = Settings()


def _switch(name: str, default: bool, environ=os.environ) -> bool:
  value = environ.get(name, "").strip().lower()
  if not value:
    return default
  if value not in _FALSE + _TRUE:
    raise ValueError(f"{name}={environ[name]!r}: use one of {', '.join(_FALSE + _TRUE)}.")
  return value in _TRUE


def apply_xla_flags(environ=os.environ) -> list[str]:
  """Adds jaxdiff's XLA:CPU flag to environ["XLA_FLAGS"] unless JAXDIFF_DEFAULT_XLA_FLAGS=0, the
  user's XLA_FLAGS already name it, or the jaxlib is not one it was checked with; returns what it
  added. Call before the first JAX computation: once the backend exists it adds nothing and
  warns. GPUs and TPUs ignore the flag."""
  if not _switch(XLA_FLAGS_ENV, True, environ):
    return []
  return _xla_flags.add(environ)


def group_norm_backward_enabled() -> bool:
  """Whether GroupNorm uses the closed-form backward on CPU (default yes)."""
  if settings.group_norm_backward is not None:
    return settings.group_norm_backward
  return _switch(GROUP_NORM_ENV, True)


def layer_norm_dots_enabled() -> bool:
  """Whether LayerNorm computes its statistics as dots on CPU (default yes)."""
  if settings.layer_norm_dots is not None:
    return settings.layer_norm_dots
  return _switch(LAYER_NORM_ENV, True)


def attention_head_major_enabled() -> bool:
  """Whether XLA attention runs as head-major matmuls on CPU (default yes)."""
  if settings.attention_head_major is not None:
    return settings.attention_head_major
  return _switch(ATTENTION_ENV, True)


def winograd_enabled() -> bool:
  """Whether float32 3x3 convolutions may run as Winograd on CPU (default no)."""
  if settings.winograd is not None:
    return settings.winograd
  return _switch(WINOGRAD_ENV, False)


def status() -> dict:
  """What is on now, for benchmark records."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  return {
    "xla_flags": [f for f in _xla_flags.CPU_DEFAULTS if f in flags],
    "group_norm_backward": group_norm_backward_enabled(),
    "winograd": winograd_enabled(),
    "layer_norm_dots": layer_norm_dots_enabled(),
    "attention_head_major": attention_head_major_enabled(),
  }


def normalize_groups(x: jax.Array, scale, bias, eps: float, groups: int) -> jax.Array:
  """Group norm of x (B, P, C) (jaxdiff.cpu.group_norm.forward's values), with the closed-form
  backward on CPU when it is on, autodiff's otherwise and on every other platform."""
  if group_norm_backward_enabled():
    return _group_norm.group_norm(x, scale, bias, eps, groups)
  return _group_norm.forward(x, scale, bias, eps, groups)


def normalize_last(x: jax.Array, eps: float) -> jax.Array:
  """Layer norm of x over its last axis, no affine (jaxdiff.cpu.layer_norm.forward's values), its
  statistics as dots on CPU when that is on, reductions otherwise and on every other platform."""
  if layer_norm_dots_enabled():
    return _layer_norm.layer_norm(x, eps)
  return _layer_norm.forward(x, eps)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """XLA's softmax(q kᵀ/√d) v of (B, T, heads, head_dim) q, k, v (jaxdiff.cpu.attention.forward's
  values), as head-major matmuls on CPU when that is on and T ≥ attention.HEAD_MAJOR_MIN_TOKENS,
  XLA's layout otherwise and on every other platform."""
  if attention_head_major_enabled() and q.shape[1] >= _attention.HEAD_MAJOR_MIN_TOKENS:
    return _attention.attention(q, k, v)
  return _attention.forward(q, k, v)


def conv_general_dilated(*args, **kwargs) -> jax.Array:
  """`lax.conv_general_dilated`, or with Winograd on, jaxdiff.cpu.winograd's (CPU, float32, 3x3
  shapes where it pays). For `nnx.Conv(conv_general_dilated=...)`."""
  conv = _winograd.conv_general_dilated if winograd_enabled() else lax.conv_general_dilated
  return conv(*args, **kwargs)
