"""The train state: step, parameters, EMA parameters, optimizer state and the run's RNG key."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxdiff import importance
from jaxdiff.models import UNet


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer updates applied
  params: nnx.State
  ema_params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array  # raw key data of the training stream; each step folds in `step`
  # importance sampling of t (diffusion.timestep_sampler); None, and absent from checkpoints,
  # under uniform sampling
  loss_history: importance.LossHistory | None = None


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """The static half of a split NNX model: its graph and non-parameter variables (RNG streams)."""

  graphdef: Any
  rest: nnx.State

  def bind(self, params: nnx.State) -> nnx.Module:
    # Fresh copies of the RNG variables, so the caller's trace owns them and may reseed them.
    return nnx.merge(self.graphdef, params, jax.tree.map(jnp.copy, self.rest))


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def unet_kwargs(config: ml_collections.ConfigDict) -> dict:
  """The U-Net's constructor arguments from a run config."""
  m, d = config.model, config.data
  if config.train.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
      f"train.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, "
      f"got {config.train.compute_dtype!r}."
    )
  return dict(
    in_channels=d.channels,
    base_channels=m.base_channels,
    channel_mult=tuple(m.channel_mult),
    num_res_blocks=m.num_res_blocks,
    attention_resolutions=tuple(m.attention_resolutions),
    image_size=d.image_size,
    num_heads=m.num_heads,
    head_channels=m.head_channels,
    dropout=m.dropout,
    num_classes=d.num_classes if m.class_conditional else None,
    learn_sigma=m.learn_sigma,
    use_scale_shift_norm=m.use_scale_shift_norm,
    resample_with_conv=m.resample_with_conv,
    patch_size=m.patch_size,
    remat=m.remat,
    dtype=COMPUTE_DTYPES[config.train.compute_dtype],
  )


def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0, then a constant or cosine-decaying rate."""
  o = config.optim
  warmup = max(int(o.warmup_steps), 0)
  if o.schedule == "constant":
    after = optax.constant_schedule(o.learning_rate)
  elif o.schedule == "cosine":
    after = optax.cosine_decay_schedule(o.learning_rate, max(config.train.num_steps - warmup, 1))
  else:
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {o.schedule!r}.")
  return optax.join_schedules(
    [optax.linear_schedule(0.0, o.learning_rate, warmup), after], [warmup]
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW after global-norm clipping (when optim.grad_clip_norm is set)."""
  o = config.optim
  parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm else []
  parts.append(
    optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  )
  return optax.chain(*parts)


def create(config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  """A fresh model definition and train state from the config's seed."""
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  model = UNet(**unet_kwargs(config), rngs=nnx.Rngs(params=init_key, dropout=0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=jax.tree.map(jnp.copy, params),
    opt_state=tx.init(params),
    rng=jax.random.key_data(train_key),
    loss_history=importance.init_history(
      config.diffusion.num_timesteps, config.diffusion.loss_history_size
    )
    if config.diffusion.timestep_sampler == "loss_second_moment"
    else None,
  )
  return ModelDef(graphdef, rest), state
