"""jaxdiff.cpu.apply_xla_flags: when it adds the XLA:CPU flag, that `import jaxdiff` does not,
that the command line does, and that the flag changes no result.

The rest of the suite runs with the flag on (tests/conftest.py applies it before any backend
exists), so every parity test against diffusers and pytorch-fid also holds with it. Here the same
U-Net runs in two fresh processes, with and without the flag.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff import cpu
from jaxdiff.cpu import xla_flags

FLAG = xla_flags.CPU_DEFAULTS[0]


@pytest.fixture
def fresh_backend(monkeypatch):
  """As if no JAX backend existed yet (this test process has one by now)."""
  monkeypatch.setattr(xla_flags, "_backends_initialized", lambda: False)


def test_adds_the_flag_after_the_users_flags(fresh_backend):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert cpu.apply_xla_flags(env) == [FLAG]
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
  assert cpu.apply_xla_flags(env) == []  # idempotent
  empty = {}
  cpu.apply_xla_flags(empty)
  assert empty == {"XLA_FLAGS": FLAG}


@pytest.mark.parametrize(
  "env",
  [
    {"XLA_FLAGS": f"{xla_flags.YNN_FUSION_FLAG}=individual_convolution"},  # the user's value wins
    {"XLA_FLAGS": f"{xla_flags.YNN_FUSION_FLAG}="},
    {cpu.XLA_FLAGS_ENV: "0"},
    {cpu.XLA_FLAGS_ENV: "off"},
  ],
)
def test_leaves_xla_flags_alone_when_told(fresh_backend, env):
  before = dict(env)
  assert cpu.apply_xla_flags(env) == []
  assert env == before


def test_a_misspelt_switch_is_an_error(fresh_backend):
  with pytest.raises(ValueError, match=cpu.XLA_FLAGS_ENV):
    cpu.apply_xla_flags({cpu.XLA_FLAGS_ENV: "of"})


def test_no_flag_for_an_unchecked_jaxlib_and_a_warning_for_a_live_backend(
  fresh_backend, monkeypatch
):
  for version in [(0, 10, 1), (0, 11, 0), (1, 0, 0)]:
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda v=version: v)
    assert cpu.apply_xla_flags({}) == [], version
  for version in [(0, 10, 2), (0, 10, 9)]:
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda v=version: v)
    assert cpu.apply_xla_flags({}) == [FLAG], version
  monkeypatch.setattr(xla_flags, "_backends_initialized", lambda: True)
  env = {}
  with pytest.warns(UserWarning, match="backend already exists"):
    assert cpu.apply_xla_flags(env) == []
  assert env == {}


def _fresh_process(code: str, **env) -> str:
  """stdout of `python -c code` with XLA_FLAGS set to a user's value and no opt-out inherited."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", **env}
  env.pop(cpu.XLA_FLAGS_ENV, None)  # an opt-out in the caller's environment must not mask this
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip()


def test_import_jaxdiff_leaves_the_environment_alone():
  code = (
    "import json, os; before = dict(os.environ)\n"
    "import jaxdiff, jaxdiff.cpu, jaxdiff.models\n"
    "print(json.dumps([before == dict(os.environ), os.environ.get('XLA_FLAGS')]))"
  )
  unchanged, flags = json.loads(_fresh_process(code))
  assert unchanged and flags == "--xla_force_host_platform_device_count=2"


def _expected(user_flags: str) -> str:
  if xla_flags.jaxlib_checked():
    return f"{user_flags} {FLAG}"
  return user_flags  # a newer jaxlib: nothing added until the flag is re-checked there (BUILD.md)


def test_apply_xla_flags_adds_the_flag_in_a_fresh_process():
  code = "import os, jaxdiff.cpu; jaxdiff.cpu.apply_xla_flags(); print(os.environ['XLA_FLAGS'])"
  assert _fresh_process(code) == _expected("--xla_force_host_platform_device_count=2")


