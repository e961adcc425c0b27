"""The denoising objectives of DDPM and improved DDPM: L_simple ('mse'), L_hybrid, L_vlb."""

from __future__ import annotations

import functools

from jaxdiff import diffusion, likelihood
from jaxdiff.objectives.base import Objective


def _objective(fn, **kwargs) -> Objective:
  def loss(key, networks, x0, *, t=None, weights=None):
    # Only what importance sampling supplies is passed, so the math sees its own defaults else.
    sampled = {} if t is None else {"t": t, "weights": weights}
    total, per_example = fn(key, networks["model"], x0, **kwargs, **sampled)
    return total, per_example, {}

  return Objective(loss)


def _min_snr_gamma(config):
  return config.diffusion.min_snr_gamma or None


def mse(config, schedule) -> Objective:
  """L_simple on ε, x0 or v, optionally Min-SNR-γ weighted (diffusion.mse_loss)."""
  return _objective(
    diffusion.mse_loss,
    schedule=schedule,
    prediction=config.diffusion.prediction,
    min_snr_gamma=_min_snr_gamma(config),
  )


def hybrid(config, schedule) -> Objective:
  """L_simple + λ·L_vlb for a learned-variance network (likelihood.hybrid_loss)."""
  return _objective(
    functools.partial(likelihood.hybrid_loss, vlb_weight=config.diffusion.vlb_weight),
    schedule=schedule,
    prediction=config.diffusion.prediction,
    min_snr_gamma=_min_snr_gamma(config),
  )


def vlb(config, schedule) -> Objective:
  """L_vlb alone, meant for importance-sampled t (likelihood.vlb_loss)."""
  return _objective(likelihood.vlb_loss, schedule=schedule, prediction=config.diffusion.prediction)
