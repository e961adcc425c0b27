"""Shared numerics for the tests: relative error in float64, ||a - b|| / ||b||.

Computed in float64 so that the measure itself adds no rounding to the float32 results it judges.
"""

import chex
import jax
import numpy as np


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tree_relative_error(a, b) -> float:
  """relative_error of two pytrees of one structure, their leaves taken as one flat vector."""
  chex.assert_trees_all_equal_structs(a, b)

  def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])

  return relative_error(flat(a), flat(b))
