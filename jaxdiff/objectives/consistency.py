"""Consistency models' objectives: distillation from a jaxdiff teacher (CD) and training from data
alone (CT, Song et al. 2023; iCT, Song & Dhariwal 2024).

All three pull the student's f(x_0 + σ_{n+1}·z, σ_{n+1}) towards a target network's f(x̂_n, σ_n)
one point lower on a grid σ_min = σ_0 < … < σ_{N−1} = σ_max (σ_min is the boundary of f,
`preconditioning.student_function`, shared with the sampler): Karras's (ρ = 7) as in the papers, or
for CD optionally the teacher's own timesteps (`timestep_grid`):

  CD   x̂_n is one ODE step of the frozen teacher from σ_{n+1} to σ_n; the target network is an
       EMA of the student with a fixed rate μ; n is uniform.
  CT   x̂_n = x_0 + σ_n·z with the same z (the ODE step with the true x_0 as the denoiser); N and
       the target's μ grow with the training step k (Song et al. 2023, Table 3):
       N(k) = ⌈√(k/K·((s1 + 1)² − s0²) + s0²) − 1⌉ + 1, μ(k) = exp(s0·ln μ0 / N(k)).
  iCT  CT without an EMA target: the target is the student itself with its gradient stopped; n is
       drawn from the lognormal P_mean, P_std discretised on the grid, the loss weighted by
       λ = 1/(σ_{n+1} − σ_n), and N(k) = min(s0·2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋.

The math is pure functions of arrays; the builders read the `consistency` config section.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import guidance, preconditioning
from jaxdiff.diffusion import compute_dtype
from jaxdiff.objectives.base import Objective
from jaxdiff.objectives.perceptual import Perceptual
from jaxdiff.samplers.ddim import trailing_timesteps

DISTANCES = ("l2", "l1", "pseudo_huber", "lpips")
WEIGHTINGS = ("uniform", "inverse_gap")
TEACHER_SOLVERS = ("euler", "heun", "ddim")
# CD's N points: 'karras' (σ_min to σ_max, ρ = consistency.rho, the paper's) or 'timesteps' (the
# teacher's own trailing timestep grid of N − 2 steps between σ_min and σ_max: `timestep_grid`)
GRIDS = ("karras", "timesteps")
HUBER_C_PER_ROOT_DIM = 0.00054  # iCT: c = 0.00054·√d for data of dimension d


# --- the grid and the curricula -------------------------------------------------------------


def karras_grid(
  index, num_points, *, sigma_min: float, sigma_max: float, rho: float, dtype=jnp.float32
):
  """σ_i = (σ_min^(1/ρ) + i/(N − 1)·(σ_max^(1/ρ) − σ_min^(1/ρ)))^ρ, the increasing N-point Karras
  grid (`preconditioning.karras_sigmas` reversed); `index` and `num_points` may be traced."""
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  ramp = jnp.asarray(index, dtype) / (jnp.asarray(num_points, dtype) - 1)
  return (lo + ramp * (hi - lo)) ** rho


def ct_num_scales(step, *, total_steps: int, start: int, end: int):
  """CT's N(k) = ⌈√(k/K·((s1 + 1)² − s0²) + s0²) − 1⌉ + 1 (at least 2, as openai's code keeps it),
  in float32 arithmetic on a traced step."""
  k = jnp.asarray(step, jnp.float32)
  root = jnp.sqrt(k / total_steps * ((end + 1) ** 2 - start**2) + start**2)
  return jnp.maximum(jnp.ceil(root - 1), 1).astype(jnp.int32) + 1


def ct_target_ema(num_scales, *, start_ema: float, start_scales: int):
  """CT's μ(k) = exp(s0·ln μ0 / N(k)), the paper's formula (openai's code divides by N(k) − 1)."""
  return jnp.exp(start_scales * np.log(start_ema) / jnp.asarray(num_scales, jnp.float32))


def ict_num_scales(step, *, total_steps: int, start: int, end: int):
  """iCT's N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 with K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋ (at least 1)."""
  k_prime = max(int(np.floor(total_steps / (np.log2(np.floor(end / start)) + 1))), 1)
  # enough doublings to pass s1, so 2^d never overflows int32
  most = int(np.ceil(np.log2(max(end / start, 1)))) + 1
  doublings = jnp.minimum(jnp.asarray(step, jnp.int32) // k_prime, most)
  return jnp.minimum(start * jnp.left_shift(1, doublings), end) + 1


def lognormal_pair_probabilities(
  num_scales, *, max_scales: int, sigma_min, sigma_max, rho, p_mean: float, p_std: float
):
  """iCT's p(σ_n) ∝ erf((ln σ_{n+1} − P_mean)/(√2·P_std)) − erf((ln σ_n − P_mean)/(√2·P_std)) for
  the pairs n = 0 … N − 2 of the N-point grid, as a (max_scales − 1,) vector, zero beyond N − 2
  (N = `num_scales` may be traced; `max_scales` bounds it)."""
  n = jnp.arange(max_scales - 1)
  lo = karras_grid(n, num_scales, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
  hi = karras_grid(n + 1, num_scales, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
  z = lambda s: (jnp.log(s) - p_mean) / (np.sqrt(2) * p_std)
  a, b = z(lo), z(hi)
  erf, erfc = jax.scipy.special.erf, jax.scipy.special.erfc
  # in a tail, erf(b) − erf(a) as a difference of erfc's, which keep their precision there
  mass = jnp.where(
    a >= 0, erfc(a) - erfc(b), jnp.where(b <= 0, erfc(-b) - erfc(-a), erf(b) - erf(a))
  )
  mass = jnp.where(n < num_scales - 1, jnp.maximum(mass, 0.0), 0.0)
  return mass / jnp.sum(mass)


# --- distances, weights and the teacher's step -----------------------------------------------


def _flat(x):
  return x.reshape(x.shape[0], -1)


def distance(name: str, a, b, *, huber_c: float = 0.0, lpips=None):
  """Per-example d(a, b): 'l2' the mean squared difference and 'l1' the mean absolute one (as
  openai's code averages them), 'pseudo_huber' √(‖a − b‖² + c²) − c over the whole example
  (iCT), c = 0.00054·√d when `huber_c` is 0, 'lpips' the function `lpips(a, b)` (CD's best)."""
  if name == "lpips":
    return lpips(a, b)
  diff = _flat(a - b).astype(jnp.float32)
  if name == "l2":
    return jnp.mean(diff**2, axis=1)
  if name == "l1":
    return jnp.mean(jnp.abs(diff), axis=1)
  if name == "pseudo_huber":
    c = huber_c or HUBER_C_PER_ROOT_DIM * np.sqrt(diff.shape[1])
    squared = jnp.sum(diff**2, axis=1)
    # = √(‖δ‖² + c²) − c without the cancellation that zeroes it in float32 when ‖δ‖ ≪ c
    return squared / (jnp.sqrt(squared + c**2) + c)
  raise ValueError(f"unknown distance {name!r}; choose one of {DISTANCES}.")


def weights_of(name: str, sigma, sigma_next):
  """λ(σ_n): 'uniform' 1 (Song et al. 2023) or 'inverse_gap' 1/(σ_{n+1} − σ_n) (iCT)."""
  if name == "uniform":
    return jnp.ones_like(sigma)
  if name == "inverse_gap":
    return 1 / (sigma_next - sigma)
  raise ValueError(f"unknown weighting {name!r}; choose one of {WEIGHTINGS}.")


def _expand(values, x):
  return values.reshape(values.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def euler_step(denoise, x, sigma, sigma_next):
  """x + (σ' − σ)·(x − D(x, σ))/σ: Euler on the probability-flow ODE dx/dσ = (x − D)/σ.

  It is also DDIM's step for a discrete teacher: with x = x_t/√ᾱ and ε̂ = (x − D)/σ, DDIM's
  x_t' = √ᾱ'·D + √(1 − ᾱ')·ε̂ is x' = D + σ'·ε̂, the same point (hence 'ddim' below)."""
  d = (x - denoise(x, sigma)) / _expand(sigma, x)
  return x + _expand(sigma_next - sigma, x) * d


def heun_step(denoise, x, sigma, sigma_next):
  """Heun's second-order step (Karras et al. 2022, Algorithm 1), as CD's teacher takes it."""
  d = (x - denoise(x, sigma)) / _expand(sigma, x)
  x_euler = x + _expand(sigma_next - sigma, x) * d
  d_next = (x_euler - denoise(x_euler, sigma_next)) / _expand(sigma_next, x)
  return x + _expand(sigma_next - sigma, x) * (d + d_next) / 2


TEACHER_STEPS = {"euler": euler_step, "heun": heun_step, "ddim": euler_step}


def pair_loss(
  student, target, x_hi, sigma_hi, x_lo, sigma_lo, *, distance_name, huber_c, weighting, lpips=None
):
  """(mean, per-example) λ(σ_lo)·d(student(x_hi, σ_hi), sg(target(x_lo, σ_lo)))."""
  prediction = student(x_hi, sigma_hi)
  aim = jax.lax.stop_gradient(target(jax.lax.stop_gradient(x_lo), sigma_lo))
  per_example = weights_of(weighting, sigma_lo, sigma_hi) * distance(
    distance_name, prediction, aim, huber_c=huber_c, lpips=lpips
  )
  return jnp.mean(per_example), per_example


# --- the objectives --------------------------------------------------------------------------


def timestep_grid(num_points: int, *, schedule, sigma_min: float, sigma_max: float) -> np.ndarray:
  """σ_min < σ(t_{N−3}) < … < σ(t_1) < σ_max, ascending: the σ's of a discrete teacher's timesteps
  t_1 … t_{N−2} of the 'trailing' grid of N − 1 steps (`samplers.ddim.trailing_timesteps`, the
  samplers' own), between the boundary and σ_max, which stands in for t_0 = T − 1 (σ_max is where
  the consistency sampler starts).

  CD's student learns the teacher's ODE as its grid discretises it, so the grid on which the
  teacher's Euler/DDIM steps sample best is the one to distil: on the digits default 10 trailing
  Euler steps score 0.55 where 10 Karras (ρ = 7) steps score 1.87 (benchmarks/RESULTS.md)."""
  t = trailing_timesteps(schedule.num_timesteps, num_points - 1)[1:]  # t_0 = T − 1 is σ_max's
  inner = np.asarray(preconditioning.sigma_of_timestep(t, schedule=schedule), np.float64)
  if inner.size and inner.max() >= sigma_max:
    raise ValueError(
      f"consistency.grid='timesteps' puts timestep {int(t[0])} at σ = {inner.max():.4g}, above "
      f"consistency.sigma_max = {sigma_max}: raise sigma_max or num_scales."
    )
  return np.concatenate([[sigma_min], inner[::-1], [sigma_max]])


def cd_grid(config, schedule) -> np.ndarray:
  """CD's N ascending σ's, as `consistency.grid` names them."""
  c = config.consistency
  if c.grid == "timesteps":
    return timestep_grid(
      c.num_scales, schedule=schedule, sigma_min=preconditioning.SIGMA_MIN, sigma_max=c.sigma_max
    )
  sigmas = preconditioning.karras_sigmas(
    c.sigma_max, preconditioning.SIGMA_MIN, c.num_scales, rho=c.rho
  )
  return sigmas[::-1]


# s0, s1 of the curricula when consistency.start_scales / end_scales are 0: Song et al. 2023's
# CIFAR-10 CT, and iCT
_PAPER_SCALES = {"ct": (2, 150), "ict": (10, 1280)}
_PAPER_WEIGHTING = {"cd": "uniform", "ct": "uniform", "ict": "inverse_gap"}


def _settings(config, kind: str) -> dict:
  c = config.consistency
  start, end = _PAPER_SCALES.get(kind, (0, 0))
  return {
    "grid": {"sigma_min": preconditioning.SIGMA_MIN, "sigma_max": c.sigma_max, "rho": c.rho},
    "compare": {
      "distance_name": c.distance,
      "huber_c": c.huber_c,
      "weighting": c.weighting or _PAPER_WEIGHTING[kind],
    },
    "start": c.start_scales or start,
    "end": c.end_scales or end,
  }


def _student(networks, name, config, schedule):
  return preconditioning.student_function(
    networks[name], prediction=config.diffusion.prediction, schedule=schedule
  )


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _ema(target, params, rate):
  return jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, target, params)


def _noised(key, x0, sigma_hi, sigma_lo):
  """x_0 + σ_hi·z and x_0 + σ_lo·z with the same z."""
  z = jax.random.normal(key, x0.shape, x0.dtype)
  return x0 + _expand(sigma_hi, x0) * z, x0 + _expand(sigma_lo, x0) * z


def _grid_pair(key, x0, n, num_scales, grid):
  """(x_hi, σ_{n+1}, x_lo, σ_n): neighbours of the `num_scales`-point Karras grid and x_0 noised
  to both with one z (CT's and iCT's pairs)."""
  lo = karras_grid(n, num_scales, **grid, dtype=compute_dtype(x0))
  hi = karras_grid(n + 1, num_scales, **grid, dtype=compute_dtype(x0))
  x_hi, x_lo = _noised(key, x0, hi, lo)
  return x_hi, hi, x_lo, lo


def _compare(config, s, lpips):
  """(fn(frozen) -> pair_loss's distance keywords, the LPIPS parameters, the context it needs)."""
  if config.consistency.distance != "lpips":
    return (lambda frozen: s["compare"]), None, ()
  perceptual = Perceptual(lpips, config.lpips.resolution, "consistency.distance='lpips'")
  return (
    lambda frozen: {**s["compare"], "lpips": perceptual.distance(frozen)},
    perceptual.params,
    ("frozen",),
  )


def consistency_distillation(config, schedule, *, teacher=None, lpips=None) -> Objective:
  """CD from `teacher`, the frozen EMA parameters of a jaxdiff run with the student's network and
  prediction, which the student starts from (Song et al. 2023 §6.1, as the paper does); None
  builds a state with the right shapes only, for a checkpoint to be restored into."""
  s, c = _settings(config, "cd"), config.consistency
  grid = cd_grid(config, schedule)
  teacher_step = TEACHER_STEPS[c.teacher_solver]

  compare, lpips_params, lpips_context = _compare(config, s, lpips)

  def loss(key, networks, x0, *, t=None, weights=None, labels=None, frozen=None):
    del t, weights  # config.validate keeps importance sampling of t away
    n_key, z_key = jax.random.split(key)
    n = jax.random.randint(n_key, (x0.shape[0],), 0, c.num_scales - 1)
    sigmas = jnp.asarray(grid, compute_dtype(x0))
    lo, hi = sigmas[n], sigmas[n + 1]
    x_hi, _ = _noised(z_key, x0, hi, lo)
    net = networks["teacher"]
    if c.teacher_guidance != 1.0:  # guidance folded into the targets (latent consistency models)
      net = guidance.classifier_free(
        net, labels, guidance_scale=c.teacher_guidance, null_label=config.data.num_classes
      )
    denoise = preconditioning.discrete_denoiser(
      net, schedule=schedule, prediction=config.diffusion.prediction
    )
    x_lo = teacher_step(denoise, x_hi, hi, lo)
    student = _student(networks, "model", config, schedule)
    target = _student(networks, "target", config, schedule)
    total, per_example = pair_loss(student, target, x_hi, hi, x_lo, lo, **compare(frozen))
    return total, per_example, {}

  def init_params(params):
    shapes = lambda tree: (jax.tree.structure(tree), [x.shape for x in jax.tree.leaves(tree)])
    if shapes(params) != shapes(teacher):
      raise ValueError("the teacher's parameters do not fit the student's network.")
    return _copy(teacher)

  return Objective(
    loss,
    # made from the starting parameters, which are the teacher's (or shapes to restore into)
    init_extra=lambda params: {"teacher": _copy(params), "target": _copy(params)},
    update_extra=lambda extra, params, k: {
      **extra,
      "target": _ema(extra["target"], params, c.target_ema),
    },
    init_params=None if teacher is None else init_params,
    context=("labels",) + lpips_context,
    frozen_params=lpips_params,
  )


def consistency_training(config, schedule, lpips=None) -> Objective:
  """CT (Song et al. 2023, Algorithm 3), its N(k) and μ(k) schedules over K = train.num_steps."""
  s, c = _settings(config, "ct"), config.consistency
  scales = {"total_steps": config.train.num_steps, "start": s["start"], "end": s["end"]}

  compare, lpips_params, lpips_context = _compare(config, s, lpips)

  def loss(key, networks, x0, *, t=None, weights=None, step, frozen=None):
    del t, weights
    num_scales = ct_num_scales(step, **scales)
    n_key, z_key = jax.random.split(key)
    n = jax.random.randint(n_key, (x0.shape[0],), 0, num_scales - 1)
    x_hi, hi, x_lo, lo = _grid_pair(z_key, x0, n, num_scales, s["grid"])
    student = _student(networks, "model", config, schedule)
    target = _student(networks, "target", config, schedule)
    total, per_example = pair_loss(student, target, x_hi, hi, x_lo, lo, **compare(frozen))
    return total, per_example, {"num_scales": num_scales}

  def update_extra(extra, params, step):
    rate = ct_target_ema(
      ct_num_scales(step, **scales), start_ema=c.target_ema, start_scales=s["start"]
    )
    return {**extra, "target": _ema(extra["target"], params, rate)}

  return Objective(
    loss,
    init_extra=lambda params: {"target": _copy(params)},
    update_extra=update_extra,
    context=("step",) + lpips_context,
    frozen_params=lpips_params,
  )


def improved_consistency_training(config, schedule, lpips=None) -> Objective:
  """iCT (Song & Dhariwal 2024): no target network, lognormal pairs, 1/Δσ weights, pseudo-Huber
  (consistency.distance's default), the doubling N(k) over K = train.num_steps."""
  s, c = _settings(config, "ict"), config.consistency
  scales = {"total_steps": config.train.num_steps, "start": s["start"], "end": s["end"]}

  compare, lpips_params, lpips_context = _compare(config, s, lpips)

  def loss(key, networks, x0, *, t=None, weights=None, step, frozen=None):
    del t, weights
    num_scales = ict_num_scales(step, **scales)
    probabilities = lognormal_pair_probabilities(
      num_scales, max_scales=s["end"] + 1, p_mean=c.p_mean, p_std=c.p_std, **s["grid"]
    )
    n_key, z_key = jax.random.split(key)
    n = jax.random.choice(n_key, probabilities.shape[0], (x0.shape[0],), p=probabilities)
    x_hi, hi, x_lo, lo = _grid_pair(z_key, x0, n, num_scales, s["grid"])
    # the student is its own target: θ⁻ = sg(θ), which is what makes CT's objective consistent
    student = _student(networks, "model", config, schedule)
    total, per_example = pair_loss(student, student, x_hi, hi, x_lo, lo, **compare(frozen))
    return total, per_example, {"num_scales": num_scales}

  return Objective(loss, context=("step",) + lpips_context, frozen_params=lpips_params)


def ct_trained_sigmas(config) -> np.ndarray:
  """The N(K − 1)-point Karras grid (increasing, float64) of a CT run's last step: the σ's its
  network was last trained at."""
  return _last_grid(config, "ct", ct_num_scales)


def ict_trained_sigmas(config) -> np.ndarray:
  """iCT's, as `ct_trained_sigmas`."""
  return _last_grid(config, "ict", ict_num_scales)


def _last_grid(config, kind: str, num_scales) -> np.ndarray:
  s, c = _settings(config, kind), config.consistency
  total = config.train.num_steps
  n = int(num_scales(total - 1, total_steps=total, start=s["start"], end=s["end"]))
  return preconditioning.karras_sigmas(c.sigma_max, preconditioning.SIGMA_MIN, n, rho=c.rho)[::-1]


def check(config) -> None:
  """ValueError naming the first `consistency.*` or `teacher.*` value the objectives refuse."""
  c = config.consistency
  for key, value, allowed in (
    ("distance", c.distance, DISTANCES),
    ("weighting", c.weighting, ("",) + WEIGHTINGS),
    ("teacher_solver", c.teacher_solver, TEACHER_SOLVERS),
    ("grid", c.grid, GRIDS),
  ):
    if value not in allowed:
      raise ValueError(f"consistency.{key} must be one of {list(allowed)}, got {value!r}.")
  if c.num_scales < 2:
    raise ValueError(f"consistency.num_scales must be at least 2 (one pair), got {c.num_scales}.")
  if not 0.0 <= c.target_ema < 1.0:
    raise ValueError(f"consistency.target_ema must lie in [0, 1), got {c.target_ema}.")
  if not c.sigma_max > preconditioning.SIGMA_MIN or not c.rho > 0 or not c.p_std > 0:
    raise ValueError(
      f"consistency.sigma_max must exceed σ_min = {preconditioning.SIGMA_MIN} and rho and p_std "
      f"must be positive, got {c.sigma_max}, {c.rho}, {c.p_std}."
    )
  if c.start_scales < 0 or c.end_scales < 0 or c.start_scales > (c.end_scales or np.inf):
    raise ValueError(
      "consistency.start_scales and end_scales must be ≥ 0 (0: the paper's) with start ≤ end, "
      f"got {c.start_scales} and {c.end_scales}."
    )
  if c.teacher_guidance != 1.0 and not config.model.class_conditional:
    raise ValueError(
      "consistency.teacher_guidance needs a class-conditional teacher (model.class_conditional)."
    )
  if config.diffusion.timestep_sampler != "uniform":
    raise ValueError(
      "consistency models draw their own noise levels; set diffusion.timestep_sampler='uniform'."
    )


def check_training(config) -> None:
  """`check`, and what CT and iCT refuse besides: a grid other than Karras's (they have no teacher
  whose timesteps 'timesteps' would follow)."""
  check(config)
  if config.consistency.grid != "karras":
    raise ValueError(
      f"consistency.grid={config.consistency.grid!r} is a teacher's grid, for "
      "consistency_distillation only; consistency training uses the Karras grid ('karras')."
    )


def no_bound(config, schedule):
  """--mode=eval's bits/dim: a consistency model defines no likelihood to bound."""
  raise ValueError(
    f"diffusion.loss={config.diffusion.loss!r} trains a consistency model, which has no "
    "likelihood bound; set --config.eval.bits_per_dim=False."
  )


def uses_lpips(config) -> bool:
  return config.consistency.distance == "lpips"
