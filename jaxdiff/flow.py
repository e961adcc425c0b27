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

import math

import jax
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


# --- training: where on the path a step's examples lie, and how much each counts ---------------


def mode_transform(u, scale: float):
  """SD3's "mode" sampling (Esser et al. 2024, eq. 20): σ = 1 − u − s·(cos²(π/2·u) − 1 + u) of
  u ~ U(0, 1), a density with its mode moved towards σ = 1/2 (s > 0) or the ends (s < 0); s = 0 is
  uniform. A bijection of [0, 1] (onto itself, reversed) for s ∈ [−1, 2/(π − 2)]."""
  return 1 - u - scale * (jnp.cos(math.pi / 2 * u) ** 2 - 1 + u)


MODE_SCALE_RANGE = (-1.0, 2 / (math.pi - 2))  # where `mode_transform` is monotone


def logit_normal_density(sigma, mean: float, std: float):
  """π(σ) = 1/(std·√(2π)) · 1/(σ(1 − σ)) · exp(−(logit σ − mean)²/(2·std²)) (SD3, eq. 19): the
  density of sigmoid(N(mean, std²))."""
  logit = jnp.log(sigma) - jnp.log1p(-sigma)
  gauss = jnp.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
  return gauss / (sigma * (1 - sigma))


def sample_sigmas(
  key,
  shape,
  time_sampling: str = "uniform",
  *,
  logit_mean: float = 0.0,
  logit_std: float = 1.0,
  mode_scale: float = 1.29,
):
  """σ's in [0, 1] of `shape`, before any shift: 'uniform' U(0, 1), 'logit_normal' sigmoid of
  N(logit_mean, logit_std²) (SD3's default 0, 1), 'mode' `mode_transform` of U(0, 1) with
  `mode_scale` (SD3: 1.29)."""
  draw = {
    "uniform": lambda: jax.random.uniform(key, shape),
    "logit_normal": lambda: jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, shape)),
    "mode": lambda: mode_transform(jax.random.uniform(key, shape), mode_scale),
  }
  if time_sampling not in draw:
    raise ValueError(f"time_sampling must be one of {list(draw)}, got {time_sampling!r}.")
  return draw[time_sampling]()


TIME_SAMPLINGS = ("uniform", "logit_normal", "mode")


def cosmap_weight(sigma):
  """SD3's "cosmap" weight 2 / (π·(1 − 2σ + 2σ²)) (Esser et al. 2024, §3.1; diffusers'
  `compute_loss_weighting_for_sd3`): the density of the cosine-schedule's σ's mapped onto the
  straight path, as a weight on the velocity loss."""
  return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))


# per-example weights of the velocity loss, as functions of σ
WEIGHTINGS = {"none": lambda sigma: jnp.ones_like(sigma), "cosmap": cosmap_weight}
