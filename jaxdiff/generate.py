"""The one generation path: `--mode=sample`, the samples of `--mode=eval` and the grids written
during training all draw images through `Generator.images`.

One jitted program per batch size: x_T ~ N(0, I) in the diffusion space, sharded along the batch,
the configured sampler (`sample.sampler`, from the sampler table) on the EMA network with
classifier-free guidance, then the codec's decode to images in [-1, 1].
"""

from __future__ import annotations

import io
import math

import chex
import jax
import ml_collections
import numpy as np
from PIL import Image

from jaxdiff import codecs, guidance, models, objectives, parallel, storage
from jaxdiff.samplers import table as sampler_table
from jaxdiff.schedules import Schedule
from jaxdiff.state import ModelDef

# Purposes folded into the run's root key, so no two uses share a key.
_GRID_KEY = 0x9D1D


def sample_key(config: ml_collections.ConfigDict, step: int):
  """The key of --mode=sample and --mode=eval for the checkpoint at `step`; batch b folds in b."""
  return jax.random.fold_in(jax.random.key(config.seed), step)


def grid_key(config: ml_collections.ConfigDict, step: int):
  """The key of the grid written at training step `step`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), _GRID_KEY), step)


def class_labels(config: ml_collections.ConfigDict, count: int, offset: int = 0):
  """Labels for samples offset … offset+count−1: the configured list repeated, or 0..K−1 cycled."""
  if not config.model.class_conditional:
    return None
  wanted = config.sample.class_labels
  cycle = np.asarray(wanted if wanted else range(config.data.num_classes), np.int32)
  return cycle[(offset + np.arange(count)) % len(cycle)]


def make_sample_fn(
  model_def: ModelDef,
  schedule: Schedule,
  config: ml_collections.ConfigDict,
  mesh,
  batch_size: int,
  *,
  codec: codecs.Codec,
  spec: models.NetworkSpec,
):
  """jit fn(params, codec_params, key, labels) -> images (batch_size, H, W, C) in data space,
  sharded over the batch."""
  s = config.sample
  sampler_table.check_options(s.sampler, s)
  if batch_size % mesh.devices.size:
    raise ValueError(
      f"sample.batch_size {batch_size} must be divisible by the "
      f"{mesh.devices.size} devices; change sample.batch_size."
    )
  shape = (batch_size, spec.image_size, spec.image_size, spec.in_channels)
  if s.guided_channels > spec.in_channels:
    raise ValueError(
      f"sample.guided_channels={s.guided_channels} exceeds the {spec.in_channels} channels the "
      "network predicts; use 0 (all) or fewer."
    )

  arch = models.architecture(config.model.arch)
  # a consistency-trained network knows only its grid's σ's: the sampler's defaults move onto them
  context = {"trained_sigmas": objectives.trained_sigmas(config)}

  def sample(params, codec_params, key, labels):
    if not arch.denoiser:  # a network that samples by itself (the autoencoder's prior)
      model = model_def.bind(params)
      model.eval()
      return arch.generate(model, key, batch_size, config.data.image_size, labels)
    # bound afresh at each call: the sampler calls it inside its scan (remat'ed blocks need that)
    network = model_def.inference_fn(params)
    if labels is None:
      model_fn = lambda x, t: network(x, t)
    elif s.guidance_scale == 1.0:
      model_fn = lambda x, t: network(x, t, labels)
    else:
      model_fn = guidance.classifier_free(
        network,
        labels,
        guidance_scale=s.guidance_scale,
        guidance_rescale=s.guidance_rescale,
        null_label=config.data.num_classes,
        num_guided_channels=s.guided_channels or spec.in_channels,
      )
    noise_key, sampler_key = jax.random.split(key)
    x_T = jax.lax.with_sharding_constraint(
      jax.random.normal(noise_key, shape), parallel.batch_sharded(mesh)
    )
    latents = sampler_table.run(
      s.sampler,
      model_fn,
      schedule,
      x_T,
      key=sampler_key,
      prediction=config.diffusion.prediction,
      options=s,
      context=context,
    )
    chex.assert_shape(latents, shape)  # a sampler from the table returns x_0 of x_T's shape
    images = codec.decode(codec_params, latents)
    data_shape = (batch_size, config.data.image_size, config.data.image_size, config.data.channels)
    chex.assert_shape(images, data_shape)  # the codec decodes to the data's shape
    return images

  rep, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  # None: the parameters stay as the train state holds them (replicated, or split over fsdp)
  return jax.jit(sample, in_shardings=(None, None, rep, batch), out_shardings=batch)


class Generator:
  """Draws uint8 images of a trained network, `batch_size` per call, on every process.

  Each device draws its rows of the batch; the images are then gathered on every process. The
  batch is padded to a multiple of the device count and the padding dropped: with JAX's
  partitionable random bits a row's noise does not depend on the batch's length, so sample i is
  the same on any number of devices and processes."""

  def __init__(self, run, batch_size: int):
    self.config, self.batch_size, self._codec = run.config, batch_size, run.codec
    self._padded = parallel.padded_batch(batch_size, run.mesh)
    self._labels_sharding = parallel.batch_sharded(run.mesh)
    self._fn = make_sample_fn(
      run.model_def,
      run.schedule,
      run.config,
      run.mesh,
      self._padded,
      codec=run.codec,
      spec=run.spec,
    )

  def images(self, params, key, offset: int = 0):
    """(uint8 NHWC images, labels or None) of samples offset … offset + batch_size − 1, drawn
    with `key`; the labels depend on the offset only."""
    labels = class_labels(self.config, self._padded, offset)
    placed = None if labels is None else parallel.global_from_host(labels, self._labels_sharding)
    images = parallel.to_host(self._fn(params, self._codec.params, key, placed))
    kept = slice(0, self.batch_size)  # the padding rows go
    return to_uint8(images[kept]), None if labels is None else labels[kept]

  def batch(self, params, key, b: int):
    """Batch b of a numbered sequence of samples: key fold_in(key, b), offset b·batch_size."""
    return self.images(params, jax.random.fold_in(key, b), b * self.batch_size)

  def program_memory(self, params, key) -> int:
    """Bytes the compiled sampling program holds at its peak, as XLA counts them (arguments +
    outputs + temporaries, `memory_analysis()`): the figure benchmarks print beside ms/image."""
    labels = class_labels(self.config, self._padded, 0)
    placed = None if labels is None else parallel.global_from_host(labels, self._labels_sharding)
    compiled = self._fn.lower(params, self._codec.params, key, placed).compile()
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats to uint8, rounding to the nearest level."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)


def save_grid(images: np.ndarray, path, *, scale: int = 2) -> None:
  """A near-square PNG grid of uint8 NHWC images, each upscaled `scale`× for viewing."""
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = image
  picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
  picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  buffer = io.BytesIO()
  picture.save(buffer, format="PNG")
  path = storage.path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  storage.write_bytes_whole(path, buffer.getvalue())
