"""Writes tests/data/dpm_solver_reference.npz: diffusers' DPMSolverMultistepScheduler on a toy model.

Run once, from the repository root, in the environment of tests/make_sampler_reference.py:

    /tmp/refvenv/bin/python tests/make_dpm_solver_reference.py

What is stored, the toy model and the float32/float64 runs are those of
`diffusers_reference.write_multistep_reference`; a case may set the model's `gain` and the `seed`
of diffusers' noise. diffusers hard-codes float32 in two places (the sigma table in
`set_timesteps` and the upcast of the sample in `step`), which the float64 run points at float64.

The SDE cases let diffusers draw its own noise (a seeded generator) and record each draw; the
float64 run replays the same draws, and both are stored (noise[i] is the draw of step i).
"""

import contextlib

import diffusers
import numpy as np
import torch
from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_module
from diffusers_reference import (
  NoiseRecorder,
  float64_schedulers,
  multistep_options,
  run_loop,
  set_betas,
  write_multistep_reference,
)
from make_sampler_reference import betas64


def make_scheduler(c, wide):
  kwargs = dict(
    **multistep_options(c),
    algorithm_type=c["algorithm"],
    thresholding=c["thresholding"],
    dynamic_thresholding_ratio=c["dynamic_thresholding_ratio"],
    sample_max_value=c["sample_max_value"],
  )
  # jaxdiff's default final sigma is diffusers' default where diffusers accepts it, else
  # 'sigma_min' (DPM-Solver's λ would be infinite at σ = 0).
  default_final = "sigma_min" if c["algorithm"] == "dpmsolver" else "zero"
  kwargs["final_sigmas_type"] = c.get("final_sigmas_type") or default_final
  scheduler = diffusers.DPMSolverMultistepScheduler(**kwargs)
  if wide:
    set_betas(scheduler, torch.from_numpy(betas64(c["schedule"])))
  return scheduler


def run(c, x_T, noise, wide):
  """(final sample, model-call timesteps, noise draws) of one case."""
  generator = torch.Generator().manual_seed(c.get("seed", 0))

  def step(i, t, x, out):
    replay = None if noise is None else torch.from_numpy(noise[i]).to(x.dtype)
    return scheduler.step(out, t, x, generator=generator, variance_noise=replay).prev_sample

  recorder = NoiseRecorder(dpm_module.randn_tensor)
  saved = dpm_module.randn_tensor
  dpm_module.randn_tensor = recorder
  try:
    with float64_schedulers(dpm_module) if wide else contextlib.nullcontext():
      scheduler = make_scheduler(c, wide)
      x, calls = run_loop(scheduler, c, x_T, wide, step)
  finally:
    dpm_module.randn_tensor = saved
  draws = np.stack([d.numpy() for d in recorder.draws]) if recorder.draws else None
  return x.numpy(), calls, draws


DEFAULTS = dict(
  schedule="linear",
  num_steps=20,
  order=2,
  algorithm="dpmsolver++",
  solver_type="midpoint",
  lower_order_final=True,
  spacing="linspace",
  use_karras_sigmas=False,
  prediction="epsilon",
  thresholding=False,
  dynamic_thresholding_ratio=0.995,
  sample_max_value=1.0,
)

CASES = {
  # DPM-Solver++ orders; 20 steps: only the last step is first order (final sigma 0).
  "pp_o1_linear": dict(order=1),
  "pp_o2_linear": dict(),
  "pp_o3_linear_n20": dict(order=3),
  # Under 15 steps lower_order_final also lowers the second-to-last step.
  "pp_o3_cosine_n10_lof1": dict(schedule="cosine", order=3, num_steps=10),
  "pp_o3_cosine_n10_lof0": dict(schedule="cosine", order=3, num_steps=10, lower_order_final=False),
  "pp_o2_linear_n10_lof0_sigmamin": dict(
    num_steps=10, lower_order_final=False, final_sigmas_type="sigma_min"
  ),
  "pp_o3_linear_n12_lof1_sigmamin": dict(order=3, num_steps=12, final_sigmas_type="sigma_min"),
  # DPM-Solver (noise prediction): diffusers accepts only a sigma_min final step for it.
  "dpm_o2_linear": dict(algorithm="dpmsolver", final_sigmas_type="sigma_min"),
  "dpm_o3_cosine_n10_lof1": dict(
    algorithm="dpmsolver", order=3, schedule="cosine", num_steps=10, final_sigmas_type="sigma_min"
  ),
  "dpm_o3_linear_n25": dict(algorithm="dpmsolver", order=3, num_steps=25),
  "pp_o2_heun_cosine": dict(schedule="cosine", solver_type="heun", num_steps=15),
  "dpm_o2_heun_linear": dict(algorithm="dpmsolver", solver_type="heun", num_steps=12),
  "pp_o2_leading_linear": dict(spacing="leading"),
  "pp_o3_trailing_cosine": dict(spacing="trailing", schedule="cosine", order=3, num_steps=25),
  "pp_o2_karras_linear": dict(use_karras_sigmas=True),
  # The last Karras σ is σ_min: with a 'sigma_min' final the last step has h = 0 (the identity).
  "pp_o2_karras_cosine_sigmamin": dict(
    use_karras_sigmas=True, schedule="cosine", num_steps=16, final_sigmas_type="sigma_min"
  ),
  # Cosine Karras: diffusers leaves the timesteps fractional, then truncates them to int64.
  "pp_o3_karras_cosine": dict(use_karras_sigmas=True, schedule="cosine", order=3, num_steps=15),
  "pp_o2_v_cosine": dict(prediction="v", schedule="cosine"),
  "pp_o2_x0_linear": dict(prediction="x0", gain=0.9),
  "dpm_o2_v_linear": dict(algorithm="dpmsolver", prediction="v"),
  # (On the cosine schedule this pairing loses 1e-4 in float32 in diffusers itself: the first
  # step scales x by α_t/α_s ≈ 10³ and cancels it against the ε̂ implied by x̂0.)
  "dpm_o3_x0_linear": dict(algorithm="dpmsolver", prediction="x0", order=3, gain=0.9),
  # A gain of 1.5 makes x̂0 large enough for the quantile to lie between 1 and sample_max_value.
  "pp_o2_x0_threshold": dict(
    prediction="x0",
    thresholding=True,
    dynamic_thresholding_ratio=0.9,
    sample_max_value=1.6,
    gain=1.5,
  ),
  "dpm_o2_eps_threshold": dict(
    algorithm="dpmsolver",
    thresholding=True,
    dynamic_thresholding_ratio=0.9,
    sample_max_value=1.6,
    gain=-3.0,
    num_steps=12,
  ),
  "sde_o2_linear": dict(algorithm="sde-dpmsolver++", seed=1),
  "sde_o3_heun_cosine_n10": dict(
    algorithm="sde-dpmsolver++", order=3, schedule="cosine", num_steps=10, seed=2
  ),
  "sde_o2_heun_linear_n12": dict(algorithm="sde-dpmsolver++", solver_type="heun", num_steps=12),
}


def run_case(name, c, x_T):
  final32, calls32, draws = run(c, x_T, None, wide=False)
  final64, calls64, _ = run(c, x_T, draws, wide=True)
  noise = {} if draws is None else {f"{name}/noise": draws.astype(np.float32)}
  return (final32, final64), (calls32, calls64), noise, ""


def main():
  scheduler_class = diffusers.DPMSolverMultistepScheduler
  write_multistep_reference("dpm_solver", scheduler_class, DEFAULTS, CASES, run_case)


if __name__ == "__main__":
  main()
