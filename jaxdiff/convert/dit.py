"""Map a facebookresearch/DiT `models.py` state dict onto jaxdiff's `DiT` (no torch needed).

`tensors` is a mapping of the original's parameter names to numpy arrays (e.g. `torch.load(...)`
turned into numpy, or safetensors). Each jaxdiff parameter's original name is derived from its own
path, and only the layouts change: conv OIHW -> HWIO, linear (out, in) -> (in, out). The fixed
`pos_embed` is not a jaxdiff parameter (it is recomputed) and is skipped.

`load_dit_checkpoint(path)` reads a released or trained `.pt` file (torch is imported there only)
and builds the `DiT` it describes: the sizes come from the tensors' shapes, `num_heads` (which no
shape shows) from `DIT_PRESETS` by hidden size unless given. `python -m jaxdiff.convert
dit-checkpoint` writes the same into a converted folder (`jaxdiff.convert.converted`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.convert.converted import new_output_folder, save_converted
from jaxdiff.convert.torch_files import existing_file, import_torch, torch_load
from jaxdiff.models.dit import DIT_PRESETS, DiT
from jaxdiff.models.table import abstract_module

# jaxdiff module names that differ from the original's (the original wraps some in nn.Sequential)
_RENAMED_MODULES = {
  "x_embedder": "x_embedder.proj",
  "t_embedder.linear_1": "t_embedder.mlp.0",
  "t_embedder.linear_2": "t_embedder.mlp.2",
  "y_embedder": "y_embedder.embedding_table",
  "modulation": "adaLN_modulation.1",
}
_SKIPPED = {"pos_embed"}


def original_name(path: tuple) -> str:
  """The original's state-dict name of the jaxdiff parameter at `path` (an nnx state path)."""
  *modules, leaf = (str(part) for part in path)
  module = ".".join(modules)
  for ours, theirs in _RENAMED_MODULES.items():
    if module == ours or module.endswith("." + ours):
      module = module[: len(module) - len(ours)] + theirs
      break
  return f"{module}.{'bias' if leaf == 'bias' else 'weight'}"


