"""Flow matching (rectified flow) as pure functions of arrays.

The path between data and noise is the straight line

    x_σ = (1 − σ)·x_0 + σ·ε,   σ ∈ [0, 1]   (σ = 0: data, σ = 1: noise)

and a flow model's network predicts the velocity v = dx_σ/dσ = ε − x_0 (Liu et al. 2022, Lipman
et al. 2022; SD3, Flux, SiT). The network is called at time t = σ·TIME_SCALE, as diffusers calls
its flow transformers (`timestep = sigma * num_train_timesteps`), so a converted SD3/Flux/SiT model
and a jaxdiff flow run take the same time argument. `diffusion.prediction='flow'` marks such a
model; its samplers integrate dx/dσ = v from σ = 1 down to 0.
"""

from __future__ import annotations

import jax.numpy as jnp

PREDICTION = "flow"
TIME_SCALE = 1000.0  # network time = σ · TIME_SCALE (diffusers' num_train_timesteps)


def _expand(sigma, x):
  sigma = jnp.asarray(sigma, x.dtype)
  return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def interpolate(x0, noise, sigma):
  """x_σ = (1 − σ)·x_0 + σ·ε; `sigma` a scalar or one per example."""
  s = _expand(sigma, x0)
  return (1 - s) * x0 + s * noise


def velocity(x0, noise):
  """The regression target v = ε − x_0 (constant along each straight path)."""
  return noise - x0


def x0_and_noise(x, v, sigma):
  """(x̂_0, ε̂) from x_σ and a velocity: x_0 = x_σ − σ·v, ε = x_σ + (1 − σ)·v."""
  s = _expand(sigma, x)
  return x - s * v, x + (1 - s) * v


def shift(sigma, s: float):
  """SD3's resolution shift σ' = s·σ / (1 + (s − 1)·σ) (Esser et al. 2024, eq. 23); s = 1: none."""
  return s * sigma / (1 + (s - 1) * sigma)


def exponential_shift(sigma, mu: float, exponent: float = 1.0):
  """Flux's dynamic shift σ' = e^μ / (e^μ + (1/σ − 1)^exponent) (diffusers' `time_shift`,
  `time_shift_type='exponential'`); equals `shift(σ, e^μ)` at exponent 1."""
  return jnp.exp(mu) / (jnp.exp(mu) + (1 / sigma - 1) ** exponent)
