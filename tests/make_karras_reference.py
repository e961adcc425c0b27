"""Writes tests/data/karras_reference.npz: diffusers' Euler, Heun and Euler-ancestral samples.

Run once, from the repository root, in the environment of tests/make_sampler_reference.py:

    /tmp/refvenv/bin/python tests/make_karras_reference.py

The toy model is make_sampler_reference's analytic one, 0.1 x + 0.05 sin(t / 100), which takes
fractional t; it records the timestep of every call. Each case runs diffusers' pipeline loop by
hand (x = x_T · init_noise_sigma; per timestep: scale_model_input, model, step) and stores the
image after every full step, the model-call timesteps and, for the ancestral sampler, the noise
diffusers drew from a seeded generator in the float32 run (`<case>/noise`, noise[i] the draw of
step i); the float64 run replays those draws, so the two runs differ by rounding alone.

Each case is stored twice: `f32/…` with diffusers' defaults, `f64/…` with its math in float64.
The Euler schedulers cast to float32 in `step` and `set_timesteps` (torch.float32, np.float32),
so the float64 run swaps those two names in the scheduler modules for float64 ones, and sets
float64 β and ᾱ tables, as make_sampler_reference does.
"""

import diffusers
import numpy as np
import torch
from diffusers.schedulers import (
  scheduling_euler_ancestral_discrete,
  scheduling_euler_discrete,
  scheduling_heun_discrete,
)
from diffusers_reference import DIFFUSERS_PREDICTION, float64_schedulers, save, schedule_options
from make_sampler_reference import SHAPE, fake_model, widen

MODULES = (scheduling_euler_discrete, scheduling_heun_discrete, scheduling_euler_ancestral_discrete)
SCHEDULERS = {
  "euler": diffusers.EulerDiscreteScheduler,
  "heun": diffusers.HeunDiscreteScheduler,
  "euler_ancestral": diffusers.EulerAncestralDiscreteScheduler,
}
STEPS = {"euler": 7, "heun": 5, "euler_ancestral": 7}  # 7: 'linspace' visits fractional t

# (sampler, schedule, spacing, karras, prediction)
CASES = [
  *[
    ("euler", "linear", spacing, karras, "epsilon")
    for spacing in ("leading", "trailing", "linspace")
    for karras in (0, 1)
  ],
  ("euler", "cosine", "trailing", 0, "v"),
  ("euler", "cosine", "linspace", 1, "v"),
  ("euler", "linear", "leading", 0, "x0"),
  *[
    ("heun", "linear", spacing, karras, "epsilon")
    for spacing in ("leading", "linspace")
    for karras in (0, 1)
  ],
  ("heun", "cosine", "trailing", 1, "v"),
  ("heun", "linear", "linspace", 0, "x0"),
  *[
    ("euler_ancestral", "linear", spacing, 0, "epsilon")
    for spacing in ("leading", "trailing", "linspace")
  ],
  ("euler_ancestral", "cosine", "trailing", 0, "v"),
  # diffusers' ancestral scheduler has no Karras option: its step on EulerDiscrete's Karras grid
  ("euler_ancestral", "linear", "linspace", 1, "epsilon"),
]


def make_scheduler(sampler, schedule, spacing, karras, prediction, wide):
  options = {
    **schedule_options(schedule),
    "timestep_spacing": spacing,
    "prediction_type": DIFFUSERS_PREDICTION[prediction],
  }
  if sampler != "euler_ancestral":
    options["use_karras_sigmas"] = bool(karras)
  scheduler = SCHEDULERS[sampler](**options)
  if wide:
    widen(scheduler, schedule)
  scheduler.set_timesteps(STEPS[sampler])
  if sampler == "euler_ancestral" and karras:
    options.pop("prediction_type")
    grid = diffusers.EulerDiscreteScheduler(**options, use_karras_sigmas=True)
    if wide:
      widen(grid, schedule)
    grid.set_timesteps(STEPS[sampler])
    scheduler.sigmas, scheduler.timesteps = grid.sigmas, grid.timesteps
  return scheduler


def run_case(sampler, schedule, spacing, karras, prediction, x_T, wide, noise=None):
  """Runs one case; the ancestral sampler's draws are recorded, or replayed from `noise`."""
  dtype = torch.float64 if wide else torch.float32
  scheduler = make_scheduler(sampler, schedule, spacing, karras, prediction, wide)
  calls, draws = [], []
  draw = scheduling_euler_ancestral_discrete.randn_tensor

  def recording_draw(shape, generator=None, device=None, dtype=None, **kwargs):
    if noise is not None:
      z = torch.from_numpy(noise[len(draws)]).to(dtype)
    else:
      z = draw(shape, generator=generator, device=device, dtype=dtype, **kwargs)
    draws.append(z.numpy().copy())
    return z

  def model(x, t):
    calls.append(float(t))
    return fake_model(x, t)

  scheduling_euler_ancestral_discrete.randn_tensor = recording_draw
  generator = torch.Generator().manual_seed(1234)
  kwargs = {"generator": generator} if sampler == "euler_ancestral" else {}
  x = torch.from_numpy(x_T).to(dtype) * scheduler.init_noise_sigma
  trajectory = []
  try:
    for i, t in enumerate(scheduler.timesteps):
      out = model(scheduler.scale_model_input(x, t), t)
      x = scheduler.step(out, t, x, **kwargs).prev_sample
      last = i == len(scheduler.timesteps) - 1
      # Heun's step alternates predictor and corrector; a full step ends in first-order state.
      if sampler != "heun" or scheduler.state_in_first_order or last:
        trajectory.append(x.numpy().copy())
  finally:
    scheduling_euler_ancestral_discrete.randn_tensor = draw
  assert x.dtype == dtype
  result = {"trajectory": np.stack(trajectory), "calls": np.array(calls)}
  return result, (np.stack(draws) if draws else None)


def case_name(sampler, schedule, spacing, karras, prediction):
  return f"{sampler}_{schedule}_{spacing}_karras{karras}_{prediction}"


def main():
  x_T = np.random.default_rng(0).standard_normal(SHAPE)
  data, names = {"x_T": x_T}, []
  for case in CASES:
    name = case_name(*case)
    result, noise = run_case(*case, x_T, wide=False)
    with float64_schedulers(*MODULES):
      wide_result, _ = run_case(*case, x_T, wide=True, noise=noise)
    for precision, values in (("f32", result), ("f64", wide_result)):
      for key, value in values.items():
        data[f"{precision}/{name}/{key}"] = value
    if noise is not None:
      data[f"{name}/noise"] = noise
    names.append(name)
  data["cases"] = np.array(names)
  save("karras", data, len(names))


if __name__ == "__main__":
  main()
