"""Noise schedules: β tables and everything derived from them, computed once in float64.

A `Schedule` holds NumPy float64 tables indexed by the (possibly respaced) step index
i ∈ [0, N). `timesteps[i]` is the timestep of the *original* process that step i stands for; the
model is always called with `timesteps[i]`, so a network trained on T = 1000 steps samples from a
respaced 50-step schedule unchanged (the ADM convention).

`Schedule.table(name, dtype)` gives a JAX array in the compute dtype: float64 tables when
`jax_enable_x64` is on and float64 is asked for, float32 otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

import jax.numpy as jnp
import numpy as np

RespacingSpec = Union[str, Sequence[int]]


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """Float64 tables of a discrete-time Gaussian diffusion q(x_t | x_{t-1}) = N(√α_t x, β_t I)."""

  betas: np.ndarray
  timesteps: np.ndarray  # original timestep of each step; arange(N) unless respaced
  num_train_timesteps: int  # T of the process the model was trained on

  def __post_init__(self):
    betas = np.asarray(self.betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
      raise ValueError(f"betas must be a non-empty vector, got shape {betas.shape}.")
    if not np.all((betas > 0) & (betas <= 1)):
      raise ValueError("every beta must lie in (0, 1].")
    object.__setattr__(self, "betas", betas)
    object.__setattr__(self, "timesteps", np.asarray(self.timesteps, dtype=np.int64))

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  @property
  def alphas(self) -> np.ndarray:
    return 1.0 - self.betas

  @property
  def alphas_cumprod(self) -> np.ndarray:
    return np.cumprod(self.alphas)

  @property
  def zero_terminal_snr(self) -> bool:
    """Whether the last ᾱ is exactly 0 (β = 1 there): x_T is pure noise (Lin et al. 2024)."""
    return bool(self.alphas_cumprod[-1] == 0.0)

  @property
  def alphas_cumprod_prev(self) -> np.ndarray:
    return np.append(1.0, self.alphas_cumprod[:-1])

  @property
  def sqrt_alphas_cumprod(self) -> np.ndarray:
    return np.sqrt(self.alphas_cumprod)

  @property
  def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
    return np.sqrt(1.0 - self.alphas_cumprod)

  @property
  def posterior_variance(self) -> np.ndarray:
    """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), the variance of q(x_{t−1} | x_t, x_0)."""
    return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_log_variance_clipped(self) -> np.ndarray:
    # β̃_0 = 0, so log β̃_0 would be −inf; DDPM/ADM substitute β̃_1 there.
    var = self.posterior_variance
    if var.shape[0] == 1:
      return np.log(self.betas)
    return np.log(np.append(var[1], var[1:]))

  @property
  def posterior_mean_coef1(self) -> np.ndarray:
    """Coefficient of x_0 in the posterior mean."""
    return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_mean_coef2(self) -> np.ndarray:
    """Coefficient of x_t in the posterior mean."""
    return (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)

  def table(self, name: str, dtype=jnp.float32) -> jnp.ndarray:
    """The table `name` as a JAX array: float64 only if asked for and x64 is enabled."""
    values = getattr(self, name)
    wide = jnp.dtype(dtype) == jnp.float64 and jnp.zeros((), jnp.float64).dtype == jnp.float64
    return jnp.asarray(values, dtype=jnp.float64 if wide else jnp.float32)


def linear_betas(num_timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 0.02):
  """DDPM's linear schedule; for T ≠ 1000 both ends scale by 1000/T as in ADM."""
  scale = 1000.0 / num_timesteps
  return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, *, s: float = 0.008, max_beta: float = 0.999):
  """Nichol & Dhariwal (2021) eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), β capped at 0.999."""

  def alpha_bar(u):
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

  t = np.arange(num_timesteps, dtype=np.float64)
  ratio = np.array([alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps) for i in t])
  return np.minimum(1.0 - ratio, max_beta)


def scaled_linear_betas(
  num_timesteps: int, *, beta_start: float = 0.00085, beta_end: float = 0.012
):
  """Stable Diffusion's schedule: linear in √β."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas}


def zero_terminal_snr_betas(betas: np.ndarray) -> np.ndarray:
  """Lin et al. (2024) Algorithm 1: the βs whose √ᾱ is the original √ᾱ shifted so the last is 0
  and scaled so the first is unchanged (diffusers' `rescale_zero_terminal_snr`, in float64).

  The last β is exactly 1, so the last ᾱ is exactly 0: the final step sees pure noise.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.shape[0] < 2:
    raise ValueError("a zero-terminal-SNR schedule needs at least 2 timesteps.")
  sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
  first, last = sqrt_ab[0], sqrt_ab[-1]
  sqrt_ab = (sqrt_ab - last) * (first / (first - last))
  alphas_cumprod = sqrt_ab**2
  return 1.0 - np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])


