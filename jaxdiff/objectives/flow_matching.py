"""Flow matching (rectified flow) as SD3, Flux and SiT train it: `diffusion.loss='flow_matching'`.

Each example is put at a point σ of the straight path x_σ = (1 − σ)·x_0 + σ·ε (jaxdiff.flow) and
the network, called at t = σ·1000, regresses the velocity v = ε − x_0:

    L = E_σ,ε [ w(σ) · ‖v̂(x_σ, σ·1000) − (ε − x_0)‖² / d ]

σ is drawn by `flow.time_sampling` — 'uniform', 'logit_normal' (SD3's default, mean 0 and std 1)
or 'mode' (SD3's, scale 1.29) — then moved by SD3's resolution shift s·σ / (1 + (s − 1)·σ)
(`flow.shift`) or Flux's exponential shift with μ (`flow.use_dynamic_shifting`, `flow.mu`); w is
1 or SD3's cosmap (`flow.weighting`). σ is continuous (as in SiT and the SD3 paper; diffusers'
training scripts round it to one of 1000 steps first). Labels, their dropout for classifier-free
guidance and the codec's x_0 come from the train step as for every objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff import flow
from jaxdiff.objectives.base import Objective

# The `flow.*` keys and their defaults (config.default_config builds the section from them; None: a
# float left unset)
DEFAULTS = {
  "time_sampling": "uniform",  # flow.TIME_SAMPLINGS: 'uniform', 'logit_normal' (SD3) or 'mode'
  "logit_mean": 0.0,  # the logit-normal's mean and std (SD3: 0 and 1)
  "logit_std": 1.0,
  "mode_scale": 1.29,  # s of SD3's mode sampling
  "shift": 1.0,  # SD3's resolution shift of the training σ's (1: none; SD3 at 1024²: 3)
  "use_dynamic_shifting": False,  # Flux's exponential shift by e^mu instead
  "mu": None,
  "weighting": "none",  # flow.WEIGHTINGS: 'none' or SD3's 'cosmap'
}

# The `diffusion.*` keys of a discrete-time model that a flow model has no use for, with the value
# that switches each off: a flow run that sets one would silently not get what it asked for.
_DISCRETE_ONLY = {
  "min_snr_gamma": (0.0, "Min-SNR-γ weights a discrete model's ε/x0/v loss; use flow.weighting"),
  "timestep_sampler": ("uniform", "importance sampling draws discrete timesteps by their VLB"),
  "rescale_zero_terminal_snr": (False, "a flow's path reaches pure noise at σ = 1 already"),
}


def training_sigmas(key, batch: int, f) -> jax.Array:
  """The σ's of one step's `batch` examples under the `flow.*` section `f`: drawn, then shifted."""
  sigma = flow.sample_sigmas(
    key,
    (batch,),
    f.time_sampling,
    logit_mean=f.logit_mean,
    logit_std=f.logit_std,
    mode_scale=f.mode_scale,
  )
  if f.use_dynamic_shifting:
    return flow.exponential_shift(sigma, f.mu)
  return flow.shift(sigma, f.shift)


def flow_matching(config, schedule) -> Objective:
  """The velocity regression above; `schedule` (a discrete model's) is not read."""
  f = config.flow
  weight = flow.WEIGHTINGS[f.weighting]

  def loss(key, networks, x0, *, t=None, weights=None):
    # `t`/`weights` come only from importance sampling, which `check` refuses for flow models.
    del t, weights
    sigma_key, noise_key = jax.random.split(key)
    sigma = training_sigmas(sigma_key, x0.shape[0], f)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    v = networks["model"](flow.interpolate(x0, noise, sigma), sigma * flow.TIME_SCALE)
    error = jnp.mean((v - flow.velocity(x0, noise)) ** 2, axis=tuple(range(1, x0.ndim)))
    per_example = weight(sigma) * error
    return jnp.mean(per_example), per_example, {}

  return Objective(loss)


def check(config) -> None:
  """ValueError for `flow.*` settings the objective cannot use, or discrete-model settings that a
  flow model would ignore."""
  f, defaults = config.flow, DEFAULTS
  if f.shift <= 0:
    raise ValueError(f"flow.shift must be > 0 (1: no shift; SD3 uses 3), got {f.shift}.")
  if f.use_dynamic_shifting and f.mu is None:
    raise ValueError(
      "flow.use_dynamic_shifting=True shifts σ by e^μ and needs flow.mu (Flux: from the image's "
      "token count); set --config.flow.mu."
    )
  if f.use_dynamic_shifting and f.shift != 1.0:
    raise ValueError(
      f"flow.shift={f.shift} has no effect with flow.use_dynamic_shifting=True, which shifts by "
      "e^flow.mu instead; leave flow.shift at 1.0."
    )
  if f.mu is not None and not f.use_dynamic_shifting:
    raise ValueError(
      f"flow.mu={f.mu} has no effect without flow.use_dynamic_shifting=True; set it or leave "
      "flow.mu unset."
    )
  if f.logit_std <= 0:
    raise ValueError(f"flow.logit_std must be > 0, got {f.logit_std}.")
  low, high = flow.MODE_SCALE_RANGE
  if not low <= f.mode_scale <= high:
    raise ValueError(
      f"flow.mode_scale must lie in [{low}, {high:.4f}] (where SD3's mode density exists), got "
      f"{f.mode_scale}."
    )
  read = {"logit_normal": ("logit_mean", "logit_std"), "mode": ("mode_scale",)}
  for sampling, keys in read.items():
    for key in keys:
      if f.time_sampling != sampling and f[key] != defaults[key]:
        raise ValueError(
          f"flow.{key}={f[key]} has no effect with flow.time_sampling={f.time_sampling!r}; set "
          f"flow.time_sampling={sampling!r} or leave flow.{key} at {defaults[key]}."
        )
  if config.model.learn_sigma:
    raise ValueError(
      "model.learn_sigma=True adds variance outputs, which a flow model has none of and flow "
      "matching does not train; set --config.model.learn_sigma=False."
    )
  for key, (off, why) in _DISCRETE_ONLY.items():
    if config.diffusion[key] != off:
      raise ValueError(
        f"diffusion.{key}={config.diffusion[key]!r} does not apply to a flow model ({why}); "
        f"set diffusion.{key}={off!r}."
      )
