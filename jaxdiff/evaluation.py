"""--mode=eval: from the EMA parameters, the test split's negative log-likelihood bound in bits/dim
and the sample quality of N samples (FID, IS, precision/recall with Inception weights; on digits
without them, a small digits classifier's Fréchet distance, which is not FID; on stacked digits,
the modes that classifier finds per channel and their histogram's KL to uniform)."""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np
import tqdm

from jaxdiff import data, generate, likelihood, metrics, objectives, parallel, storage
from jaxdiff.objectives import probability_flow
from jaxdiff.run import RunError, make_dataset, prepare_folder, restore_for_inference, setup


def evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """The newest checkpoint's EMA model: eval.bits_per_dim → the bound on data.eval_split (a flow
  model's bits/dim through its probability-flow ODE); eval.ode_bits_per_dim → a diffusion model's
  ODE bits/dim beside its bound; eval.num_samples > 0 → sample quality. One JSON line, printed
  and appended to metrics.jsonl."""
  run = setup(config, workdir)
  asked = [k for k in ("bits_per_dim", "ode_bits_per_dim") if config.eval[k]]
  if asked and not run.codec.pixel_space:
    raise RunError(
      f"eval.{asked[0]} is a bound on pixels, and this run diffuses in the latent space of "
      f"codec {config.codec.name!r}; set --config.eval.{asked[0]}=False."
    )
  step, state = restore_for_inference(run)
  result = {"step": step}
  if config.eval.bits_per_dim:
    result.update(_bits_per_dim(config, run, state))
  if config.eval.ode_bits_per_dim:
    result.update(_ode_bits_per_dim(config, run, state))
  if config.eval.num_samples:
    result.update(_sample_quality(config, run, state, step))
  if jax.process_index() == 0:
    storage.append_text(run.workdir / "metrics.jsonl", json.dumps(result) + "\n")
    print(json.dumps(result))
  return result


def _bits_per_dim(config, run, state) -> dict:
  """Bits/dim of data.eval_split under the EMA model.

  eval.num_timesteps = 0 computes the full bound (every step, as the papers report it), K > 0 an
  unbiased estimate from K random steps per example. A class-conditional model is scored as
  p(x | y) with the true labels. Learned variances are used when the model has them, otherwise
  sample.variance.
  """
  e, d = config.eval, config.data
  parallel.check_batch_size(e.batch_size, run.mesh)
  variance = "learned_range" if config.model.learn_sigma else config.sample.variance
  prediction = config.diffusion.prediction

  own_bound = objectives.OBJECTIVES[config.diffusion.loss].bound  # e.g. the autoencoder's ELBO
  own_bound = own_bound(config, run.schedule) if own_bound is not None else None

  def batch_bpd(params, images, labels, key):
    if own_bound is not None:
      model = run.model_def.bind(params)
      model.eval()
      return own_bound(model, images, labels, key)
    # bound afresh at each call: the bound's steps call it inside a scan (remat'ed blocks)
    network = run.model_def.inference_fn(params)
    model_fn = lambda x, t: network(x, t, labels)
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

  bpd = _over_eval_split(config, run, state, batch_bpd)
  return {
    **_summary("eval_bpd", bpd),
    "eval_examples": int(len(bpd)),
    "eval_timesteps": None if own_bound else int(e.num_timesteps or run.schedule.num_timesteps),
    "eval_bound": config.diffusion.loss if own_bound else "diffusion",
    "eval_split": d.eval_split,
    "eval_conditional": bool(config.model.class_conditional),
  }


def _ode_bits_per_dim(config, run, state) -> dict:
  """Bits/dim of data.eval_split through the EMA model's probability-flow ODE (eval.ode_*), beside
  a diffusion model's bound: the same images, the labels as the bound takes them."""
  e = config.eval
  parallel.check_batch_size(e.batch_size, run.mesh)
  ode_bound = probability_flow.bound(config, run.schedule)

  def batch_bpd(params, images, labels, key):
    model = run.model_def.bind(params)
    model.eval()
    return ode_bound(model, images, labels, key)

  bpd = _over_eval_split(config, run, state, batch_bpd)
  return {
    **_summary("eval_ode_bpd", bpd),
    "eval_ode_divergence": e.ode_divergence,
    "eval_ode_probes": e.ode_probes if e.ode_divergence != "exact" else None,
    "eval_ode_solver": e.ode_solver,
  }


