"""Shared numerics for the tests: relative error in float64, ||a - b|| / ||b||."""

import numpy as np


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))
