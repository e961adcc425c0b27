"""The sampler table: a name (`sample.sampler`) → how to run that sampler from `sample.*` options.

Adding a sampler is a new module with its pure function plus one entry in `SAMPLERS`; options it
reads that no sampler had before get one line in `OPTIONS`. The config schema's `sample` section,
its allowed values and the validation of each option are derived from these two tables
(`jaxdiff.config`), so nothing else repeats them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxdiff import schedules
from jaxdiff.diffusion import VARIANCES
from jaxdiff.samplers.ddim import SPACINGS, ddim
from jaxdiff.samplers.ddpm import ddpm


@dataclasses.dataclass(frozen=True)
class Option:
  default: Any
  doc: str
  choices: tuple | None = None  # allowed values; None: any value of the default's type
  check: Callable[[Any], str | None] | None = None  # returns the problem in words, or None


def _unit_interval(value) -> str | None:
  return None if 0.0 <= value <= 1.0 else f"must lie in [0, 1], got {value}"


def _positive(value) -> str | None:
  return None if value >= 1 else f"must be at least 1, got {value}"


# Every option any sampler reads, as `sample.<name>` in the config.
OPTIONS: dict[str, Option] = {
  "num_steps": Option(
    50, "DDIM steps; DDPM respaces to this many (ADM), T for the full chain", check=_positive
  ),
  "eta": Option(0.0, "DDIM's η: 0 deterministic, 1 DDPM-like", check=_unit_interval),
  "spacing": Option("leading", "DDIM timestep spacing", choices=SPACINGS),
  "variance": Option(
    "fixed_small",
    "σ² of DDPM steps and of η-scaled DDIM steps: 'fixed_small' (β̃), 'fixed_large' (β) or "
    "'learned_range' (the model's interpolation; needs model.learn_sigma)",
    choices=VARIANCES,
  ),
  "clip_denoised": Option(True, "clip the predicted x_0 to [-1, 1] (pixel space)"),
}


@dataclasses.dataclass(frozen=True)
class Sampler:
  """run(model_fn, schedule, x_T, *, key, prediction, **options) -> x_0, reading `options`."""

  run: Callable
  options: tuple[str, ...]


def _run_ddpm(model_fn, schedule, x_T, *, key, prediction, num_steps, **options):
  # ADM: DDPM with fewer steps than the model was trained with samples a respaced schedule.
  if num_steps < schedule.num_timesteps:
    schedule = schedules.respace(schedule, f"{num_steps}")
  return ddpm(model_fn, schedule, x_T, key=key, prediction=prediction, **options)


def _run_ddim(model_fn, schedule, x_T, *, key, prediction, **options):
  return ddim(model_fn, schedule, x_T, key=key, prediction=prediction, **options)


SAMPLERS: dict[str, Sampler] = {
  "ddim": Sampler(_run_ddim, ("num_steps", "eta", "spacing", "variance", "clip_denoised")),
  "ddpm": Sampler(_run_ddpm, ("num_steps", "variance", "clip_denoised")),
}


def check_options(name: str, values: Mapping[str, Any]) -> None:
  """ValueError naming the first `sample.*` value the sampler `name` does not accept."""
  if name not in SAMPLERS:
    raise ValueError(f"sample.sampler must be one of {list(SAMPLERS)}, got {name!r}.")
  for option in SAMPLERS[name].options:
    spec, value = OPTIONS[option], values[option]
    if spec.choices is not None and value not in spec.choices:
      raise ValueError(f"sample.{option} must be one of {list(spec.choices)}, got {value!r}.")
    problem = spec.check(value) if spec.check else None
    if problem:
      raise ValueError(f"sample.{option} {problem}.")


def run(name: str, model_fn, schedule, x_T, *, key, prediction: str, options: Mapping[str, Any]):
  """Runs sampler `name` with the options it reads taken from `options` (e.g. config.sample)."""
  sampler = SAMPLERS[name]
  chosen = {option: options[option] for option in sampler.options}
  return sampler.run(model_fn, schedule, x_T, key=key, prediction=prediction, **chosen)
