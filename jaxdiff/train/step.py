"""The pure train step: ε-MSE loss, gradient, AdamW update and EMA, jitted over a data mesh."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxdiff import diffusion, importance, likelihood, parallel
from jaxdiff.schedules import Schedule
from jaxdiff.train.state import ModelDef, TrainState, lr_schedule


def ema_decay(config: ml_collections.ConfigDict, step):
  """The configured decay; with train.ema_warmup, min(decay, (1 + n)/(10 + n)) so early averages
  are not dominated by the random initialization."""
  decay = config.train.ema_decay
  if config.train.ema_warmup:
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jnp.asarray(decay, jnp.float32)


def train_step(
  state: TrainState,
  batch: dict,
  *,
  model_def: ModelDef,
  schedule: Schedule,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
):
  """One optimizer update on a global batch {'image': NHWC in [-1, 1], 'label'?}."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  loss_key, dropout_key, label_key = jax.random.split(key, 3)
  labels = batch.get("label") if config.model.class_conditional else None
  if labels is not None and config.model.class_dropout > 0:
    # Classifier-free guidance training: replace a fraction of labels by the null class.
    drop = jax.random.bernoulli(label_key, config.model.class_dropout, labels.shape)
    labels = jnp.where(drop, config.data.num_classes, labels)

  loss_kwargs = {
    "schedule": schedule,
    "prediction": config.diffusion.prediction,
    "min_snr_gamma": config.diffusion.min_snr_gamma or None,
  }
  if config.diffusion.loss == "hybrid":
    objective = functools.partial(likelihood.hybrid_loss, vlb_weight=config.diffusion.vlb_weight)
  elif config.diffusion.loss == "vlb":
    objective = likelihood.vlb_loss
    del loss_kwargs["min_snr_gamma"]
  else:
    objective = diffusion.mse_loss
  if state.loss_history is not None:
    t_key, loss_key = jax.random.split(loss_key)
    t, weights = importance.sample(t_key, state.loss_history, batch["image"].shape[0])
    loss_kwargs.update(t=t, weights=weights)

  def loss_fn(params):
    model = model_def.bind(params)
    nnx.reseed(model, dropout=dropout_key)
    model_fn = lambda x, t: model(x, t, labels)
    return objective(loss_key, model_fn, batch["image"], **loss_kwargs)

  (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  loss_history = state.loss_history
  if loss_history is not None:
    loss_history = importance.update(loss_history, loss_kwargs["t"], per_example)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay(config, state.step)
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
  metrics = {
    "loss": loss,
    "grad_norm": optax.tree.norm(grads),
    "lr": lr_schedule(config)(state.step),
  }
  return state.replace(
    step=state.step + 1,
    params=params,
    ema_params=ema,
    opt_state=opt_state,
    loss_history=loss_history,
  ), metrics


def make_train_fn(mesh, state: TrainState, *, steps_per_call: int, **step_kwargs):
  """A jitted fn(state, batches) -> (state, metrics) running `steps_per_call` steps unrolled.

  `batches` stacks the steps' global batches on a leading axis. The loop is a Python loop traced
  into one program rather than a `lax.scan`: XLA:CPU runs convolution backward inside a while
  loop on a slow path (~20× slower), while an unrolled program of a few steps is faster than one
  step per call. Metrics come back stacked per step. The state's buffers are donated.
  """
  step = functools.partial(train_step, **step_kwargs)

  def run(state, batches):
    history = []
    for i in range(steps_per_call):
      state, metrics = step(state, jax.tree.map(lambda b: b[i], batches))
      history.append(metrics)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *history)

  state_sharding = parallel.state_shardings(mesh, state)
  return jax.jit(
    run,
    in_shardings=(state_sharding, parallel.stacked_batch_sharded(mesh)),
    out_shardings=(state_sharding, parallel.replicated(mesh)),
    donate_argnums=0,
  )