def _summary(name, bpd) -> dict:
  """Mean and standard error over images of per-image bits/dim (N,), or of (N, K) Hutchinson
  estimates averaged over their K probes; then also the spread over probes: `_probe_std`, the
  standard deviation of one probe's estimate of one image (mean over images), and
  `_probe_stderr`, the standard error that the probes leave in the mean (std over probes of the
  per-probe means, / √K)."""
  per_image = bpd.mean(axis=1) if bpd.ndim == 2 else bpd
  out = {
    name: float(per_image.mean()),
    f"{name}_stderr": float(per_image.std() / np.sqrt(len(bpd))),
  }
  if bpd.ndim == 2:
    probes = bpd.shape[1]
    spread = probes > 1
    out[f"{name}_probe_std"] = float(bpd.std(axis=1, ddof=1).mean()) if spread else None
    out[f"{name}_probe_stderr"] = (
      float(bpd.mean(axis=0).std(ddof=1) / np.sqrt(probes)) if spread else None
    )
  return out


def _over_eval_split(config, run, state, batch_fn) -> np.ndarray:
  """`batch_fn(params, images, labels, key)` of the EMA parameters over data.eval_split (the first
  eval.num_examples), in batches of eval.batch_size: its per-image rows, concatenated."""
  e, d = config.eval, config.data
  rep, batch = parallel.replicated(run.mesh), parallel.batch_sharded(run.mesh)
  fn = jax.jit(batch_fn, in_shardings=(None, batch, batch, rep), out_shardings=batch)
  # Every process reads the same batches, whole, and places the rows its devices hold: batch i
  # is the same on any number of processes, and so is its key.
  dataset = make_dataset(
    config,
    d.eval_split,
    shuffle=False,
    num_epochs=1,
    batch_size=e.batch_size,
    drop_remainder=False,
    random_flip=False,
    shard_options=data.grain_shard(0, 1),
  )
  key = jax.random.fold_in(jax.random.key(config.seed), 0xE7A1)
  values = []
  for i, host in enumerate(tqdm.tqdm(dataset, unit="batch", disable=jax.process_index() != 0)):
    count = host["image"].shape[0]
    # Pad the last, short batch to the sharded batch size; the padding is dropped below.
    pad = lambda a: parallel.global_from_host(
      np.concatenate([a, np.repeat(a[-1:], e.batch_size - count, 0)]), batch
    )
    images = pad(host["image"])
    labels = pad(host["label"]) if config.model.class_conditional else None
    bpd = fn(state.ema_params, images, labels, jax.random.fold_in(key, i))
    values.append(parallel.to_host(bpd)[:count])
    if e.num_examples and sum(map(len, values)) >= e.num_examples:
      break
  return np.concatenate(values)[: e.num_examples or None]


