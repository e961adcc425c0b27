"""jaxdiff.models.DiT: the paper's parameter counts, parity with the original code, the table.

Big models are built with nnx.eval_shape (shapes only, nothing compiled); the parity model is tiny.
"""

import collections
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import data_dir  # noqa: F401 — data_dir is a fixture
from test_train import device_bytes, losses_on, synthetic_batches

from numerics import relative_error, tree_relative_error

from jaxdiff import config as config_lib
from jaxdiff import guidance, models, parallel
from jaxdiff import run as run_lib
from jaxdiff.convert.dit import load_dit_state_dict
from jaxdiff.models.dit import DIT_PRESETS, DiT, DiTConfig, sincos_position_embedding
from jaxdiff.train.step import make_train_fn

DATA = pathlib.Path(__file__).resolve().parent / "data"

# sum(p.numel() for p in model.parameters()) of facebookresearch/DiT models.py (commit ed81ce2)
# for DiT_models[name](input_size=32, num_classes=1000) (learn_sigma, class_dropout_prob=0.1, so
# 1001 label rows), counted with torch 2.14 + timm 1.0.31. The original's count includes its fixed
# `pos_embed` (a Parameter with requires_grad=False; 256 tokens × hidden); jaxdiff recomputes that
# embedding as a constant instead, so its trainable count is the original's minus 256 × hidden.
# DiT-XL/2's 675,129,632 is the "675M" of the paper's Table 4 and Figure 1.
ORIGINAL_COUNTS = {
  "S": 32_963_360,
  "B": 130_512_416,
  "L": 458_102_816,
  "XL": 675_129_632,
}


def _abstract_dit(**kwargs) -> DiT:
  return nnx.eval_shape(lambda: DiT(**kwargs, rngs=nnx.Rngs(0)))


def _num_params(model) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("size", list(DIT_PRESETS))
def test_parameter_count_matches_the_original_minus_the_fixed_position_embedding(size):
  preset = DIT_PRESETS[size]
  model = _abstract_dit(
    in_channels=4, image_size=32, patch_size=2, num_classes=1000, learn_sigma=True, **preset
  )
  assert _num_params(model) + 256 * preset["hidden_size"] == ORIGINAL_COUNTS[size]
  if size == "XL":
    assert _num_params(model) == 674_834_720  # trainable parameters of DiT-XL/2


def test_xl_output_shape_and_dtype():
  model = _abstract_dit(
    in_channels=4, image_size=32, num_classes=1000, learn_sigma=True, dtype=jnp.bfloat16,
    **DIT_PRESETS["XL"],
  )  # fmt: skip
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.int32)
  y = jax.ShapeDtypeStruct((2,), jnp.int32)
  out = jax.eval_shape(lambda s, x, t, y: nnx.merge(graphdef, s)(x, t, y), state, x, t, y)
  assert (out.shape, out.dtype) == ((2, 32, 32, 8), jnp.float32)


def _reference():
  with np.load(DATA / "dit_reference.npz") as f:
    return {k: f[k] for k in f.files}


def test_position_embedding_is_the_originals():
  ref = _reference()
  np.testing.assert_allclose(sincos_position_embedding(32, 4), ref["pos_embed"], atol=1e-7)


def test_matches_the_original_implementation():
  ref = _reference()
  model = DiT(
    in_channels=4, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4,
    num_classes=10, learn_sigma=True, rngs=nnx.Rngs(0),
  )  # fmt: skip
  tensors = {k.removeprefix("param/"): v for k, v in ref.items() if k.startswith("param/")}
  load_dit_state_dict(model, tensors)
  out = np.asarray(model(jnp.asarray(ref["x"]), jnp.asarray(ref["t"]), jnp.asarray(ref["y"])))
  assert out.shape == (4, 8, 8, 8) and out.dtype == np.float32
  # Both sides compute in float32 with the same weights; only summation order and the exp/erf/tanh
  # implementations differ, which leaves ~1e-7 relative error per op, far below 1e-5. A
  # mis-mapped weight, a transposed patch or a swapped sin/cos gives O(1).
  error = np.linalg.norm(out - ref["out"]) / np.linalg.norm(ref["out"])
  assert error <= 1e-5, error
  print(f"relative error to the original: {error:.2e}")


