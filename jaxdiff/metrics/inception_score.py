"""Inception Score (Salimans et al. 2016): exp E_x[KL(p(y|x) ‖ p(y))] over the 1008 Inception classes."""

from __future__ import annotations

import numpy as np


def inception_score(logits: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
  """Mean and standard deviation over `splits` consecutive chunks of exp(mean KL(p(y|x) ‖ p(y))),
  where p(y|x) = softmax(logits) and p(y) is the mean of p(y|x) over the chunk.

  As the original code (openai/improved-gan `inception_score/model.py`): chunk i is
  [i * N // splits, (i + 1) * N // splits), the spread is np.std over chunks, and the logits are
  the pool features times the fc weights without the bias (what `InceptionV3` returns).
  guided-diffusion's evaluator uses chunks of 5000, the same 10 chunks for its 50k samples, and
  reports the mean only. Computed in float64 from log-softmax, so (near) one-hot predictions give
  0 * log 0 = 0 rather than NaN.
  """
  logits = np.asarray(logits, np.float64)
  n = len(logits)
  if logits.ndim != 2 or n < splits:
    raise ValueError(f"Need (N >= splits={splits}, classes) logits, got shape {logits.shape}.")
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    chunk = slice(i * n // splits, (i + 1) * n // splits)
    part, marginal = p[chunk], p[chunk].mean(axis=0)
    # A class no image in the chunk predicts has p = 0 in every row and adds 0, not 0 * log 0.
    log_marginal = np.log(np.where(marginal > 0, marginal, 1))
    kl = (part * (log_p[chunk] - log_marginal)).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))
