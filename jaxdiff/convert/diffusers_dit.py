"""Import a diffusers `DiTTransformer2DModel` folder (config.json + its safetensors weights).

diffusers re-implements facebookresearch/DiT with its shared transformer parts, so its tensors are
renamed onto the original's names (q, k and v concatenated into the original's fused qkv) and
loaded with `jaxdiff.convert.dit.load_dit_state_dict`. Reading needs no torch. What diffusers
computes differently, and jaxdiff's `DiT` reproduces through two options:

- its timestep sinusoids use `downscale_freq_shift=1` (frequencies 10000^(-k/127), the original's
  10000^(-k/128)): `timestep_freq_shift=1`;
- the LayerNorm before each block's MLP uses the config's `norm_eps` (default 1e-5), the original's
  1e-6 (the other LayerNorms keep 1e-6 in both): `mlp_norm_eps=norm_eps`.

The cos-first sinusoid order and the final layer's (shift, scale) order are the same in both. Each
diffusers block holds its own copy of the timestep and label embedders and the final layer uses
block 0's; jaxdiff's DiT has one embedder, so the copies must be equal (they are in every checkpoint
converted from the original), which the loader checks.

The legacy `Transformer2DModel` class with norm_type "ada_norm_zero" (e.g. facebook/DiT-XL-2-256)
is this model under its old name: diffusers itself loads it as a DiTTransformer2DModel and ignores
the old class's other keys, and so does this loader.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from jaxdiff.convert.converted import new_output_folder, save_converted
from jaxdiff.convert.diffusers_unet import read_diffusers_folder
from jaxdiff.convert.dit import abstract_dit, load_dit_state_dict
from jaxdiff.models.dit import DiT

# `DiTTransformer2DModel.__init__` defaults (diffusers 0.42): a key missing from config.json takes
# these, as in diffusers itself.
_DIFFUSERS_DEFAULTS = {
  "num_attention_heads": 16,
  "attention_head_dim": 72,
  "in_channels": 4,
  "out_channels": None,
  "num_layers": 28,
  "dropout": 0.0,
  "norm_num_groups": 32,  # unused by the DiT's layers
  "attention_bias": True,
  "sample_size": 32,
  "patch_size": 2,
  "activation_fn": "gelu-approximate",
  "num_embeds_ada_norm": 1000,
  "upcast_attention": False,  # precision only: jaxdiff's attention softmax is float32 anyway
  "norm_type": "ada_norm_zero",
  "norm_elementwise_affine": False,
  "norm_eps": 1e-5,
}
# settings that jaxdiff's DiT has only in the original's form
_REQUIRED = {
  "dropout": 0.0,
  "attention_bias": True,
  "activation_fn": "gelu-approximate",
  "norm_type": "ada_norm_zero",
  "norm_elementwise_affine": False,
}
_LEGACY_CLASS = "Transformer2DModel"

_EMBEDDER = re.compile(r"transformer_blocks\.(\d+)\.norm1\.emb\.(.*)")
_QKV = re.compile(r"transformer_blocks\.(\d+)\.attn1\.to_([qkv])\.(weight|bias)")
# diffusers name pattern -> the original's (block 0's embedder copy stands for all of them)
_RENAMES = [
  (r"pos_embed\.proj\.(.*)", r"x_embedder.proj.\1"),
  (r"transformer_blocks\.0\.norm1\.emb\.timestep_embedder\.linear_1\.(.*)", r"t_embedder.mlp.0.\1"),
  (r"transformer_blocks\.0\.norm1\.emb\.timestep_embedder\.linear_2\.(.*)", r"t_embedder.mlp.2.\1"),
  (r"transformer_blocks\.0\.norm1\.emb\.class_embedder\.(.*)", r"y_embedder.\1"),
  (r"transformer_blocks\.(\d+)\.norm1\.linear\.(.*)", r"blocks.\1.adaLN_modulation.1.\2"),
  (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.(.*)", r"blocks.\1.attn.proj.\2"),
  (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(.*)", r"blocks.\1.mlp.fc1.\2"),
  (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(.*)", r"blocks.\1.mlp.fc2.\2"),
  (r"proj_out_1\.(.*)", r"final_layer.adaLN_modulation.1.\1"),
  (r"proj_out_2\.(.*)", r"final_layer.linear.\1"),
]


def _require(condition: bool, sentence: str) -> None:
  if not condition:
    raise ValueError(sentence)


def dit_kwargs_from_diffusers_config(cfg: Mapping) -> dict:
  """`DiT` keyword arguments (JSON-serialisable, without dtype/rngs) equivalent to a diffusers
  `DiTTransformer2DModel` config; ValueError naming the setting for anything jaxdiff's DiT cannot
  express."""
  name = cfg.get("_class_name", "DiTTransformer2DModel")
  legacy = name == _LEGACY_CLASS and cfg.get("norm_type") == "ada_norm_zero"
  _require(
    name == "DiTTransformer2DModel" or legacy,
    f"Only DiTTransformer2DModel checkpoints are supported, this one is a {name}.",
  )
  unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_DEFAULTS)
  _require(
    legacy or not unknown,
    f"Unsupported DiTTransformer2DModel config keys {unknown}: remove them if they are irrelevant.",
  )
  c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in cfg.items() if k in _DIFFUSERS_DEFAULTS}}
  for key, supported in _REQUIRED.items():
    _require(
      c[key] == supported, f"Unsupported {key}={c[key]!r}: jaxdiff's DiT needs {supported!r}."
    )
  in_channels = c["in_channels"]
  out_channels = in_channels if c["out_channels"] is None else c["out_channels"]
  _require(
    out_channels in (in_channels, 2 * in_channels),
    f"Unsupported out_channels={out_channels}: jaxdiff's DiT outputs in_channels ({in_channels}) "
    "or twice that (learned variance).",
  )
  _require(
    isinstance(c["sample_size"], int),
    f"Unsupported sample_size={c['sample_size']!r}: needs an int.",
  )
  _require(
    isinstance(c["num_embeds_ada_norm"], int) and c["num_embeds_ada_norm"] >= 1,
    f"Unsupported num_embeds_ada_norm={c['num_embeds_ada_norm']!r}: needs a number of classes.",
  )
  return dict(
    in_channels=in_channels,
    image_size=c["sample_size"],
    patch_size=c["patch_size"],
    hidden_size=c["num_attention_heads"] * c["attention_head_dim"],
    depth=c["num_layers"],
    num_heads=c["num_attention_heads"],
    mlp_ratio=4.0,  # FeedForward's default mult, which DiTTransformer2DModel does not change
    # the label table has num_embeds_ada_norm + 1 rows, the last the null class (as jaxdiff's)
    num_classes=c["num_embeds_ada_norm"],
    learn_sigma=out_channels == 2 * in_channels,
    timestep_freq_shift=1.0,
    mlp_norm_eps=float(c["norm_eps"]),
  )


def _check_tied_embedders(tensors: Mapping[str, np.ndarray]) -> None:
  for name, value in tensors.items():
    m = _EMBEDDER.fullmatch(name)
    if m and m[1] != "0":
      first = f"transformer_blocks.0.norm1.emb.{m[2]}"
      _require(
        first in tensors and np.array_equal(value, tensors[first]),
        f"{name} differs from block 0's copy: jaxdiff's DiT has one timestep and label embedder "
        "shared by all blocks, so it cannot hold this checkpoint.",
      )


def original_state_dict(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A diffusers DiT state dict under the original facebookresearch/DiT names (see the module
  docstring); the embedder copies of blocks 1… must equal block 0's and are dropped."""
  _check_tied_embedders(tensors)
  out, qkv, unused = {}, {}, []
  for name, value in tensors.items():
    if m := _QKV.fullmatch(name):
      qkv.setdefault((m[1], m[3]), {})[m[2]] = value
      continue
    if _EMBEDDER.fullmatch(name) and not name.startswith("transformer_blocks.0."):
      continue
    for pattern, replacement in _RENAMES:
      if re.fullmatch(pattern, name):
        out[re.sub(pattern, replacement, name)] = value
        break
    else:
      unused.append(name)
  _require(not unused, f"Tensors with no DiT parameter: {sorted(unused)[:8]}.")
  for (block, leaf), parts in qkv.items():
    _require(len(parts) == 3, f"Block {block}'s attention lacks some of to_q, to_k, to_v.")
    # timm's fused projection outputs [q | k | v], as the original splits it
    out[f"blocks.{block}.attn.qkv.{leaf}"] = np.concatenate([parts[k] for k in "qkv"])
  return out


def _convert_folder(path: str | os.PathLike, *, dtype) -> tuple[dict, DiT]:
  kwargs, tensors = read_diffusers_folder(
    path, "DiTTransformer2DModel", dit_kwargs_from_diffusers_config
  )
  state_dict = original_state_dict(tensors)
  try:
    model = load_dit_state_dict(abstract_dit(**kwargs, dtype=dtype), state_dict)
  except ValueError as e:
    raise ValueError(f"The checkpoint does not match its config.json: {e}") from e
  return kwargs, model


def load_diffusers_dit(path: str | os.PathLike, *, dtype=jnp.float32) -> DiT:
  """Build jaxdiff's DiT from a diffusers `DiTTransformer2DModel` folder."""
  return _convert_folder(path, dtype=dtype)[1]


def convert_diffusers_dit(
  src: str | os.PathLike, dst: str | os.PathLike, *, prediction: str | None = None
) -> None:
  """Convert the diffusers folder `src` into a new converted folder `dst`; `prediction` ('flow'
  for a flow-matching DiT of the same layout) is recorded there."""
  new_output_folder(dst)  # refused before the conversion
  kwargs, model = _convert_folder(src, dtype=jnp.float32)
  save_converted(dst, "dit", kwargs, model, prediction=prediction)