def test_the_command_line_adds_the_flag_before_running():
  # jaxdiff.main as `python -m` runs it; an unknown flag makes absl exit in app.run, after the call
  code = (
    "import os, runpy, sys\n"
    "sys.argv = ['jaxdiff.main', '--no_such_flag_for_this_test']\n"
    "try:\n"
    "  runpy.run_module('jaxdiff.main', run_name='__main__')\n"
    "except (SystemExit, Exception):\n"
    "  pass\n"
    "print(os.environ['XLA_FLAGS'])"
  )
  assert _fresh_process(code) == _expected("--xla_force_host_platform_device_count=2")


WORKER = r"""
import collections, json, os, re, sys
import jaxdiff, jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jaxdiff.models import UNet

# one resolution with attention: ~70 dots, 40 convolutions and ~60 reductions, compiled quickly
kwargs = dict(in_channels=3, base_channels=32, channel_mult=(1,), num_res_blocks=1,
              attention_resolutions=(16,), image_size=16, zero_init=False)
x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
t = jnp.array([0, 250, 500, 999])
out = {}
for dtype in ("float32", "bfloat16"):
  model = UNet(**kwargs, dtype=getattr(jnp, dtype), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    y = nnx.merge(graphdef, params, jax.tree.map(jnp.copy, rest))(x, t)
    return jnp.mean(y.astype(jnp.float32) ** 2), y

  step = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params).compile()  # compiled once
  (_, y), grads = step(params)
  out[f"{dtype}_out"] = np.asarray(y, np.float32)
  out[f"{dtype}_grad"] = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
  hlo = step.as_text()
  bodies, name = {}, None  # computation name -> its text
  for line in hlo.splitlines():
    head = re.match(r"^%?([\w.\-]+) .*\{$", line)
    if head:
      name = head.group(1)
    elif name:
      bodies[name] = bodies.get(name, "") + line + "\n"
  ynn = collections.Counter()  # the root ops of the YNNPACK fusions
  for line in hlo.splitlines():
    if '"kind":"__ynn_fusion"' in line:
      body = bodies[re.search(r"calls=%([\w.\-]+)", line).group(1)]
      ynn[re.search(r"ROOT \S+ = \S+ ([\w\-]+)\(", body).group(1)] += 1
  for op in ("dot", "convolution", "reduce"):
    out[f"{dtype}_ynn_{op}"] = ynn[op]
np.savez(sys.argv[1], **out)
print(json.dumps(os.environ.get("XLA_FLAGS", "")))
"""


def _run(tmp_path, name, **env):
  path = tmp_path / f"{name}.npz"
  env = {**os.environ, "XLA_FLAGS": "", **env}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile each time: the flags must take effect
  proc = subprocess.run(
    [sys.executable, "-c", WORKER, str(path)], env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(path)), json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_flags_change_no_result_beyond_rounding(tmp_path):
  # the flag given explicitly, so this checks it on any jaxlib that still has it
  on, on_flags = _run(tmp_path, "on", XLA_FLAGS=FLAG)
  off, off_flags = _run(tmp_path, "off")  # nothing adds it: the worker only imports jaxdiff
  assert on_flags == FLAG and off_flags == ""
  # the flag is in effect: by default XLA:CPU gives dots, convolutions and reductions to YNNPACK;
  # with it, the dots only
  for dtype in ("float32", "bfloat16"):
    assert on[f"{dtype}_ynn_dot"] > 10 and off[f"{dtype}_ynn_dot"] > 10
    assert on[f"{dtype}_ynn_convolution"] == 0 and off[f"{dtype}_ynn_convolution"] > 10
    assert on[f"{dtype}_ynn_reduce"] == 0

  def rel(key):
    return np.linalg.norm(on[key] - off[key]) / np.linalg.norm(off[key])

  # float32: the same products summed in another order, ~1e-6 per op through ~40 layers (measured
  # 1.3e-6 output / 2.0e-6 gradient on the 1.6M-parameter benchmark U-Net)
  assert rel("float32_out") < 1e-5, rel("float32_out")
  assert rel("float32_grad") < 1e-5, rel("float32_grad")
  # bfloat16 compute rounds each op to 8 mantissa bits: ~1e-2
  assert rel("bfloat16_out") < 3e-2, rel("bfloat16_out")
  assert rel("bfloat16_grad") < 3e-2, rel("bfloat16_grad")
