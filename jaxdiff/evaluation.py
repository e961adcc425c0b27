"""--mode=eval: the test split's negative log-likelihood bound in bits/dim from the EMA parameters."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxdiff import likelihood, parallel
from jaxdiff.checkpoint import abstract
from jaxdiff.train.setup import TrainingError, make_dataset, setup


def evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Bits/dim of data.eval_split under the newest checkpoint's EMA model; appended to metrics.jsonl.

  eval.num_timesteps = 0 computes the full bound (every step, as the papers report it), K > 0 an
  unbiased estimate from K random steps per example. A class-conditional model is scored as
  p(x | y) with the true labels. Learned variances are used when the model has them, otherwise
  sample.variance.
  """
  run = setup(config, workdir)
  restored = run.checkpointer.restore_latest(abstract(run.state), with_data=False)
  if restored is None:
    raise TrainingError(
      f"no checkpoint in {run.checkpointer.directory}; train first with --mode=train."
    )
  step, state, _ = restored
  e, d = config.eval, config.data
  parallel.check_batch_size(e.batch_size, run.mesh)
  variance = "learned_range" if config.model.learn_sigma else config.sample.variance
  prediction = config.diffusion.prediction

  def batch_bpd(params, images, labels, key):
    model = run.model_def.bind(params)
    model.eval()
    model_fn = lambda x, t: model(x, t, labels)
    if e.num_timesteps:
      return likelihood.bits_per_dim_estimate(
        key,
        model_fn,
        images,
        schedule=run.schedule,
        num_timesteps=e.num_timesteps,
        prediction=prediction,
        variance=variance,
      )
    total, _, _ = likelihood.bits_per_dim(
      key, model_fn, images, schedule=run.schedule, prediction=prediction, variance=variance
    )
    return total

  rep, batch = parallel.replicated(run.mesh), parallel.batch_sharded(run.mesh)
  fn = jax.jit(batch_bpd, in_shardings=(None, batch, batch, rep), out_shardings=batch)
  dataset = make_dataset(
    config,
    d.eval_split,
    shuffle=False,
    num_epochs=1,
    batch_size=e.batch_size,
    drop_remainder=False,
    random_flip=False,
  )
  key = jax.random.fold_in(jax.random.key(config.seed), 0xE7A1)
  values = []
  for i, host in enumerate(tqdm.tqdm(dataset, unit="batch", disable=jax.process_index() != 0)):
    count = host["image"].shape[0]
    # Pad the last, short batch to the sharded batch size; the padding is dropped below.
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], e.batch_size - count, 0)])
    images = jnp.asarray(pad(host["image"]))
    labels = jnp.asarray(pad(host["label"])) if config.model.class_conditional else None
    values.append(
      np.asarray(fn(state.ema_params, images, labels, jax.random.fold_in(key, i)))[:count]
    )
    if e.num_examples and sum(map(len, values)) >= e.num_examples:
      break
  bpd = np.concatenate(values)[: e.num_examples or None]
  result = {
    "step": step,
    "eval_bpd": float(bpd.mean()),
    "eval_bpd_stderr": float(bpd.std() / np.sqrt(len(bpd))),
    "eval_examples": int(len(bpd)),
    "eval_timesteps": int(e.num_timesteps or run.schedule.num_timesteps),
    "eval_split": d.eval_split,
    "eval_conditional": bool(config.model.class_conditional),
  }
  if jax.process_index() == 0:
    with open(run.workdir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(result) + "\n")
    print(json.dumps(result))
  return result