def _to_jax_layout(leaf: str, array: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # conv OIHW -> HWIO
  if leaf == "kernel":
    return array.T  # linear (out, in) -> (in, out)
  return array


def load_dit_state_dict(model: DiT, tensors: Mapping[str, np.ndarray]) -> DiT:
  """Copy `tensors` into `model` (in place; also returned). Every tensor must be used once and
  every parameter must be found with its exact shape, so a mismatched architecture is refused."""
  params = nnx.state(model, nnx.Param)
  unused = set(tensors) - _SKIPPED
  updates = []
  for path, variable in nnx.to_flat_state(params):
    name = original_name(path)
    if name not in tensors:
      raise ValueError(f"{name} (for {'.'.join(map(str, path))}) is missing from the state dict.")
    value = _to_jax_layout(str(path[-1]), np.asarray(tensors[name], np.float32))
    if value.shape != variable.shape:
      raise ValueError(
        f"{name}: shape {value.shape} after conversion, the model has {variable.shape}."
      )
    updates.append((path, jnp.asarray(value, variable.dtype)))
    unused.discard(name)
  if unused:
    raise ValueError(f"State dict entries with no DiT parameter: {sorted(unused)}.")
  # from_flat_state rather than writing into the variables: `model` may be shapes only
  nnx.update(model, nnx.from_flat_state(updates))
  return model


def _shape(tensors: Mapping, name: str, ndim: int) -> tuple[int, ...]:
  if name not in tensors:
    raise ValueError(f"{name} is missing: this is not a facebookresearch/DiT state dict.")
  shape = tuple(tensors[name].shape)
  if len(shape) != ndim:
    raise ValueError(f"{name} has shape {shape}, a DiT's has {ndim} dimensions.")
  return shape


def dit_kwargs_from_state_dict(tensors: Mapping, *, num_heads: int | None = None) -> dict:
  """The `DiT` keyword arguments of an original state dict, read from its tensors' `.shape`s only
  (numpy arrays or jax.ShapeDtypeStructs). `num_heads` shows in no shape: without it, the preset's
  of that hidden size. The label table is taken to end with the null class, as in every released
  checkpoint (the original adds that row whenever class_dropout_prob > 0)."""
  hidden_size, in_channels, patch_size, _ = _shape(tensors, "x_embedder.proj.weight", 4)
  tokens = _shape(tensors, "pos_embed", 3)[1]
  grid = math.isqrt(tokens)
  if grid * grid != tokens:
    raise ValueError(f"pos_embed has {tokens} tokens, not a square grid of patches.")
  blocks = {int(m[1]) for name in tensors if (m := re.match(r"blocks\.(\d+)\.", name))}
  if not blocks or blocks != set(range(len(blocks))):
    raise ValueError(f"The state dict's blocks are numbered {sorted(blocks)}, not 0, 1, 2, ….")
  out_channels, rest = divmod(_shape(tensors, "final_layer.linear.weight", 2)[0], patch_size**2)
  if rest or out_channels not in (in_channels, 2 * in_channels):
    raise ValueError(
      f"final_layer.linear gives {out_channels} output channels for {in_channels} input channels."
    )
  if num_heads is None:
    presets = [p["num_heads"] for p in DIT_PRESETS.values() if p["hidden_size"] == hidden_size]
    if not presets:
      raise ValueError(
        f"No DiT preset has hidden size {hidden_size}: pass num_heads (--num-heads on the command "
        "line)."
      )
    num_heads = presets[0]
  labels = "y_embedder.embedding_table.weight"
  return dict(
    in_channels=in_channels,
    image_size=grid * patch_size,
    patch_size=patch_size,
    hidden_size=hidden_size,
    depth=len(blocks),
    num_heads=num_heads,
    mlp_ratio=_shape(tensors, "blocks.0.mlp.fc1.weight", 2)[0] / hidden_size,
    num_classes=_shape(tensors, labels, 2)[0] - 1 if labels in tensors else None,
    learn_sigma=out_channels == 2 * in_channels,
  )


def abstract_dit(**kwargs) -> DiT:
  """`DiT(**kwargs)` with shape-only parameters, to be filled from a checkpoint."""
  return abstract_module(lambda rngs: DiT(**kwargs, rngs=rngs))


def dit_from_state_dict(tensors: Mapping[str, np.ndarray], **overrides) -> DiT:
  """The `DiT` of an original state dict (names -> numpy arrays). `overrides` are DiT keyword
  arguments that replace the inferred ones (num_heads, dtype, remat, …)."""
  kwargs = dit_kwargs_from_state_dict(tensors, num_heads=overrides.pop("num_heads", None))
  return load_dit_state_dict(abstract_dit(**{**kwargs, **overrides}), tensors)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The float32 numpy state dict in a facebookresearch/DiT `.pt` file: a bare state dict (the
  released DiT-XL-2-*.pt) or train.py's checkpoint, whose "ema" weights are taken (as the original's
  sample.py does), else its "model". `path` may be a local path or a URL."""
  file = existing_file(path, "a facebookresearch/DiT .pt checkpoint")
  torch = import_torch(".pt")
  try:
    # weights_only: no pickled code is ever run; train.py's checkpoints also hold its argparse args
    with torch.serialization.safe_globals([argparse.Namespace]):
      checkpoint = torch_load(torch, file, weights_only=True)
  except Exception as e:  # any failure to unpickle means "not a checkpoint"
    raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}).") from e
  if isinstance(checkpoint, Mapping):
    checkpoint = checkpoint.get("ema", checkpoint.get("model", checkpoint))
  if not isinstance(checkpoint, Mapping) or not all(
    torch.is_tensor(v) for v in checkpoint.values()
  ):
    raise ValueError(f"{path} holds no state dict of tensors.")
  return {k: v.detach().float().numpy() for k, v in checkpoint.items()}


def load_dit_checkpoint(path: str | os.PathLike, **overrides) -> DiT:
  """The `DiT` of a facebookresearch/DiT `.pt` file (see `read_torch_state_dict`); `overrides` as
  in `dit_from_state_dict`, e.g. num_heads for a hidden size no preset has."""
  return dit_from_state_dict(read_torch_state_dict(path), **overrides)


def convert_dit_checkpoint(
  src: str | os.PathLike,
  dst: str | os.PathLike,
  *,
  num_heads: int | None = None,
  prediction: str | None = None,
) -> None:
  """Convert the facebookresearch/DiT `.pt` file `src` into a new converted folder `dst`;
  `prediction` ('flow' for a flow-matching DiT of the same layout) is recorded there."""
  new_output_folder(dst)  # refused before reading a multi-GB file
  tensors = read_torch_state_dict(src)
  kwargs = dit_kwargs_from_state_dict(tensors, num_heads=num_heads)
  model = load_dit_state_dict(abstract_dit(**kwargs), tensors)
  save_converted(dst, "dit", kwargs, model, prediction=prediction)
