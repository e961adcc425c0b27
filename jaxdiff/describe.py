"""`--mode=describe`: what a config's network is and costs, without data, a run or its weights.

The parameter count and forward Gflops come from shapes alone (`jaxdiff.models.cost`); the last
line printed is one JSON object for scripts, the lines above it the same for people. The diffusion
space comes from the codec's shape alone (`codecs.shape`): for pixels that reads nothing, for
`codec.name=autoencoder` the config file of the autoencoder named by `autoencoder.path` (never its
weights), or without a path the config's autoencoder.downsampling_factor and latent_channels.
"""

from __future__ import annotations

import dataclasses
import json

import ml_collections

from jaxdiff import codecs
from jaxdiff.config import validate
from jaxdiff.models import table
from jaxdiff.models.cost import network_cost
from jaxdiff.run import network_spec


def describe(config: ml_collections.ConfigDict) -> dict:
  """The network of `config`: its settings, the data and diffusion shapes, parameters, Gflops."""
  validate(config)
  shape = codecs.shape(config)
  spec = network_spec(config, shape)  # reads only the codec's latent_shape
  cost = network_cost(config.model, spec)
  d = config.data
  return {
    "arch": config.model.arch,
    # the architecture's own keys as the network is built (a preset already applied)
    "model": dataclasses.asdict(table.typed_config(config.model)),
    "image_shape": [d.image_size, d.image_size, d.channels],
    "codec": config.codec.name,
    "diffusion_shape": [spec.image_size, spec.image_size, spec.in_channels],
    "diffusion_shape_from": shape.source or None,  # where the codec's shape was read
    "num_classes": spec.num_classes,
    "learn_sigma": spec.learn_sigma,
    "parameters": cost.parameters,
    "trainable_parameters": cost.trainable_parameters,
    "fixed_parameters": cost.fixed_parameters,
    "gflops": round(cost.gflops, 6),
  }


def _shape(shape) -> str:
  return "×".join(map(str, shape))


def summary(info: dict) -> str:
  """Lines for people: the network, the shapes, parameters and Gflops, and what they count."""
  settings = ", ".join(f"{k}={v}" for k, v in info["model"].items() if v not in ("", None))
  classes = f"{info['num_classes']} classes" if info["num_classes"] else "unconditional"
  variance = ", learned variance" if info["learn_sigma"] else ""
  source = info.get("diffusion_shape_from")
  source = f" (from {source})" if source else ""
  fixed = ""
  if info["fixed_parameters"]:
    fixed = (
      f" ({info['trainable_parameters']:,} trainable + {info['fixed_parameters']:,} fixed, which "
      "the reference implementation stores as parameters and jaxdiff computes)"
    )
  return "\n".join(
    [
      f"network     {info['arch']}: {settings}",
      (
        f"data        {_shape(info['image_shape'])} images, codec {info['codec']} -> diffusion "
        f"space {_shape(info['diffusion_shape'])}{source}, {classes}{variance}"
      ),
      f"parameters  {info['parameters']:,}{fixed}",
      (
        f"forward     {info['gflops']:.4g} Gflops per example (a multiply-add counted once, as "
        "papers do; XLA's cost analysis)"
      ),
    ]
  )


def report(config: ml_collections.ConfigDict) -> dict:
  """Prints `summary`, then the description as one JSON line (the last line); returns it."""
  info = describe(config)
  print(summary(info))
  print(json.dumps(info), flush=True)
  return info