def test_guidance_on_three_channels_matches_the_original_sampler():
  ref = _reference()
  model = DiT(
    in_channels=4, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4,
    num_classes=10, learn_sigma=True, rngs=nnx.Rngs(0),
  )  # fmt: skip
  load_dit_state_dict(model, {k[6:]: v for k, v in ref.items() if k.startswith("param/")})
  # sample.guided_channels=3, as generate.py passes it: the original's forward_with_cfg
  guided = guidance.classifier_free(
    model, jnp.asarray(ref["cfg_labels"]), guidance_scale=4.0, null_label=10, num_guided_channels=3
  )
  out = guided(jnp.asarray(ref["x"][:2]), jnp.asarray(ref["t"][1:3]))
  # float32 on both sides, as test_matches_the_original_implementation; guidance amplifies the
  # cond − uncond difference 4×, which keeps the error far below 1e-5 all the same
  assert relative_error(out, ref["cfg_out"]) <= 1e-5
  # all channels guided (the standard choice) differs in channel 3 only
  everywhere = guidance.classifier_free(
    model, jnp.asarray(ref["cfg_labels"]), guidance_scale=4.0, null_label=10, num_guided_channels=4
  )(jnp.asarray(ref["x"][:2]), jnp.asarray(ref["t"][1:3]))
  assert relative_error(everywhere[..., 3], ref["cfg_out"][..., 3]) > 1e-2
  np.testing.assert_array_equal(np.asarray(everywhere)[..., :3], np.asarray(out)[..., :3])


def test_converter_refuses_a_state_dict_of_another_shape():
  ref = _reference()
  tensors = {k.removeprefix("param/"): v for k, v in ref.items() if k.startswith("param/")}
  model = DiT(
    in_channels=4, image_size=8, hidden_size=32, depth=1, num_heads=4, num_classes=10,
    learn_sigma=True, rngs=nnx.Rngs(0),
  )  # fmt: skip
  with pytest.raises(ValueError, match="no DiT parameter"):
    load_dit_state_dict(model, tensors)


def test_config_validation():
  with pytest.raises(ValueError, match="multiple of model.num_heads"):
    DiTConfig(hidden_size=30, num_heads=4)
  with pytest.raises(ValueError, match="model.remat"):
    DiTConfig(remat="some")


def test_attention_kernel_choice(monkeypatch):
  from jaxdiff.models import dit

  with pytest.raises(
    ValueError, match=r"model.attention must be one of \('auto', 'xla', 'cudnn'\)"
  ):
    DiTConfig(attention="flash")
  # on this CPU: XLA's attention, and cuDNN's asked for by name is refused in one sentence
  assert dit.attention_implementation("auto", jnp.bfloat16, 72) == "xla"
  with pytest.raises(ValueError, match="model.attention='cudnn' needs an NVIDIA GPU"):
    dit.attention_implementation("cudnn", jnp.bfloat16, 72)
  # on an NVIDIA GPU, 'auto' takes cuDNN's fused kernel where cuDNN takes the inputs: half-
  # precision q/k/v and a head dimension that is a multiple of 8 up to 128 (DiT-XL/2's is 72).
  # Measured on an H200 (benchmarks/RESULTS.md): same error against float32 as XLA's, 2.1× faster.
  monkeypatch.setattr(dit, "_on_nvidia_gpu", lambda: True)
  assert dit.attention_implementation("auto", jnp.bfloat16, 72) == "cudnn"
  assert dit.attention_implementation("auto", jnp.float16, 128) == "cudnn"
  assert dit.attention_implementation("auto", jnp.float32, 72) == "xla"
  assert dit.attention_implementation("auto", jnp.bfloat16, 160) == "xla"
  assert dit.attention_implementation("auto", jnp.bfloat16, 36) == "xla"
  assert dit.attention_implementation("xla", jnp.bfloat16, 72) == "xla"
  assert dit.attention_implementation("cudnn", jnp.float32, 72) == "cudnn"  # as asked


def test_remat_gives_the_same_output():
  kwargs = dict(in_channels=1, image_size=8, hidden_size=16, depth=1, num_heads=2, num_classes=3)
  plain = DiT(**kwargs, rngs=nnx.Rngs(0))
  remat = DiT(**kwargs, remat="full", rngs=nnx.Rngs(0))
  # re-randomize the zero-initialized layers so the blocks do something
  state = jax.tree.map(lambda p: p + 0.1, nnx.state(plain, nnx.Param))
  nnx.update(plain, state)
  nnx.update(remat, state)
  x, t = jnp.ones((2, 8, 8, 1)), jnp.array([3, 700])

  def loss(model):
    return jnp.sum(jnp.square(model(x, t)))

  np.testing.assert_allclose(nnx.grad(loss)(remat)["blocks"][0]["attn"]["qkv"]["kernel"][...],
                             nnx.grad(loss)(plain)["blocks"][0]["attn"]["qkv"]["kernel"][...],
                             rtol=1e-5, atol=1e-6)  # fmt: skip


def _digits_dit_config():
  return config_lib.load_file(
    pathlib.Path(__file__).resolve().parent.parent / "configs" / "digits_dit.py"
  )


