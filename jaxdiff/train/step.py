"""The pure train step: the objective's loss and gradient, AdamW update and EMA, jitted over a
data mesh. It knows no loss, network or codec by name: they come from their tables."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxdiff import codecs, importance, parallel
from jaxdiff.objectives import Objective
from jaxdiff.state import ModelDef, TrainState, lr_schedule

# Purpose folded into a step's key for the codec's encoder (a sampled latent), apart from the
# three keys the step splits off, so pixel runs draw exactly what they always drew.
_CODEC_KEY = 0xC0DEC


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
  codec_params=None,
  objective_params=None,
  *,
  model_def: ModelDef,
  objective: Objective,
  codec: codecs.Codec,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
):
  """One optimizer update on a global batch {'image': NHWC in [-1, 1], 'label'?}, or with a latent
  cache {'moments': the posterior's (mean, log-variance) on the channel axis, 'label'?}."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  loss_key, dropout_key, label_key = jax.random.split(key, 3)
  labels = batch.get("label") if config.model.class_conditional else None
  if labels is not None and config.model.class_dropout > 0:
    # Classifier-free guidance training: replace a fraction of labels by the null class.
    drop = jax.random.bernoulli(label_key, config.model.class_dropout, labels.shape)
    labels = jnp.where(drop, config.data.num_classes, labels)
  codec_key = jax.random.fold_in(key, _CODEC_KEY)
  if "moments" in batch:  # a latent cache's q(z|x) (autoencoder.cache): the encoder ran once
    chex.assert_rank(batch["moments"], 4)
    x0 = codec.from_moments(batch["moments"], codec_key)
  else:
    chex.assert_rank(batch["image"], 4)  # NHWC
    x0 = codec.encode(codec_params, batch["image"], codec_key)

  t = weights = None
  if state.loss_history is not None:
    t_key, loss_key = jax.random.split(loss_key)
    t, weights = importance.sample(t_key, state.loss_history, x0.shape[0])

  def frozen(params):
    network = model_def.inference_fn(params)
    return lambda x, t, y=labels, **kwargs: network(x, t, y, **kwargs)

  # Extra parameter sets are closed over: they take part in the loss and get no gradient.
  others = {name: frozen(params) for name, params in (state.extra or {}).items()}

  def loss_fn(params):
    model = model_def.bind(params)
    nnx.reseed(model, dropout=dropout_key)
    networks = {**others, "model": lambda x, t, y=labels, **kwargs: model(x, t, y, **kwargs)}
    # what an objective may ask for by name
    context = {"step": state.step, "labels": labels, "frozen": objective_params}
    loss, per_example, metrics = objective.loss(
      loss_key, networks, x0, t=t, weights=weights, **{k: context[k] for k in objective.context}
    )
    return loss, (per_example, metrics)

  (loss, (per_example, objective_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  loss_history = state.loss_history
  if loss_history is not None:
    loss_history = importance.update(loss_history, t, per_example)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay(config, state.step)
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
  extra = state.extra
  if extra is not None and objective.update_extra is not None:
    extra = objective.update_extra(extra, params, state.step)
  metrics = {
    "loss": loss,
    "grad_norm": optax.tree.norm(grads),
    "lr": lr_schedule(config)(state.step),
    **objective_metrics,
  }
  return state.replace(
    step=state.step + 1,
    params=params,
    ema_params=ema,
    opt_state=opt_state,
    loss_history=loss_history,
    extra=extra,
  ), metrics


def make_train_fn(mesh, state: TrainState, *, steps_per_call: int, **step_kwargs):
  """A jitted fn(state, batches, codec_params) -> (state, metrics) running `steps_per_call` steps
  unrolled; codec_params is the codec's `params` (None for pixels); the objective's
  `frozen_params` go in as a further argument. `fn.lower` takes the same three; the program it
  compiles takes that fourth argument too: `compiled(state, batches, codec_params,
  fn.frozen_params)`.

  `batches` stacks the steps' global batches on a leading axis. The loop is a Python loop traced
  into one program rather than a `lax.scan`: XLA:CPU runs convolution backward inside a while
  loop on a slow path (~20× slower), while an unrolled program of a few steps is faster than one
  step per call. Metrics come back stacked per step. The state's buffers are donated.
  """
  step = functools.partial(train_step, **step_kwargs)

  def run(state, batches, codec_params, objective_params):
    history = []
    for i in range(steps_per_call):
      batch = jax.tree.map(lambda b: b[i], batches)
      state, metrics = step(state, batch, codec_params, objective_params)
      history.append(metrics)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *history)

  state_sharding = parallel.state_shardings(mesh, state)
  jitted = jax.jit(
    run,
    # None: the codec's and the objective's frozen parameters stay where they were placed
    in_shardings=(state_sharding, parallel.stacked_batch_sharded(mesh), None, None),
    out_shardings=(state_sharding, parallel.replicated(mesh)),
    donate_argnums=0,
  )
  frozen = step_kwargs["objective"].frozen_params

  def call(state, batches, codec_params):
    return jitted(state, batches, codec_params, frozen)

  call.lower = lambda state, batches, codec_params: jitted.lower(
    state, batches, codec_params, frozen
  )
  call.frozen_params = frozen
  return call
