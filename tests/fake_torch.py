"""A stand-in for the little of PyTorch the converters use (the suite has no torch): tensors that
hold a NumPy array, and a `torch` module built around a test's own `load`."""

import types

import numpy as np


class FakeTensor:
  """What the converters use of a torch tensor."""

  def __init__(self, array: np.ndarray):
    self.array = array

  def detach(self):
    return self

  def float(self):
    return FakeTensor(self.array.astype(np.float32))

  def numpy(self):
    return self.array


def module(load, **attributes) -> types.ModuleType:
  """A `torch` module whose `load` is `load`, `is_tensor` knows FakeTensor, plus `attributes`."""
  torch = types.ModuleType("torch")
  torch.load = load
  torch.is_tensor = lambda value: isinstance(value, FakeTensor)
  for name, value in attributes.items():
    setattr(torch, name, value)
  return torch
