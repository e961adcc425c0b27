"""Writes tests/data/zero_snr_reference.npz: diffusers with `rescale_betas_zero_snr=True`.

Run once, from the repository root, in the environment of tests/make_sampler_reference.py:

    /tmp/refvenv/bin/python tests/make_zero_snr_reference.py

Stored:

- `tables/<schedule>/alphas_cumprod`: DDIMScheduler(rescale_betas_zero_snr=True).alphas_cumprod,
  diffusers' float32 table, and `tables64/scaled_linear/alphas_cumprod` the same rescaling
  (diffusers' own function) applied to the float64 βs of make_sampler_reference.betas64.
- Sampler cases (Lin et al.'s recipe: 'trailing' spacing, v-prediction; one DDIM case with x_0
  prediction) with make_sampler_reference's analytic model, 0.1 x + 0.05 sin(t / 100), as the
  model output: `f32/<case>/trajectory` (the image after every step, diffusers' float32 defaults),
  `f64/<case>/trajectory` (every table and tensor in float64) and `<precision>/<case>/calls` (the
  timesteps the model was called at), and `config/<case>`, the case as JSON. DDIM with η > 0 and
  Euler-ancestral replay the stored `noise` (noise[i] is the draw of step i), as
  make_sampler_reference does.

diffusers rescales its βs in float32 and, in its σ-space schedulers (Euler, Euler-ancestral,
DPM-Solver), then sets the last ᾱ to 2**-24; the float64 runs rescale the float64 βs with the same
function and set the same ᾱ, and point the modules' float32 at float64 while they run
(diffusers_reference.float64_schedulers).
"""

import contextlib
import json

import diffusers
import numpy as np
import torch
from diffusers.schedulers import (
  scheduling_ddim,
  scheduling_dpmsolver_multistep,
  scheduling_euler_ancestral_discrete,
  scheduling_euler_discrete,
)
from diffusers_reference import (
  DIFFUSERS_PREDICTION,
  float64_schedulers,
  save,
  schedule_options,
  set_betas,
)
from make_sampler_reference import DIFFUSERS_SCHEDULE, SHAPE, betas64, fake_model

SCHEDULERS = {
  "ddim": diffusers.DDIMScheduler,
  "euler": diffusers.EulerDiscreteScheduler,
  "euler_ancestral": diffusers.EulerAncestralDiscreteScheduler,
  "dpm_solver": diffusers.DPMSolverMultistepScheduler,
}
# The modules whose float32 casts a float64 run points at float64 (DDIM's has none).
FLOAT32_MODULES = (
  scheduling_euler_discrete,
  scheduling_euler_ancestral_discrete,
  scheduling_dpmsolver_multistep,
)
# diffusers' stand-in for ᾱ_T = 0 in its σ-space schedulers (read from their __init__).
SIGMA_SPACE_LAST_ALPHA_CUMPROD = 2**-24

# name → (sampler, schedule, prediction, num_steps, options); every case uses 'trailing' spacing.
CASES = {
  "ddim_scaled_linear_v_n25": ("ddim", "scaled_linear", "v", 25, dict(eta=0.0, clip_sample=True)),
  # η = 0.5, not 1: at η = 1 the first step's direction variance 1 − ᾱ_prev − σ² is exactly 0
  # (ᾱ_t = 0), so its float64 rounding (±1e-16, whose √ is 1e-8) alone sets the difference.
  "ddim_linear_v_n10_eta05": ("ddim", "linear", "v", 10, dict(eta=0.5, clip_sample=False)),
  "ddim_cosine_x0_n10": ("ddim", "cosine", "x0", 10, dict(eta=0.0, clip_sample=False)),
  "euler_scaled_linear_v_n10": ("euler", "scaled_linear", "v", 10, {}),
  # Linear βs: 2**-24 exceeds ᾱ_998 ≈ 4e-9, so σ_999 < σ_998 (diffusers keeps that as it is).
  "euler_linear_v_n7": ("euler", "linear", "v", 7, {}),
  "euler_ancestral_scaled_linear_v_n10": ("euler_ancestral", "scaled_linear", "v", 10, {}),
  "dpm_solver_scaled_linear_v_n10": ("dpm_solver", "scaled_linear", "v", 10, dict(order=2)),
  "dpm_solver_linear_v_n12_o3": ("dpm_solver", "linear", "v", 12, dict(order=3)),
}