def test_default_config_of_dit_has_only_its_own_model_keys():
  config = config_lib.default_config(arch="dit")
  assert set(config.model.keys()) == {*models.table.COMMON, *DiTConfig.__dataclass_fields__}
  assert not {"base_channels", "channel_mult", "attention_resolutions"} & set(config.model)


def test_through_the_table_untrained_output_is_zero_and_it_trains(data_dir):  # noqa: F811
  config = _digits_dit_config()
  config.data.data_dir = str(data_dir)
  config.data.batch_size = 8
  config.train.num_devices = 1
  config.optim.warmup_steps = 0  # a first step with learning rate 0 would move nothing
  config.model.update(hidden_size=16, depth=1, num_heads=2)
  config_lib.validate(config)
  parts = run_lib.build(config)
  assert isinstance(parts.model_def.bind(parts.state.params), DiT)
  d = config.data
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (1, d.batch_size, d.image_size, d.image_size, 1)).astype("f4")
  labels = rng.integers(0, 10, (1, d.batch_size)).astype(np.int32)
  # adaLN-Zero: the zero-initialized final layer makes the untrained network output exactly zero
  model = parts.model_def.bind(parts.state.params)
  out = model(jnp.asarray(images[0]), jnp.arange(d.batch_size) * 100, jnp.asarray(labels[0]))
  assert out.shape == images[0].shape and not np.any(np.asarray(out))
  fn = make_train_fn(parallel.make_mesh(1), parts.state, steps_per_call=1, **parts.step_kwargs())
  state, metrics = fn(parts.state, jax.device_put({"image": images, "label": labels}), None)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"][0]))
  # one step moves the parameters that start at zero, so training can leave the zero output
  assert np.any(np.asarray(state.params["final_layer"]["linear"]["kernel"][...]))


def test_fsdp_splits_the_dit_by_its_logical_axes_and_trains_like_the_replicated_run(data_dir):  # noqa: F811
  config = _digits_dit_config()
  config.data.data_dir = str(data_dir)
  config.data.batch_size = 8
  config.train.num_devices = 8
  # hidden 64, 4 heads, 2×2 patches: every kernel ≥ 4096
  config.model.update(depth=2, class_dropout=0.1, hidden_size=64, patch_size=2)
  config_lib.validate(config)
  batches = synthetic_batches(config, 3)
  replicated, state_1 = losses_on(8, config, batches)
  sharded, state_8 = losses_on(8, config, batches, fsdp=8)
  # Same global batch and keys; XLA gathers the weights and reduce-scatters the gradients, which
  # changes the order of float32 reductions only.
  np.testing.assert_allclose(sharded, replicated, rtol=1e-5)
  assert tree_relative_error(state_8.params, state_1.params) < 1e-5
  for part in ("params", "ema_params", "opt_state"):
    tree = getattr(state_8, part)
    held = device_bytes(tree)
    assert len(held) == 8
    # only arrays below parallel.MIN_SHARDED_SIZE (biases, the label table) stay whole everywhere
    assert max(held.values()) < 0.2 * sum(x.nbytes for x in jax.tree.leaves(tree))
  block = state_8.params["blocks"][0]
  spec = lambda leaf: leaf[...].sharding.spec
  P = jax.sharding.PartitionSpec
  # the named axes, not the shape rule: q/k/v and fc1 split by output, proj and fc2 by input
  assert spec(block["attn"]["qkv"]["kernel"]) == P(None, "fsdp")
  assert spec(block["attn"]["proj"]["kernel"]) == P("fsdp", None)
  assert spec(block["mlp"]["fc2"]["kernel"]) == P("fsdp", None)
  assert spec(state_8.opt_state[-1][0].mu["blocks"][0]["mlp"]["fc2"]["kernel"]) == P("fsdp", None)


def test_bfloat16_compute_keeps_float32_parameters_and_output():
  kwargs = dict(in_channels=4, image_size=8, hidden_size=32, depth=2, num_heads=4, num_classes=10,
                learn_sigma=True)  # fmt: skip
  ref = np.load(DATA / "dit_reference.npz")
  tensors = {k[len("param/") :]: ref[k] for k in ref.files if k.startswith("param/")}
  fp32 = load_dit_state_dict(DiT(**kwargs, rngs=nnx.Rngs(0)), tensors)
  bf16 = load_dit_state_dict(DiT(**kwargs, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), tensors)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
  x, t, y = (jnp.asarray(ref[k]) for k in ("x", "t", "y"))
  out = bf16(x, t, y)
  assert out.dtype == jnp.float32
  # bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 2e-3 per operand); through two blocks
  # of matmuls the output stays within a few percent, and far from the fp32 result it must not be
  err = relative_error(out, fp32(x, t, y))
  assert 1e-4 < err < 3e-2


# --- CPU paths behind lax.platform_dependent: the programs each platform gets ---------------------