# What diffusers' σ-space and DPM schedulers (Euler, Euler-ancestral, DPM-Solver, UniPC) put in
# place of ᾱ_T = 0, fp16's smallest subnormal: σ_T = √((1 − ᾱ)/ᾱ) = √(2²⁴ − 1) ≈ 4096 is finite.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


def sigma_alphas_cumprod(schedule: Schedule) -> np.ndarray:
  """ᾱ for a sampler that works in σ = √((1 − ᾱ)/ᾱ): the schedule's, except that a zero last ᾱ
  (a zero-terminal-SNR schedule) becomes ZERO_SNR_ALPHA_CUMPROD, as in diffusers, so σ_T is finite.

  That value can exceed the ᾱ before it (linear βs: ᾱ_{T−2} ≈ 4e-9), so σ is then not monotonic in
  its last two entries; diffusers leaves it so, and so does this.
  """
  alphas_cumprod = schedule.alphas_cumprod
  if schedule.zero_terminal_snr:
    alphas_cumprod[-1] = ZERO_SNR_ALPHA_CUMPROD  # a fresh array: the property recomputes it
  return alphas_cumprod


def check_sampler_support(schedule: Schedule, *, prediction: str) -> None:
  """ValueError when a model of this parameterization cannot be sampled on `schedule`.

  At ᾱ_T = 0 the input is pure noise, so an ε-prediction model returns x_T itself and
  x̂_0 = (x_T − √(1 − ᾱ_T) ε̂)/√ᾱ_T is 0/0; x_0- and v-prediction stay finite there.
  """
  if prediction == "epsilon" and schedule.zero_terminal_snr:
    raise ValueError(
      "ε-prediction cannot be sampled from ᾱ_T = 0 (a zero-terminal-SNR schedule), where "
      "x̂_0 = (x_T − ε̂)/√ᾱ_T is 0/0; use v-prediction (diffusion.prediction=v) as Lin et al. do."
    )


def make(
  name: str,
  num_timesteps: int = 1000,
  *,
  respacing: RespacingSpec | None = None,
  rescale_zero_terminal_snr: bool = False,
  **kwargs,
) -> Schedule:
  """A schedule by name ('linear', 'cosine', 'scaled_linear'), optionally rescaled to zero
  terminal SNR (`zero_terminal_snr_betas`) and then respaced."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}.")
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be positive, got {num_timesteps}.")
  betas = SCHEDULES[name](num_timesteps, **kwargs)
  if rescale_zero_terminal_snr:
    betas = zero_terminal_snr_betas(betas)
  schedule = Schedule(
    betas=betas, timesteps=np.arange(num_timesteps), num_train_timesteps=num_timesteps
  )
  return schedule if respacing is None else respace(schedule, respacing)


def space_timesteps(num_timesteps: int, spec: RespacingSpec) -> list[int]:
  """The timesteps ADM keeps for a respacing spec, sorted.

  'ddimN' keeps range(0, T, stride) for the integer stride giving N steps; 'a,b,c' splits [0, T)
  into equal sections and takes a, b, c evenly spaced steps (rounded) from each, first and last
  of a section included; a sequence of ints keeps exactly those.
  """
  if not isinstance(spec, str):
    steps = sorted({int(s) for s in spec})
    if not steps or steps[0] < 0 or steps[-1] >= num_timesteps:
      raise ValueError(f"respaced timesteps must lie in [0, {num_timesteps}), got {spec!r}.")
    return steps
  if spec.startswith("ddim"):
    wanted = int(spec[len("ddim") :])
    for stride in range(1, num_timesteps):
      if len(range(0, num_timesteps, stride)) == wanted:
        return list(range(0, num_timesteps, stride))
    raise ValueError(f"no integer stride gives exactly {wanted} steps out of {num_timesteps}.")
  counts = [int(c) for c in spec.split(",")]
  size_per, extra = divmod(num_timesteps, len(counts))
  steps, start = [], 0
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if not 1 <= count <= size:
      raise ValueError(f"cannot take {count} steps from a section of {size} timesteps.")
    stride = 1.0 if count == 1 else (size - 1) / (count - 1)
    steps += [start + round(k * stride) for k in range(count)]
    start += size
  return sorted(set(steps))


def respace(schedule: Schedule, spec: RespacingSpec) -> Schedule:
  """Keep a subset of timesteps; β is recomputed so the kept ᾱ are unchanged (ADM)."""
  kept = space_timesteps(schedule.num_timesteps, spec)
  alphas_cumprod = schedule.alphas_cumprod[kept]
  betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
  return Schedule(
    betas=betas,
    timesteps=schedule.timesteps[kept],
    num_train_timesteps=schedule.num_train_timesteps,
  )
