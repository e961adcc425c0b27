"""Import a diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors).

jaxdiff's `UNet` mirrors `UNet2DModel`'s module tree, so each parameter's diffusers name is derived
from its own path (`down_blocks.0.resnets.1.conv1.kernel` -> `down_blocks.0.resnets.1.conv1.weight`),
and only the layouts change: conv OIHW -> HWIO, linear (out, in) -> (in, out). Reading needs no torch.

A converted model is saved in jaxdiff's converted-folder format ("arch": "unet" and the `UNet`
kwargs, plus an Orbax checkpoint of its parameters; `jaxdiff.convert.converted`), which
`load_converted` rebuilds through the network table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx
from safetensors import SafetensorError

from jaxdiff import storage
from jaxdiff.convert.converted import new_output_folder, save_converted
from jaxdiff.models import UNet, abstract_unet

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"

# `UNet2DModel.__init__` defaults (diffusers 0.42): a key missing from config.json takes these, as in
# diffusers itself. Keys outside this table are refused: a newer feature could change the network.
_DIFFUSERS_DEFAULTS = {
  "sample_size": None,
  "in_channels": 3,
  "out_channels": 3,
  "center_input_sample": False,
  "time_embedding_type": "positional",
  "time_embedding_dim": None,
  "freq_shift": 0,
  "flip_sin_to_cos": True,
  "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
  "mid_block_type": "UNetMidBlock2D",
  "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
  "block_out_channels": (224, 448, 672, 896),
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "downsample_padding": 1,
  "downsample_type": "conv",
  "upsample_type": "conv",
  "dropout": 0.0,
  "act_fn": "silu",
  "attention_head_dim": 8,
  "norm_num_groups": 32,
  "attn_norm_num_groups": None,
  "norm_eps": 1e-5,
  "resnet_time_scale_shift": "default",
  "add_attention": True,
  "class_embed_type": None,
  "num_class_embeds": None,
  "num_train_timesteps": None,
}

# Where jaxdiff's module names differ from diffusers' (diffusers wraps these in one-element lists).
_RENAMED_MODULES = {
  "downsample": "downsamplers.0",
  "upsample": "upsamplers.0",
  "to_out": "to_out.0",
}
_RENAMED_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# Checkpoints written before diffusers' `Attention` refactor (e.g. google/ddpm-cifar10-32).
_LEGACY_ATTENTION = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
_LEGACY_TO_MODERN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _require(condition: bool, sentence: str) -> None:
  if not condition:
    raise ValueError(sentence)


def unet_kwargs_from_diffusers_config(cfg: Mapping) -> dict:
  """`UNet` keyword arguments (JSON-serialisable, without dtype/rngs) equivalent to a diffusers
  `UNet2DModel` config; ValueError naming the setting for anything jaxdiff's UNet cannot express.
  """
  _require(
    cfg.get("_class_name", "UNet2DModel") == "UNet2DModel",
    f"Only UNet2DModel checkpoints are supported, this one is a {cfg.get('_class_name')}.",
  )
  unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_DEFAULTS)
  _require(
    not unknown,
    f"Unsupported UNet2DModel config keys {unknown}: remove them if they are irrelevant.",
  )
  c = {**_DIFFUSERS_DEFAULTS, **cfg}

  for key, supported in [
    ("time_embedding_type", "positional"),
    ("center_input_sample", False),
    ("mid_block_type", "UNetMidBlock2D"),
    ("mid_block_scale_factor", 1),
    ("downsample_type", "conv"),
    ("upsample_type", "conv"),
    ("add_attention", True),
    ("class_embed_type", None),
  ]:
    _require(
      c[key] == supported,
      f"Unsupported {key}={c[key]!r}: jaxdiff's UNet needs {supported!r}.",
    )
  _require(
    c["act_fn"] in ("silu", "swish"),
    f"Unsupported act_fn={c['act_fn']!r}: jaxdiff's UNet uses silu.",
  )
  _require(
    c["resnet_time_scale_shift"] in ("default", "scale_shift"),
    f"Unsupported resnet_time_scale_shift={c['resnet_time_scale_shift']!r}: use 'default' or 'scale_shift'.",
  )
  # diffusers drops the GroupNorm of the mid-block attention for scale-shift models unless
  # attn_norm_num_groups is given; jaxdiff's attention always normalises with norm_num_groups.
  attn_groups = c["attn_norm_num_groups"]
  if attn_groups is None and c["resnet_time_scale_shift"] == "default":
    attn_groups = c["norm_num_groups"]
  _require(
    attn_groups == c["norm_num_groups"],
    f"Unsupported attn_norm_num_groups={c['attn_norm_num_groups']!r} with resnet_time_scale_shift="
    f"{c['resnet_time_scale_shift']!r}: jaxdiff's mid-block attention needs norm_num_groups groups.",
  )

  channels = list(c["block_out_channels"])
  base = channels[0]
  _require(
    c["time_embedding_dim"] in (None, 4 * base),
    f"Unsupported time_embedding_dim={c['time_embedding_dim']}: jaxdiff uses 4 * block_out_channels[0].",
  )
  _require(
    all(ch % base == 0 for ch in channels),
    f"block_out_channels {channels} must all be multiples of the first one.",
  )
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  _require(
    len(down) == len(up) == len(channels),
    "down_block_types, up_block_types and block_out_channels must have the same length.",
  )
  _require(
    set(down) <= {"DownBlock2D", "AttnDownBlock2D"} and set(up) <= {"UpBlock2D", "AttnUpBlock2D"},
    f"Unsupported block types {down} / {up}: only (Attn)DownBlock2D and (Attn)UpBlock2D are.",
  )
  attention = [kind == "AttnDownBlock2D" for kind in down]
  _require(
    attention[::-1] == [kind == "AttnUpBlock2D" for kind in up],
    f"Up blocks {up} must mirror down blocks {down} in where they have attention.",
  )
  size = c["sample_size"]
  if isinstance(size, (list, tuple)):
    _require(len(size) == 2 and size[0] == size[1], f"Unsupported non-square sample_size={size}.")
    size = size[0]
  _require(
    isinstance(size, int), "The config needs an integer sample_size to place attention levels."
  )
  num_classes = c["num_class_embeds"]
  _require(
    num_classes is None or num_classes >= 1,
    f"Unsupported num_class_embeds={num_classes}: needs >= 1.",
  )

  return dict(
    in_channels=c["in_channels"],
    out_channels=c["out_channels"],
    base_channels=base,
    channel_mult=[ch // base for ch in channels],
    num_res_blocks=c["layers_per_block"],
    attention_resolutions=[size // 2**i for i, a in enumerate(attention) if a],
    image_size=size,
    head_channels=c["attention_head_dim"],
    dropout=c["dropout"],
    # diffusers' table has num_class_embeds rows; jaxdiff reads its last row as the null class.
    num_classes=None if num_classes is None else num_classes - 1,
    use_scale_shift_norm=c["resnet_time_scale_shift"] == "scale_shift",
    downsample_padding=c["downsample_padding"],
    flip_sin_to_cos=c["flip_sin_to_cos"],
    freq_shift=c["freq_shift"],
    norm_eps=c["norm_eps"],
    norm_groups=c["norm_num_groups"],
  )


def diffusers_name(path: tuple) -> str:
  """The diffusers state-dict name of the jaxdiff parameter at `path` (as in nnx.to_flat_state)."""
  *modules, leaf = (str(p) for p in path)
  return ".".join([_RENAMED_MODULES.get(m, m) for m in modules] + [_RENAMED_LEAVES[leaf]])


def _to_jax_layout(leaf: str, array: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  return array


def _listing(names: list[str]) -> str:
  shown = ", ".join(names[:8])
  return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def assign_diffusers_weights(model: nnx.Module, tensors: Mapping[str, np.ndarray]) -> None:
  """Overwrite every parameter of `model` from a diffusers state dict, all of which must be used."""
  tensors = {
    (f"{m[1]}.{_LEGACY_TO_MODERN[m[2]]}.{m[3]}" if (m := _LEGACY_ATTENTION.fullmatch(k)) else k): v
    for k, v in tensors.items()
  }
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  expected = {diffusers_name(path): (path, var.shape) for path, var in flat}
  missing = sorted(set(expected) - set(tensors))
  unused = sorted(set(tensors) - set(expected))
  _require(
    not missing and not unused,
    f"The checkpoint does not match its config: missing tensors [{_listing(missing)}], "
    f"unused tensors [{_listing(unused)}].",
  )
  values = []
  for name, (path, shape) in expected.items():
    value = _to_jax_layout(str(path[-1]), tensors[name])
    _require(
      value.shape == shape,
      f"Tensor {name} has shape {tensors[name].shape}, which does not give the expected {shape}.",
    )
    values.append((path, jnp.asarray(value, jnp.float32)))
  nnx.update(model, nnx.from_flat_state(values))


def read_diffusers_folder(
  path: str | os.PathLike, class_name: str, parse: Callable[[Mapping], dict]
) -> tuple[dict, dict[str, np.ndarray]]:
  """(`parse(config.json)`, the state dict) of the diffusers `class_name` folder `path` (a local
  folder or a URL). The config is parsed first, so that one jaxdiff cannot build is refused before
  the weights are read."""
  folder = storage.path(path, what="the source")
  config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
  for file in (config_path, weights_path):
    _require(file.is_file(), f"{file} does not exist: pass a diffusers {class_name} folder.")
  kwargs = parse(json.loads(config_path.read_text()))
  try:
    if storage.is_url(weights_path):  # read whole: safetensors opens local files only
      return kwargs, safetensors.numpy.load(weights_path.read_bytes())
    return kwargs, safetensors.numpy.load_file(os.fspath(weights_path))
  except SafetensorError as e:
    raise ValueError(f"{weights_path} is not a readable safetensors file ({e}).") from e


def _convert_folder(
  path: str | os.PathLike, *, dtype, dropout_key: int | jax.Array
) -> tuple[dict, UNet]:
  kwargs, tensors = read_diffusers_folder(path, "UNet2DModel", unet_kwargs_from_diffusers_config)
  model = abstract_unet(**kwargs, dtype=dtype, dropout_key=dropout_key)
  assign_diffusers_weights(model, tensors)
  return kwargs, model


def load_diffusers_unet(
  path: str | os.PathLike, *, dtype=jnp.float32, dropout_key: int | jax.Array = 0
) -> UNet:
  """Build jaxdiff's UNet from a diffusers `UNet2DModel` folder."""
  return _convert_folder(path, dtype=dtype, dropout_key=dropout_key)[1]


def convert_diffusers_unet(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Convert the diffusers folder `src` into a new jaxdiff checkpoint folder `dst`."""
  new_output_folder(dst)  # refused before the (slow) conversion
  kwargs, model = _convert_folder(src, dtype=jnp.float32, dropout_key=0)
  save_converted(dst, "unet", kwargs, model)
