"""Map a facebookresearch/DiT `models.py` state dict onto jaxdiff's `DiT` (no torch needed).

`tensors` is a mapping of the original's parameter names to numpy arrays (e.g. `torch.load(...)`
turned into numpy, or safetensors). Each jaxdiff parameter's original name is derived from its own
path, and only the layouts change: conv OIHW -> HWIO, linear (out, in) -> (in, out). The fixed
`pos_embed` is not a jaxdiff parameter (it is recomputed) and is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.models.dit import DiT

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
  updates = {}
  for path, variable in nnx.to_flat_state(params):
    name = original_name(path)
    if name not in tensors:
      raise ValueError(f"{name} (for {'.'.join(map(str, path))}) is missing from the state dict.")
    value = _to_jax_layout(str(path[-1]), np.asarray(tensors[name], np.float32))
    if value.shape != variable.shape:
      raise ValueError(
        f"{name}: shape {value.shape} after conversion, the model has {variable.shape}."
      )
    updates[path] = jnp.asarray(value, variable.dtype)
    unused.discard(name)
  if unused:
    raise ValueError(f"state dict entries with no DiT parameter: {sorted(unused)}")
  for path, value in updates.items():
    node = params
    for part in path[:-1]:
      node = node[part]
    node[path[-1]][...] = value
  nnx.update(model, params)
  return model
