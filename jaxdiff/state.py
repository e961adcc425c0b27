"""The train state: step, parameters, EMA parameters, optimizer state, the run's RNG key, and the
optional parts some runs add (the importance sampler's loss history, extra parameter sets)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxdiff import importance, models


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
  # parameter sets besides params/EMA that the objective asks for (a frozen teacher, a target
  # network), by name; None, and absent from checkpoints, when it asks for none. They share the
  # network's graph, are checkpointed and sharded like params, and get no gradient.
  extra: dict[str, nnx.State] | None = None


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """The static half of a split NNX model: its graph and non-parameter variables (RNG streams)."""

  graphdef: Any
  rest: nnx.State

  def bind(self, params: nnx.State) -> nnx.Module:
    # Fresh copies of the RNG variables, so the caller's trace owns them and may reseed them.
    return nnx.merge(self.graphdef, params, jax.tree.map(jnp.copy, self.rest))

  def inference_fn(self, params: nnx.State):
    """`fn(x, t, y=None, **kwargs)`: the network in eval mode (no dropout) as a pure function.

    Each call binds a fresh module in the caller's trace, so the function may be called inside
    a `lax.scan` (a sampler's loop, the likelihood bound's steps) of a network whose blocks are
    `nnx.remat`-ed: nnx.remat writes back into the module it is called on, which NNX refuses for
    a module bound outside the scan. Binding costs tracing time only."""

    def fn(x, t, y=None, **kwargs):
      # new Variable objects in this trace: those of `params` belong to the caller's trace
      model = self.bind(jax.tree.map(lambda v: v, params))
      model.eval()
      return model(x, t, y, **kwargs)

    return fn


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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


def make_optimizer(
  config: ml_collections.ConfigDict, update_scales: dict[str, float] | None = None
) -> optax.GradientTransformation:
  """AdamW after global-norm clipping (when optim.grad_clip_norm is set); with `update_scales`
  ({top-level submodule: factor}, an objective's), those submodules' updates scaled after it."""
  o = config.optim
  parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm else []
  parts.append(
    optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  )
  if update_scales:
    parts.append(scale_submodules(update_scales))
  return optax.chain(*parts)


def scale_submodules(scales: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies the updates of each top-level submodule named in `scales` by its factor (no
  state): after AdamW, that submodule trains at learning rate × factor."""

  def factor(path) -> float:
    first = path[0]
    return scales.get(getattr(first, "key", getattr(first, "name", None)), 1.0)

  def update(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(lambda path, u: u * factor(path), updates)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def create(
  config: ml_collections.ConfigDict,
  tx: optax.GradientTransformation,
  spec: models.NetworkSpec,
  *,
  init_extra=None,
  init_params=None,
):
  """A fresh model definition and train state from the config's seed.

  The network is `config.model` built on `spec` (the diffusion space). The objective may give
  `init_params(params)`, the parameters to start from in place of the random ones (EMA and
  optimizer state start from them too), and `init_extra(params)`, the extra parameter sets to keep
  beside params and EMA, made from the starting parameters.
  """
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  model = models.build(config.model, spec, nnx.Rngs(params=init_key, dropout=0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if init_params is not None:
    params = init_params(params)
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
    extra=init_extra(params) if init_extra is not None else None,
  )
  return ModelDef(graphdef, rest), state
