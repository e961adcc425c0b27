"""jaxdiff.models.UNet: published parameter count, shapes, conditioning, dropout and init modes.

Shape-only checks use nnx.eval_shape / jax.eval_shape, which trace without compiling; numerical
agreement with diffusers is tested in test_convert.py.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import tree_relative_error

from jaxdiff.models import UNet, abstract_unet

# DDPM's CIFAR-10 model (Ho et al. 2020, as google/ddpm-cifar10-32).
DDPM_CIFAR10 = dict(
  base_channels=128,
  channel_mult=(1, 2, 2, 2),
  num_res_blocks=2,
  attention_resolutions=(16,),
  image_size=32,
  dropout=0.1,
)
# The smallest U-Net with every kind of layer: one level, so few distinct shapes to compile.
TINY = dict(
  in_channels=2,
  base_channels=8,
  channel_mult=(1,),
  num_res_blocks=1,
  attention_resolutions=(8,),
  image_size=8,
  norm_groups=4,
)


def _output_struct(model: UNet, x_shape, *, y=None) -> jax.ShapeDtypeStruct:
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  t = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
  return jax.eval_shape(lambda s, x, t, y: nnx.merge(graphdef, s)(x, t, y), state, x, t, y)


def _num_params(model: UNet) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module")
def ddpm_cifar10():
  return abstract_unet(**DDPM_CIFAR10)


def test_ddpm_cifar10_has_the_published_parameter_count(ddpm_cifar10):
  assert _num_params(ddpm_cifar10) == 35_746_307


def test_ddpm_cifar10_output_shape(ddpm_cifar10):
  out = _output_struct(ddpm_cifar10, (2, 32, 32, 3))
  assert (out.shape, out.dtype) == ((2, 32, 32, 3), jnp.float32)


@pytest.mark.parametrize(
  "kwargs, x_shape, out_channels",
  [
    # ADM ImageNet-64 layout, shrunk: scale-shift norm, multi-head, class labels, learned sigma.
    (
      dict(
        base_channels=32,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=1,
        attention_resolutions=(16, 8),
        image_size=64,
        head_channels=16,
        use_scale_shift_norm=True,
        learn_sigma=True,
        num_classes=10,
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
      ),
      (2, 64, 64, 3),
      6,
    ),
    (
      dict(
        in_channels=1,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        image_size=16,
        norm_groups=8,
        num_heads=4,
        resample_with_conv=False,
      ),
      (3, 16, 16, 1),
      1,
    ),
    (dict(TINY, out_channels=1, learn_sigma=True), (1, 8, 8, 2), 2),
  ],
)
def test_output_shape(kwargs, x_shape, out_channels):
  model = abstract_unet(**kwargs)
  y = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32) if kwargs.get("num_classes") else None
  out = _output_struct(model, x_shape, y=y)
  assert out.shape == (*x_shape[:3], out_channels)
  assert out.dtype == jnp.float32


def test_learn_sigma_doubles_the_output_and_nothing_else():
  plain, learned = abstract_unet(**TINY), abstract_unet(**TINY, learn_sigma=True)
  assert _output_struct(learned, (1, 8, 8, 2)).shape[-1] == 4
  # Only the output conv grows: 8 * 3 * 3 * 2 more weights and 2 more biases.
  assert _num_params(learned) - _num_params(plain) == 8 * 9 * 2 + 2


def test_bfloat16_compute_keeps_float32_params_and_output():
  model = abstract_unet(**TINY, dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
  assert _output_struct(model, (1, 8, 8, 2)).dtype == jnp.float32


def test_heads_follow_num_heads_or_head_channels():
  def mid_heads(**kwargs):
    return abstract_unet(**TINY, **kwargs).mid_block.attentions[0].num_heads

  assert mid_heads() == 1  # DDPM: a single head
  assert mid_heads(num_heads=2) == 2
  assert mid_heads(head_channels=2) == 4


def test_class_embedding_has_a_null_row():
  model = abstract_unet(**TINY, num_classes=10)
  assert model.class_embedding.embedding.shape == (11, 32)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(attention_resolutions=(5,)), "match no level"),
    (dict(num_heads=2, head_channels=4), "at most one"),
    (dict(head_channels=3), "split evenly"),
    (dict(downsample_padding=2, channel_mult=(1, 1)), "downsample_padding"),
  ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    abstract_unet(**{**TINY, **kwargs})


@pytest.fixture(scope="module")
def tiny_conditional():
  """A tiny class-conditional model with dropout whose params are drawn by NumPy: a JAX random init
  compiles one program per parameter shape, seconds of test time on CPU for nothing tested here.
  """
  model = abstract_unet(**TINY, num_classes=3, dropout=0.5, dropout_key=1)
  rng = np.random.default_rng(0)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  nnx.update(
    model,
    nnx.from_flat_state(
      [(path, jnp.asarray(rng.normal(0.0, 0.3, p.shape), jnp.float32)) for path, p in flat]
    ),
  )
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 2)), jnp.float32)
  t = jnp.array([3, 900])
  return model, x, t


_apply = nnx.jit(lambda model, x, t, y: model(x, t, y))


def test_null_class_is_the_default_label(tiny_conditional):
  model, x, t = tiny_conditional
  model.eval()
  null = _apply(model, x, t, jnp.array([3, 3]))
  chex.assert_trees_all_equal(_apply(model, x, t, None), null)
  assert np.abs(np.asarray(_apply(model, x, t, jnp.array([0, 0])) - null)).max() > 1e-3
  with pytest.raises(ValueError, match="without num_classes"):
    _output_struct(abstract_unet(**TINY), (2, 8, 8, 2), y=jax.ShapeDtypeStruct((2,), jnp.int32))


def test_dropout_is_active_only_in_train_mode(tiny_conditional):
  model, x, t = tiny_conditional
  y = jnp.array([0, 1])
  model.eval()
  deterministic = _apply(model, x, t, y)
  chex.assert_trees_all_equal(_apply(model, x, t, y), deterministic)
  model.train()
  first, second = _apply(model, x, t, y), _apply(model, x, t, y)
  model.eval()
  assert np.abs(np.asarray(first - deterministic)).max() > 1e-3
  assert np.abs(np.asarray(first - second)).max() > 1e-3  # a fresh mask per call


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_zeroes_the_last_layer_of_every_residual_branch(zero_init):
  last_layers = ("conv2", "to_out", "conv_out")

  @jax.jit
  def last_kernels():
    # Only these kernels leave the jit, so XLA drops the rest of the random init.
    model = UNet(**TINY, zero_init=zero_init, rngs=nnx.Rngs(0))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {
      ".".join(map(str, path)): p[...]
      for path, p in flat
      if path[-2] in last_layers and path[-1] == "kernel"
    }

  kernels = last_kernels()
  # TINY has 5 res blocks (1 down, 2 mid, 2 up), 4 attentions (one after each res block but the
  # mid block's second) and the output conv.
  assert (
    sorted(name.split(".")[-2] for name in kernels) == ["conv2"] * 5 + ["conv_out"] + ["to_out"] * 4
  )
  assert all(bool(jnp.all(k == 0)) == zero_init for k in kernels.values())


def test_space_to_depth_folds_patches_and_inverts():
  from jaxdiff.models.unet import depth_to_space, space_to_depth

  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  folded = space_to_depth(x, 2)
  assert folded.shape == (2, 2, 3, 12)
  # patch (i, j) holds pixels (2i + a, 2j + b) for a, b in {0, 1}, row-major, channels fastest
  np.testing.assert_array_equal(folded[1, 1, 2], x[1, 2:4, 4:6, :].reshape(-1))
  np.testing.assert_array_equal(depth_to_space(folded, 2), x)


def test_patch_size_runs_the_network_at_lower_resolution():
  model = UNet(
    in_channels=1,
    base_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    image_size=16,
    patch_size=2,
    learn_sigma=True,
    zero_init=False,
    rngs=nnx.Rngs(0),
  )
  assert model.conv_in.kernel[...].shape == (3, 3, 4, 32)  # 2×2 patches of 1 channel
  assert model.conv_out.kernel[...].shape == (3, 3, 32, 8)  # 2 output channels × 4 pixels
  out = model(jnp.ones((2, 16, 16, 1)), jnp.array([1, 500]))
  assert out.shape == (2, 16, 16, 2)
  with pytest.raises(ValueError, match="patch_size 3"):
    UNet(in_channels=1, image_size=16, patch_size=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_gradients_in_less_memory(policy):
  kwargs = dict(
    in_channels=3,
    base_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=2,
    attention_resolutions=(8,),
    image_size=16,
    zero_init=False,
  )
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  t = jnp.arange(8) * 100

  def grads_and_residual_bytes(remat):
    model = UNet(**kwargs, remat=remat, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
      # fresh RNG variables inside the trace, as the train step binds its model
      return jnp.mean(nnx.merge(graphdef, params, jax.tree.map(jnp.copy, rest))(x, t) ** 2)

    # the vjp closure holds exactly what the forward pass keeps for the backward pass
    _, backward = jax.vjp(jax.jit(loss), params)
    kept = sum(leaf.nbytes for leaf in jax.tree.leaves(backward))
    return backward(jnp.ones(()))[0], kept

  plain, plain_bytes = grads_and_residual_bytes("")
  remat, remat_bytes = grads_and_residual_bytes(policy)
  # the same float32 ops, recomputed; XLA may fuse them differently: rounding only
  assert tree_relative_error(remat, plain) < 1e-5
  # measured: 'full' keeps ~1/5 of the activations, 'dots' ~1/3 (plus the parameters in both)
  assert remat_bytes < 0.6 * plain_bytes, (remat_bytes, plain_bytes)