def zero_snr_betas64(schedule):
  return scheduling_ddim.rescale_zero_terminal_snr(torch.from_numpy(betas64(schedule)))


def make_scheduler(sampler, schedule, prediction, num_steps, options, wide):
  kwargs = dict(
    **schedule_options(schedule),
    timestep_spacing="trailing",
    prediction_type=DIFFUSERS_PREDICTION[prediction],
    rescale_betas_zero_snr=True,
  )
  if sampler == "ddim":
    kwargs["clip_sample"] = options["clip_sample"]
  if sampler == "dpm_solver":
    kwargs["solver_order"] = options["order"]
  scheduler = SCHEDULERS[sampler](**kwargs)
  if wide:
    set_betas(scheduler, zero_snr_betas64(schedule))
    if sampler == "ddim":
      scheduler.one = torch.tensor(1.0, dtype=torch.float64)
      scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    else:
      scheduler.alphas_cumprod[-1] = SIGMA_SPACE_LAST_ALPHA_CUMPROD
  assert float(scheduler.alphas_cumprod[-1]) == (
    0.0 if sampler == "ddim" else SIGMA_SPACE_LAST_ALPHA_CUMPROD
  )
  scheduler.set_timesteps(num_steps)
  return scheduler


def run(name, x_T, noise, wide):
  """(trajectory, model-call timesteps) of one case."""
  draw = scheduling_euler_ancestral_discrete.randn_tensor
  sampler, schedule, prediction, num_steps, options = CASES[name]
  dtype = torch.float64 if wide else torch.float32
  with float64_schedulers(*FLOAT32_MODULES) if wide else contextlib.nullcontext():
    scheduler = make_scheduler(sampler, schedule, prediction, num_steps, options, wide)
    assert len(scheduler.timesteps) == num_steps  # no trailing −1 for these n
    x = torch.from_numpy(x_T).to(dtype) * scheduler.init_noise_sigma
    trajectory, calls = [], []
    for i, t in enumerate(scheduler.timesteps):
      calls.append(float(t))
      out = fake_model(scheduler.scale_model_input(x, t), t)
      if sampler == "ddim":
        z = torch.from_numpy(noise[i]).to(dtype)
        x = scheduler.step(out, t, x, eta=options["eta"], variance_noise=z).prev_sample
      else:
        replay = lambda shape, dtype=None, i=i, **_: torch.from_numpy(noise[i]).to(dtype)
        scheduling_euler_ancestral_discrete.randn_tensor = replay
        try:
          x = scheduler.step(out, t, x).prev_sample
        finally:
          scheduling_euler_ancestral_discrete.randn_tensor = draw
      assert x.dtype == dtype and torch.isfinite(x).all()
      trajectory.append(x.numpy().copy())
  return np.stack(trajectory), np.array(calls)


def main():
  rng = np.random.default_rng(0)
  x_T = rng.standard_normal(SHAPE)
  noise = rng.standard_normal((max(case[3] for case in CASES.values()),) + SHAPE)
  data = {"x_T": x_T, "noise": noise}
  for schedule in DIFFUSERS_SCHEDULE:
    s = diffusers.DDIMScheduler(**schedule_options(schedule), rescale_betas_zero_snr=True)
    data[f"tables/{schedule}/alphas_cumprod"] = s.alphas_cumprod.numpy()
  # One float64 table: each is 23 KB compressed, and the file is to stay under 100 KB.
  wide = torch.cumprod(1.0 - zero_snr_betas64("scaled_linear"), dim=0)
  data["tables64/scaled_linear/alphas_cumprod"] = wide.numpy()
  for name, (sampler, schedule, prediction, num_steps, options) in CASES.items():
    for precision, wide in (("f32", False), ("f64", True)):
      trajectory, calls = run(name, x_T, noise, wide)
      data[f"{precision}/{name}/trajectory"] = trajectory
      data[f"{precision}/{name}/calls"] = calls
    config = dict(sampler=sampler, schedule=schedule, prediction=prediction, num_steps=num_steps)
    data[f"config/{name}"] = np.array(json.dumps({**config, **options}))
    print(f"{name}: t = {data[f'f64/{name}/calls'].tolist()}")
  data["cases"] = np.array(list(CASES))
  save("zero_snr", data, len(CASES))


if __name__ == "__main__":
  main()