def draw_samples(config, run, state, step) -> np.ndarray:
  """The first eval.num_samples images --mode=sample draws (the same generator, keys, labels)."""
  generator = generate.Generator(run, config.sample.batch_size)
  key = generate.sample_key(config, step)
  count = config.eval.num_samples
  batches = []
  num_batches = -(-count // generator.batch_size)
  for b in tqdm.trange(num_batches, unit="batch", disable=jax.process_index() != 0):
    batches.append(generator.batch(state.ema_params, key, b)[0])
  return np.concatenate(batches)[:count]


def _sample_quality(config, run, state, step) -> dict:
  e, d = config.eval, config.data
  own_scores = None if d.folder else _WITHOUT_INCEPTION.get(d.name)  # data.name unread then
  if not e.inception_weights and own_scores is None:
    raise RunError(
      "eval.num_samples > 0 needs eval.inception_weights (a safetensors file made by `python -m "
      "jaxdiff.convert pytorch-fid-inception`), or set eval.num_samples=0."
    )
  model = None
  if e.inception_weights and jax.process_index() == 0:
    model = metrics.load_inception(e.inception_weights)
  images = draw_samples(config, run, state, step)  # every process draws its devices' rows
  if jax.process_index() != 0:
    return {}  # the scores need no collective: process 0 computes and reports them
  out = {"eval_samples": int(len(images)), "eval_guidance_scale": config.sample.guidance_scale}
  if not e.inception_weights:
    out.update(own_scores(images))
    return out
  if config.eval.reference_batch:
    batch = metrics.read_reference_batch(config.eval.reference_batch)
    if batch.images is None:
      # precomputed mu/sigma only: FID and IS; precision/recall need the reference's features
      features, logits = metrics.inception_features(model, images)
      out["fid"] = metrics.frechet_distance(
        *metrics.feature_statistics(features), *batch.statistics
      )
      out["inception_score"], out["inception_score_std"] = metrics.inception_score(logits)
      return out
  out.update(metrics.sample_metrics(model, images, _reference(config, run, model)))
  return out


def _digits_scores(images) -> dict:
  """No Inception on digits: a classifier jaxdiff fits on the test split (never trained on)."""
  from jaxdiff.metrics import digits_classifier

  features = digits_classifier.DigitsFeatures()
  return {
    "digits_classifier_fd": metrics.fid_from_features(
      features.features(images), features.train_features
    ),
    "digits_classifier_fd_real": _real_digits_floor(features, len(images)),
    "digits_classifier_fd_note": (
      "Fréchet distance to the train split in the hidden layer of a 64-unit digits MLP fit on "
      "the test split: not FID; compare only at equal eval.num_samples. _real: the same for as "
      "many real test-split digits (mean of 5 draws), the floor at this N"
    ),
  }


def _stacked_digits_scores(images) -> dict:
  """Stacked digits' mode count, by the same classifier applied per channel (metrics/modes.py)."""
  counter = metrics.ModeCounter()
  score, real = counter(images), counter.real_floor(len(images)) or {}
  return {
    "modes": score["modes"],
    "modes_kl_to_uniform": score["kl_to_uniform"],
    "modes_real": real.get("modes"),
    "modes_kl_to_uniform_real": real.get("kl_to_uniform"),
    "modes_note": (
      "digit triples (of 1000) the samples cover, by the digits classifier per channel, and "
      "KL(their histogram || uniform) in nats; compare only at equal eval.num_samples (the papers: "
      "26,000). _real: the same for as many real train-split triples, the floor at this N"
    ),
  }


# The datasets scored without eval.inception_weights, by classifiers jaxdiff fits in seconds.
_WITHOUT_INCEPTION = {
  data.Digits.name: _digits_scores,
  data.StackedDigits.name: _stacked_digits_scores,
}


def _real_digits_floor(features, count: int) -> float | None:
  """The classifier distance of `count` real test-split digits (mean of 5 random subsets)."""
  from jaxdiff.metrics import digits_classifier

  test_images, _ = digits_classifier.digits_split("test")
  if not 1 < count <= len(test_images):
    return None
  rng = np.random.default_rng(0)
  test_features = features.features(test_images)
  draws = [rng.choice(len(test_images), count, replace=False) for _ in range(5)]
  return float(
    np.mean([metrics.fid_from_features(test_features[i], features.train_features) for i in draws])
  )


def _reference(config, run, model) -> metrics.ReferenceStatistics:
  """Inception statistics of eval.reference_batch or of the training split, cached in the workdir."""
  e, d = config.eval, config.data
  if e.reference_batch:
    images = metrics.read_reference_batch(e.reference_batch).images
    load, name = (lambda: images), pathlib.Path(e.reference_batch).stem
  else:

    def load():
      dataset = make_dataset(
        config,
        d.split,
        shuffle=False,
        num_epochs=1,
        batch_size=e.batch_size,
        drop_remainder=False,
        random_flip=False,
        shard_options=data.grain_shard(0, 1),  # the whole split (only process 0 scores)
      )
      return np.concatenate([generate.to_uint8(b["image"]) for b in dataset])

    source = f"folder{prepare_folder(config).fingerprint[:12]}" if d.folder else d.name
    name = f"{source}_{d.split}_{d.image_size}px"
  return metrics.reference_statistics(run.workdir / "reference_stats", name, load, model=model)
