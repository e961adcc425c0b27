"""The sampler table: a name (`sample.sampler`) → how to run that sampler from `sample.*` options.

Adding a sampler is a new module with its pure function plus one entry in `SAMPLERS`; options it
reads that no sampler had before get one line in `OPTIONS`. The config schema's `sample` section,
its allowed values and the validation of each option are derived from these two tables
(`jaxdiff.config`), so nothing else repeats them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jaxdiff import flow, preconditioning, schedules
from jaxdiff.diffusion import PREDICTIONS, VARIANCES
from jaxdiff.samplers.consistency import check_sigmas, consistency
from jaxdiff.samplers.ddim import SPACINGS, ddim
from jaxdiff.samplers.ddpm import ddpm
from jaxdiff.samplers.dpm_solver import ALGORITHMS, ORDERS, SOLVER_TYPES, dpm_solver
from jaxdiff.samplers.flow import flow_euler, flow_heun
from jaxdiff.samplers.flow_sigmas import TIME_SHIFT_TYPES
from jaxdiff.samplers.karras import euler, euler_ancestral, heun
from jaxdiff.samplers.unipc import SOLVER_TYPES as UNIPC_SOLVER_TYPES
from jaxdiff.samplers.unipc import unipc


@dataclasses.dataclass(frozen=True)
class Option:
  default: Any
  doc: str
  choices: tuple | None = None  # allowed values; None: any value of the default's type
  check: Callable[[Any], str | None] | None = None  # returns the problem in words, or None
  kind: type | None = None  # the type of an option whose default is None (unset)


def _unit_interval(value) -> str | None:
  return None if 0.0 <= value <= 1.0 else f"must lie in [0, 1], got {value}"


def _positive(value) -> str | None:
  return None if value >= 1 else f"must be at least 1, got {value}"


def _sigmas(value) -> str | None:
  return check_sigmas(value) if len(value) else None


def _shift(value) -> str | None:
  return None if value > 0 else f"must be > 0 (1 is no shift, SD3 uses 3), got {value}"


# Every option any sampler reads, as `sample.<name>` in the config.
OPTIONS: dict[str, Option] = {
  "num_steps": Option(
    50, "DDIM steps; DDPM respaces to this many (ADM), T for the full chain", check=_positive
  ),
  "eta": Option(0.0, "DDIM's η: 0 deterministic, 1 DDPM-like", check=_unit_interval),
  "spacing": Option(
    "leading",
    "timestep spacing of DDIM and the σ-space and multistep solvers ('leading' is DDIM's default; "
    "diffusers' DPM-Solver defaults to 'linspace', its Euler/Heun to 'leading')",
    choices=SPACINGS,
  ),
  "variance": Option(
    "fixed_small",
    "σ² of DDPM steps and of η-scaled DDIM steps: 'fixed_small' (β̃), 'fixed_large' (β) or "
    "'learned_range' (the model's interpolation; needs model.learn_sigma)",
    choices=VARIANCES,
  ),
  "clip_denoised": Option(True, "clip the predicted x_0 to [-1, 1] (pixel space)"),
  "use_karras_sigmas": Option(False, "the σ grid of Karras et al. 2022 (ρ = 7)"),
  "order": Option(2, "the order of DPM-Solver and UniPC", choices=ORDERS),
  "algorithm": Option("dpmsolver++", "DPM-Solver's algorithm", choices=ALGORITHMS),
  "solver_type": Option("midpoint", "DPM-Solver's second-order update", choices=SOLVER_TYPES),
  "lower_order_final": Option(True, "lower-order last steps, as diffusers decides them"),
  "thresholding": Option(False, "dynamic thresholding of x̂_0 (Imagen), pixel space"),
  "unipc_solver_type": Option("bh2", "UniPC's B(h)", choices=UNIPC_SOLVER_TYPES),
  "sigmas": Option(
    (),
    "the consistency sampler's noise levels, σ_0 first (decreasing, ≥ σ_min = 0.002), one per "
    "step; () picks num_steps of them: 80 for one, (80, 1.3824) for two (CD ImageNet 64), Karras "
    "points for more (samplers/consistency.py: default_sigmas), each moved to the nearest σ of "
    "the last training grid for a network trained by consistency training",
    check=_sigmas,
  ),
  "gamma": Option(
    1.0,
    "the consistency sampler's share of fresh noise when it re-noises x̂_0: 1 is Algorithm 1 "
    "(Song et al. 2023), 0 re-noises along the noise x̂_0 came from (deterministic), between mixes "
    "the two (CTM's γ-sampling; samplers/consistency.py)",
    check=_unit_interval,
  ),
  "flow_shift": Option(
    1.0,
    "a flow model's σ-grid shift s, σ' = sσ/(1 + (s − 1)σ) (SD3: 3; diffusers' `shift` of its "
    "FlowMatch schedulers, `flow_shift` of UniPC and DPM-Solver with use_flow_sigmas)",
    check=_shift,
  ),
  "use_dynamic_shifting": Option(
    False, "shift a flow model's σ grid by sample.mu instead of flow_shift (Flux)"
  ),
  "mu": Option(
    None,
    "μ of the dynamic shift, required with use_dynamic_shifting (Flux: 0.5 at 256 image tokens "
    "up to 1.15 at 4096)",
    kind=float,
  ),
  "time_shift_type": Option(
    "exponential",
    "flow_euler's dynamic shift: 'exponential' e^μ/(e^μ + 1/σ − 1) or 'linear' μ/(μ + 1/σ − 1)",
    choices=TIME_SHIFT_TYPES,
  ),
}


@dataclasses.dataclass(frozen=True)
class Sampler:
  """run(model_fn, schedule, x_T, *, prediction, [key,] **options) -> x_0, reading `options`."""

  run: Callable
  options: tuple[str, ...]
  takes_key: bool = False  # a stochastic sampler (or one with stochastic settings) gets `key=`
  # the problem with its options taken together, as a sentence naming the fix, or None
  check: Callable[[Mapping[str, Any]], str | None] | None = None
  # the diffusion.prediction values it can sample: a diffusion sampler integrates a model of the
  # discrete predictions; only the consistency sampler knows a consistency student's raw F
  predictions: tuple[str, ...] = PREDICTIONS
  # what else it reads from the run, by name, as keyword arguments: 'trained_sigmas' (the σ's a
  # consistency-trained network was last trained at, from the objective table; or None)
  context: tuple[str, ...] = ()
  # the options it reads on a flow model (diffusion.prediction='flow') where they differ from
  # `options` (a diffusion sampler that also samples flow models on their own σ grid)
  flow_options: tuple[str, ...] | None = None

  def reads(self, prediction: str | None = None) -> tuple[str, ...]:
    """The options it reads on a network of `prediction`; None: on any network it samples."""
    if self.flow_options is None:
      return self.options
    if prediction is None:
      return self.options + tuple(o for o in self.flow_options if o not in self.options)
    return self.flow_options if prediction == flow.PREDICTION else self.options


def _ddpm(model_fn, schedule, x_T, *, num_steps, **options):
  # ADM: DDPM with fewer steps than the model was trained with samples a respaced schedule.
  if num_steps < schedule.num_timesteps:
    schedule = schedules.respace(schedule, f"{num_steps}")
  return ddpm(model_fn, schedule, x_T, **options)


def _unipc(model_fn, schedule, x_T, *, unipc_solver_type, **options):
  return unipc(model_fn, schedule, x_T, solver_type=unipc_solver_type, **options)


def _flow_euler(model_fn, schedule, x_T, *, flow_shift, **options):
  return flow_euler(model_fn, schedule, x_T, shift=flow_shift, **options)


def _flow_heun(model_fn, schedule, x_T, *, flow_shift, **options):
  return flow_heun(model_fn, schedule, x_T, shift=flow_shift, **options)


def _flow_shifting(values) -> str | None:
  """How the flow-grid options fit together: μ exactly when dynamic shifting, no fixed shift or
  shift type that would be ignored."""
  if not values["use_dynamic_shifting"]:
    if values["mu"] is not None:
      return f"sample.mu={values['mu']!r} has no effect without sample.use_dynamic_shifting=True"
    if values["time_shift_type"] != OPTIONS["time_shift_type"].default:
      return "sample.time_shift_type has no effect without sample.use_dynamic_shifting=True"
    return None
  if values["mu"] is None:
    return (
      "sample.use_dynamic_shifting needs sample.mu, the shift's exponent (Flux: 0.5 at 256 image "
      "tokens up to 1.15 at 4096); set --config.sample.mu"
    )
  if values["flow_shift"] != OPTIONS["flow_shift"].default:
    return "sample.flow_shift has no effect with sample.use_dynamic_shifting (sample.mu sets it)"
  if values["time_shift_type"] == "linear" and not values["mu"] > 0:
    return f"the linear time shift μ/(μ + 1/σ − 1) needs sample.mu > 0, got {values['mu']}"
  return None


def _consistency(model_fn, schedule, x_T, *, prediction, sigmas, **options):
  # f(x, σ) of the (guided) student network, by the function its objective trains: the raw F of
  # the consistency parameterisation, or a distilled discrete model of `prediction` on `schedule`.
  # Default σ's (sigmas = ()) move onto the `trained_sigmas` the objective reports, if any.
  f = preconditioning.student_function(model_fn, prediction=prediction, schedule=schedule)
  return consistency(f, x_T, sigmas=tuple(sigmas) or None, **options)


def _consistency_steps(values) -> str | None:
  count = len(values["sigmas"])
  if count and count != values["num_steps"]:
    return (
      f"sample.sigmas has {count} σ's but sample.num_steps={values['num_steps']} (one σ a step); "
      f"set sample.num_steps={count}"
    )
  return None


SAMPLERS: dict[str, Sampler] = {
  "ddim": Sampler(ddim, ("num_steps", "eta", "spacing", "variance", "clip_denoised"), True),
  "ddpm": Sampler(_ddpm, ("num_steps", "variance", "clip_denoised"), True),
  "euler": Sampler(euler, ("num_steps", "spacing", "use_karras_sigmas")),
  "heun": Sampler(heun, ("num_steps", "spacing", "use_karras_sigmas")),
  "euler_ancestral": Sampler(euler_ancestral, ("num_steps", "spacing", "use_karras_sigmas"), True),
  "dpm_solver": Sampler(
    dpm_solver,
    (
      "num_steps",
      "order",
      "algorithm",
      "solver_type",
      "lower_order_final",
      "spacing",
      "use_karras_sigmas",
      "thresholding",
    ),
    True,
    _flow_shifting,
    PREDICTIONS + (flow.PREDICTION,),
    flow_options=(
      "num_steps",
      "order",
      "algorithm",
      "solver_type",
      "lower_order_final",
      "thresholding",
      "flow_shift",
      "use_dynamic_shifting",
      "mu",
    ),
  ),
  "unipc": Sampler(
    _unipc,
    (
      "num_steps",
      "order",
      "unipc_solver_type",
      "lower_order_final",
      "spacing",
      "use_karras_sigmas",
    ),
    check=_flow_shifting,
    predictions=PREDICTIONS + (flow.PREDICTION,),
    flow_options=(
      "num_steps",
      "order",
      "unipc_solver_type",
      "lower_order_final",
      "flow_shift",
      "use_dynamic_shifting",
      "mu",
    ),
  ),
  "consistency": Sampler(
    _consistency,
    ("num_steps", "sigmas", "clip_denoised", "gamma"),
    True,
    _consistency_steps,
    preconditioning.STUDENT_PREDICTIONS,
    context=("trained_sigmas",),
  ),
  # flow models (diffusion.prediction='flow'): diffusers' FlowMatch schedulers (samplers/flow.py)
  "flow_euler": Sampler(
    _flow_euler,
    (
      "num_steps",
      "flow_shift",
      "use_dynamic_shifting",
      "mu",
      "time_shift_type",
      "use_karras_sigmas",
    ),
    check=_flow_shifting,
    predictions=(flow.PREDICTION,),
  ),
  "flow_heun": Sampler(
    _flow_heun, ("num_steps", "flow_shift"), check=_flow_shifting, predictions=(flow.PREDICTION,)
  ),
}


def check_options(name: str, values: Mapping[str, Any], prediction: str | None = None) -> None:
  """ValueError naming the first `sample.*` value the sampler `name` does not accept, or an option
  it does not read (on a network of `prediction`, if given) set away from its default (it would
  be silently ignored)."""
  if name not in SAMPLERS:
    raise ValueError(f"sample.sampler must be one of {list(SAMPLERS)}, got {name!r}.")
  sampler = SAMPLERS[name]
  for option, spec in OPTIONS.items():
    value = values[option]
    if isinstance(value, list):  # a config read back from a workdir's config.json
      value = tuple(value)
    if option not in sampler.reads(prediction):
      if value == spec.default:
        continue
      if option in sampler.reads():  # read on networks of another prediction only
        raise ValueError(
          f"sample.{option}={value!r} has no effect with sample.sampler={name!r} on a network "
          f"of diffusion.prediction={prediction!r}; leave it at {spec.default!r}."
        )
      raise ValueError(
        f"sample.{option}={value!r} has no effect with sample.sampler={name!r}; samplers that "
        f"read it: {[n for n, s in SAMPLERS.items() if option in s.reads()]}."
      )
    if spec.choices is not None and value not in spec.choices:
      raise ValueError(f"sample.{option} must be one of {list(spec.choices)}, got {value!r}.")
    problem = spec.check(value) if spec.check else None
    if problem:
      raise ValueError(f"sample.{option} {problem}.")
  problem = SAMPLERS[name].check(values) if SAMPLERS[name].check else None
  if problem:
    raise ValueError(f"{problem}.")


def check_prediction(name: str, prediction: str) -> None:
  """ValueError when sampler `name` cannot sample a network of diffusion.prediction `prediction`."""
  if prediction not in SAMPLERS[name].predictions:
    able = [n for n, s in SAMPLERS.items() if prediction in s.predictions]
    raise ValueError(
      f"sample.sampler={name!r} cannot sample a network of diffusion.prediction={prediction!r}; "
      f"use sample.sampler={able[0]!r}" + (f" (or one of {able[1:]})." if able[1:] else ".")
    )


def run(
  name: str,
  model_fn,
  schedule,
  x_T,
  *,
  key,
  prediction: str,
  options: Mapping[str, Any],
  context: Mapping[str, Any] | None = None,
):
  """Runs sampler `name` with the options it reads taken from `options` (e.g. config.sample) and
  the run's facts it names in `Sampler.context` taken from `context` (None when absent)."""
  check_prediction(name, prediction)
  sampler = SAMPLERS[name]
  chosen = {option: options[option] for option in sampler.reads(prediction)}
  chosen |= {fact: (context or {}).get(fact) for fact in sampler.context}
  if sampler.takes_key:
    chosen["key"] = key
  return sampler.run(model_fn, schedule, x_T, prediction=prediction, **chosen)