# what platform_dependent's switch adds around the chosen branch: a case, its returns, constants
# and broadcasts; the rest of a program is its arithmetic
_SWITCH_OPS = (
  "stablehlo.case",
  "stablehlo.return",
  "stablehlo.constant",
  "stablehlo.broadcast_in_dim",
)


def _grad_ops(platform: str, fn, *args, power: int) -> collections.Counter:
  """The StableHLO ops of the gradient of Σ fn(*args)^power, lowered for `platform`."""
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** power), argnums=tuple(range(len(args)))))
  text = jax.export.export(grad, platforms=(platform,))(*args).mlir_module()
  return collections.Counter(re.findall(r"stablehlo\.\w+", text))


def _arithmetic(ops: collections.Counter) -> dict:
  return {k: v for k, v in ops.items() if k not in _SWITCH_OPS}


# --- attention: the explicit softmax, and head-major matmuls on CPU (jaxdiff.cpu.attention) ------


def _attention_grad_ops(platform: str, fn, tokens: int = 128) -> collections.Counter:
  q, k, v = (jax.random.normal(jax.random.key(i), (2, tokens, 3, 8)) for i in range(3))
  return _grad_ops(platform, fn, q, k, v, power=2)


def test_attention_is_the_explicit_softmax_and_head_major_stays_on_cpu(monkeypatch):
  from jaxdiff import cpu
  from jaxdiff.cpu import attention

  # softmax(q kᵀ/√d) v per head, written out in float64 NumPy
  rng = np.random.default_rng(0)
  q, k, v = (2.0 * rng.standard_normal((2, 16, 3, 8)) for _ in range(3))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  want = np.einsum("bhqk,bkhd->bqhd", weights, v)
  args = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
  # float32 against float64: ~1e-7 relative, 1e-5 leaves two orders for the sums' order
  for fn in (attention.forward, attention.head_major, cpu.dot_product_attention):
    assert relative_error(fn(*args), want) < 1e-5
  grads = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2))(*args)
  assert tree_relative_error(grads(attention.head_major), grads(attention.forward)) < 1e-5
  # the layout is a CPU measurement: GPU and TPU programs are XLA's dot_product_attention
  for platform in ("cuda", "tpu"):
    ops = _attention_grad_ops(platform, cpu.dot_product_attention)
    assert _arithmetic(ops) == _arithmetic(_attention_grad_ops(platform, attention.forward))
  on_cpu = _attention_grad_ops("cpu", cpu.dot_product_attention)
  assert _arithmetic(on_cpu) != _arithmetic(_attention_grad_ops("cpu", attention.forward))
  # from attention.HEAD_MAJOR_MIN_TOKENS (128) on: fewer tokens keep XLA's program on CPU too
  assert _attention_grad_ops("cpu", cpu.dot_product_attention, 127) == _attention_grad_ops(
    "cpu", attention.forward, 127
  )
  monkeypatch.setenv(cpu.ATTENTION_ENV, "0")
  assert _attention_grad_ops("cpu", cpu.dot_product_attention) == _attention_grad_ops(
    "cpu", attention.forward
  )


# --- LayerNorm's statistics as dots on CPU (jaxdiff.cpu.layer_norm) ------------------------------


def _ln_grad_ops(platform: str, fn) -> collections.Counter:
  return _grad_ops(platform, fn, jax.random.normal(jax.random.key(0), (2, 16, 32)), power=3)


def test_layer_norm_dots_equal_the_definition_and_stay_on_cpu(monkeypatch):
  from jaxdiff import cpu
  from jaxdiff.cpu import layer_norm

  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (4, 16, 64))
  # float32 sums of 64 terms in another order: ~1e-7 relative
  assert relative_error(layer_norm.dots(x, 1e-6), layer_norm.forward(x, 1e-6)) < 1e-5
  f = lambda fn: jax.grad(lambda x: jnp.sum(fn(x, 1e-6) ** 3))(x)
  assert relative_error(f(layer_norm.dots), f(layer_norm.forward)) < 1e-5
  # the dots are a CPU measurement: GPU and TPU programs keep the definition's reductions
  definition = lambda x: layer_norm.forward(x, 1e-6)
  for platform in ("cuda", "tpu"):
    ops = _ln_grad_ops(platform, lambda x: cpu.normalize_last(x, 1e-6))
    assert "stablehlo.dot_general" not in ops
    assert _arithmetic(ops) == _arithmetic(_ln_grad_ops(platform, definition))
  assert _ln_grad_ops("cpu", lambda x: cpu.normalize_last(x, 1e-6))["stablehlo.dot_general"] >= 2
  monkeypatch.setenv(cpu.LAYER_NORM_ENV, "0")
  assert _ln_grad_ops("cpu", lambda x: cpu.normalize_last(x, 1e-6)) == _ln_grad_ops(
    "cpu", definition
  )
