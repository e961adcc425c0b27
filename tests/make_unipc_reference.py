"""Writes tests/data/unipc_reference.npz: diffusers' UniPCMultistepScheduler on a toy model.

Run once, from the repository root, in the environment of tests/make_sampler_reference.py:

    /tmp/refvenv/bin/python tests/make_unipc_reference.py

What is stored, the toy model and the float32/float64 runs are those of
`diffusers_reference.write_multistep_reference`; a case may set the model's `gain`. The float64
run points diffusers' hard-coded float32 (its sigma table) at float64, and torch's default dtype
too (the `1` that UniPC appends to its λ-ratios is made in it).

bh1 onto σ = 0: diffusers' last step computes B(h)·0 with B(h) = h = −∞ and returns NaN; the
step's limit is x̂0 at that step, which diffusers has just stored (`model_outputs[-1]`). For those
cases the script checks that only the last step is NaN and records that x̂0 (`limit/<name>` = 1).
"""

import contextlib

import diffusers
import numpy as np
import torch
from diffusers.schedulers import scheduling_unipc_multistep as unipc_module
from diffusers_reference import (
  float64_schedulers,
  multistep_options,
  run_loop,
  set_betas,
  write_multistep_reference,
)
from make_sampler_reference import betas64


def default_final(c):
  """jaxdiff's default final σ: 0 where diffusers' step to it is defined (x̂0 solver, first-order
  last step), else σ_min."""
  last_order = 1 if c["lower_order_final"] else min(c["order"], c["num_steps"])
  return "zero" if c["predict_x0"] and last_order == 1 else "sigma_min"


def make_scheduler(c, wide):
  scheduler = diffusers.UniPCMultistepScheduler(
    **multistep_options(c),
    predict_x0=c["predict_x0"],
    final_sigmas_type=c.get("final_sigmas_type") or default_final(c),
    disable_corrector=list(c["disable_corrector"]),
  )
  if wide:
    set_betas(scheduler, torch.from_numpy(betas64(c["schedule"])))
  return scheduler


def run(c, x_T, wide):
  """(final sample, model-call timesteps, whether the final is bh1's limit) of one case."""
  wide_context = float64_schedulers(unipc_module, default_dtype=True)
  with wide_context if wide else contextlib.nullcontext():
    scheduler = make_scheduler(c, wide)
    x, calls = run_loop(scheduler, c, x_T, wide)
  limit = not bool(torch.isfinite(x).any())
  if limit:
    assert c["solver_type"] == "bh1" and scheduler.sigmas[-1] == 0, "unexpected NaN"
    x = scheduler.model_outputs[-1]
  assert torch.isfinite(x).all()
  return x.numpy(), calls, limit


DEFAULTS = dict(
  schedule="linear",
  num_steps=20,
  order=2,
  solver_type="bh2",
  predict_x0=True,
  lower_order_final=True,
  spacing="linspace",
  use_karras_sigmas=False,
  prediction="epsilon",
  disable_corrector=[],
)

CASES = {
  # bh2, the default, at each order (20 steps: lower_order_final lowers the last two steps).
  "bh2_o1": dict(order=1),
  "bh2_o2": dict(),
  "bh2_o3": dict(order=3),
  "bh2_o3_cosine": dict(order=3, schedule="cosine"),
  # bh1 onto σ = 0: diffusers' last step is NaN, its limit x̂0 is recorded (module docstring).
  "bh1_o2_cosine": dict(solver_type="bh1", schedule="cosine"),
  "bh1_o3": dict(solver_type="bh1", order=3),
  "bh1_o3_n8_sigmamin": dict(
    solver_type="bh1", order=3, num_steps=8, final_sigmas_type="sigma_min"
  ),
  # lower_order_final on (the default) and off; off needs a σ_min final (extrapolating to σ = 0
  # diverges in diffusers).
  "bh2_o3_n10_lof1_cosine": dict(order=3, num_steps=10, schedule="cosine"),
  "bh2_o3_n10_lof0": dict(order=3, num_steps=10, lower_order_final=False),
  "bh2_o2_n20_lof0": dict(lower_order_final=False),
  "bh2_o3_n20_lof0_cosine": dict(order=3, lower_order_final=False, schedule="cosine"),
  "bh2_o2_n10_lof1_sigmamin": dict(num_steps=10, final_sigmas_type="sigma_min"),
  # Noise prediction (predict_x0=False) lands on σ_min by default.
  "noise_bh2_o2": dict(predict_x0=False),
  "noise_bh1_o3_cosine_n12": dict(predict_x0=False, solver_type="bh1", order=3, num_steps=12),
  "noise_bh2_o2_v": dict(predict_x0=False, prediction="v"),
  "noise_bh2_o3_x0": dict(predict_x0=False, prediction="x0", order=3, gain=0.9),
  # Spacings.
  "bh2_o2_leading": dict(spacing="leading"),
  "bh2_o3_trailing_cosine_n25": dict(spacing="trailing", schedule="cosine", order=3, num_steps=25),
  "bh2_o2_trailing_n7": dict(spacing="trailing", num_steps=7),
  # Karras on the cosine schedule: UniPC rounds the timesteps (DPM-Solver truncates them there).
  "bh2_o3_karras_cosine_n15": dict(
    use_karras_sigmas=True, schedule="cosine", order=3, num_steps=15
  ),
  # A σ_min final after a Karras grid is a step of h = 0, here of order 2: x unchanged.
  "bh2_o2_karras_linear_lof0_sigmamin": dict(use_karras_sigmas=True, lower_order_final=False),
  # Predictions.
  "bh2_o2_v_cosine": dict(prediction="v", schedule="cosine"),
  "bh2_o3_x0": dict(prediction="x0", order=3, gain=0.9),
  # The corrector off after steps 0, 1 and 6 (and an index past the end, which is ignored).
  "bh2_o3_disable_corrector": dict(order=3, num_steps=12, disable_corrector=[0, 1, 6, 40]),
  "bh2_o2_n1": dict(num_steps=1),
}


def run_case(name, c, x_T):
  final32, calls32, limit32 = run(c, x_T, wide=False)
  final64, calls64, limit64 = run(c, x_T, wide=True)
  assert limit32 == limit64
  note = "  (bh1 limit)" if limit32 else ""
  return (final32, final64), (calls32, calls64), {f"limit/{name}": np.array(limit32)}, note


def main():
  scheduler_class = diffusers.UniPCMultistepScheduler
  write_multistep_reference("unipc", scheduler_class, DEFAULTS, CASES, run_case)


if __name__ == "__main__":
  main()
