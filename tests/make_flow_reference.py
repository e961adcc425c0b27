"""Writes tests/data/flow_reference.npz: diffusers' flow-matching samplers on a toy velocity model.

Run once, from the repository root, in the environment of tests/make_sampler_reference.py:

    /tmp/refvenv/bin/python tests/make_flow_reference.py

The schedulers are FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, and
UniPCMultistepScheduler and DPMSolverMultistepScheduler with `use_flow_sigmas=True,
flow_shift=s, prediction_type="flow_prediction"`, each run by diffusers' pipeline loop by hand
(x = x_T, then per timestep t: v = model(x, t), x = step(v, t, x)) on the toy model
v = gain·x + 0.05 sin(t / 100) of diffusers_reference (analytic, so the tests evaluate it in JAX).
Stored per case: the final sample, the model-call times (floats: the FlowMatch schedulers call
the model between integers) and `config/<case>`, the case's options in jaxdiff's spelling (JSON,
with the `sampler` it is a case of).

Each case runs twice: `f32/…` with diffusers' defaults (float32 σ's, timesteps and arithmetic)
and `f64/…` with the scheduler modules' np.float32 and torch.float32 pointed at float64, and
torch's default dtype too (the σ = 0 the FlowMatch schedulers append is made in it), so every σ
and step is float64. The SDE case records diffusers' noise draws in the float32 run (a seeded
generator) and the float64 run replays them (`<case>/noise`, noise[i] the draw of step i).

UniPC's bh1 onto σ = 0 returns NaN in diffusers (B(h)·0 with B(h) = −∞), as on diffusion models;
the step's limit is the x̂0 diffusers has just stored, which is recorded (`limit/<case>` = 1) as
make_unipc_reference does.
"""

import contextlib
import json

import diffusers
import numpy as np
import torch
from diffusers.schedulers import (
  scheduling_dpmsolver_multistep,
  scheduling_flow_match_euler_discrete,
  scheduling_flow_match_heun_discrete,
  scheduling_unipc_multistep,
)
from diffusers_reference import NoiseRecorder, float64_schedulers, save, toy_model
from make_sampler_reference import SHAPE

GAIN = 0.5  # v = 0.5·x + 0.05 sin(t / 100)

MODULES = {
  "flow_euler": scheduling_flow_match_euler_discrete,
  "flow_heun": scheduling_flow_match_heun_discrete,
  "unipc": scheduling_unipc_multistep,
  "dpm_solver": scheduling_dpmsolver_multistep,
}

DEFAULTS = {
  "flow_euler": {
    "num_steps": 10,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "mu": None,
    "time_shift_type": "exponential",
    "use_karras_sigmas": False,
  },
  "flow_heun": {"num_steps": 8, "shift": 1.0},
  "unipc": {
    "num_steps": 12,
    "order": 2,
    "solver_type": "bh2",
    "lower_order_final": True,
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "mu": None,
    "final_sigmas_type": "zero",
  },
  "dpm_solver": {
    "num_steps": 12,
    "order": 2,
    "algorithm": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "mu": None,
  },
}

CASES = {
  # FlowMatchEuler: SD3's fixed shift (applied twice, at construction and in set_timesteps),
  # Flux's dynamic shift by μ in both forms, Karras σ's between the shifted grid's ends.
  "euler_shift1": ("flow_euler", {}),
  "euler_shift3": ("flow_euler", {"shift": 3.0, "num_steps": 12}),
  "euler_dynamic_exponential": ("flow_euler", {"use_dynamic_shifting": True, "mu": 1.15}),
  "euler_dynamic_linear": ("flow_euler", {"use_dynamic_shifting": True, "mu": 2.0, "num_steps": 7}),
  "euler_karras_shift3": ("flow_euler", {"use_karras_sigmas": True, "shift": 3.0}),
  "euler_karras_dynamic": (
    "flow_euler",
    {"use_karras_sigmas": True, "use_dynamic_shifting": True, "mu": 0.5, "num_steps": 9},
  ),
  "euler_n1": ("flow_euler", {"num_steps": 1}),
  # FlowMatchHeun: 2n − 1 model calls, the last step Euler alone.
  "heun_shift1": ("flow_heun", {}),
  "heun_shift3": ("flow_heun", {"shift": 3.0, "num_steps": 6}),
  "heun_n1": ("flow_heun", {"num_steps": 1}),
  # UniPC with use_flow_sigmas: both B(h), orders 1-3.
  "unipc_bh2_o1": ("unipc", {"order": 1}),
  "unipc_bh2_o2_shift3": ("unipc", {"flow_shift": 3.0}),
  "unipc_bh2_o3_shift5": ("unipc", {"order": 3, "flow_shift": 5.0, "num_steps": 15}),
  "unipc_bh1_o2": ("unipc", {"solver_type": "bh1"}),
  "unipc_bh1_o3_shift3": ("unipc", {"solver_type": "bh1", "order": 3, "flow_shift": 3.0}),
  # lower_order_final off: the last step extrapolates, so it lands on the last grid σ, a step of
  # h = 0 that leaves x unchanged at order 2 (diffusers' order-3 solve is singular there: NaN).
  "unipc_bh2_o2_lof0_sigmamin": (
    "unipc",
    {"lower_order_final": False, "final_sigmas_type": "sigma_min", "num_steps": 10},
  ),
  "unipc_bh2_o2_dynamic": ("unipc", {"use_dynamic_shifting": True, "mu": 0.8, "num_steps": 9}),
  # DPM-Solver++ with use_flow_sigmas: orders 1-3, both second-order updates, the SDE variant.
  "dpm_pp_o1": ("dpm_solver", {"order": 1}),
  "dpm_pp_o2_shift3": ("dpm_solver", {"flow_shift": 3.0}),
  "dpm_pp_o3_shift3": ("dpm_solver", {"order": 3, "flow_shift": 3.0, "num_steps": 20}),
  "dpm_pp_o3_n10": ("dpm_solver", {"order": 3, "num_steps": 10}),
  "dpm_pp_o3_lof0": ("dpm_solver", {"order": 3, "lower_order_final": False, "num_steps": 10}),
  "dpm_pp_o2_heun": ("dpm_solver", {"solver_type": "heun", "flow_shift": 2.0}),
  "dpm_pp_o2_dynamic": ("dpm_solver", {"use_dynamic_shifting": True, "mu": 1.15, "num_steps": 9}),
  "dpm_sde_o2": ("dpm_solver", {"algorithm": "sde-dpmsolver++", "flow_shift": 3.0, "seed": 1}),
}


def make_scheduler(sampler, c):
  """diffusers' scheduler of a case, and the keyword arguments of its `set_timesteps`."""
  dynamic = {"use_dynamic_shifting": c["use_dynamic_shifting"]} if "mu" in c else {}
  timesteps = {"mu": c["mu"]} if c.get("mu") is not None else {}
  if sampler == "flow_euler":
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
      shift=c["shift"],
      time_shift_type=c["time_shift_type"],
      use_karras_sigmas=c["use_karras_sigmas"],
      **dynamic,
    )
  elif sampler == "flow_heun":
    scheduler = diffusers.FlowMatchHeunDiscreteScheduler(shift=c["shift"])
  else:
    flow = {"use_flow_sigmas": True, "flow_shift": c["flow_shift"], **dynamic}
    flow |= {"prediction_type": "flow_prediction", "solver_order": c["order"]}
    flow |= {"solver_type": c["solver_type"], "lower_order_final": c["lower_order_final"]}
    if sampler == "unipc":
      scheduler = diffusers.UniPCMultistepScheduler(
        **flow, final_sigmas_type=c["final_sigmas_type"]
      )
    else:
      scheduler = diffusers.DPMSolverMultistepScheduler(**flow, algorithm_type=c["algorithm"])
  return scheduler, timesteps


def run(sampler, c, x_T, wide, noise=None):
  """(final sample, model-call times, noise draws, bh1 limit) of one case."""
  module = MODULES[sampler]
  recorder = NoiseRecorder(module.randn_tensor) if hasattr(module, "randn_tensor") else None
  wide_context = float64_schedulers(module, default_dtype=True)
  generator = torch.Generator().manual_seed(c.get("seed", 0))
  if recorder:
    saved, module.randn_tensor = module.randn_tensor, recorder
  try:
    with wide_context if wide else contextlib.nullcontext():
      scheduler, timestep_options = make_scheduler(sampler, c)
      scheduler.set_timesteps(c["num_steps"], **timestep_options)
      scheduler.set_begin_index(0)
      dtype = torch.float64 if wide else torch.float32
      x, calls = torch.from_numpy(x_T).to(dtype), []
      for i, t in enumerate(scheduler.timesteps):
        assert torch.isfinite(x).all(), "diffusers diverged before the last step"
        calls.append(float(t))
        out = toy_model(x, t, GAIN)
        kwargs = {}
        if sampler == "dpm_solver":
          replay = None if noise is None else torch.from_numpy(noise[i]).to(dtype)
          kwargs = {"generator": generator, "variance_noise": replay}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        assert x.dtype == dtype
  finally:
    if recorder:
      module.randn_tensor = saved
  limit = not bool(torch.isfinite(x).any())
  if limit:
    assert sampler == "unipc" and c["solver_type"] == "bh1" and scheduler.sigmas[-1] == 0
    x = scheduler.model_outputs[-1]
  assert torch.isfinite(x).all()
  draws = np.stack([d.numpy() for d in recorder.draws]) if recorder and recorder.draws else None
  return x.numpy(), np.array(calls), draws, limit


def main():
  x_T = np.random.default_rng(0).standard_normal(SHAPE)
  data = {"x_T": x_T}
  for case, (sampler, overrides) in CASES.items():
    config = {**DEFAULTS[sampler], **overrides}
    final32, calls32, draws, limit32 = run(sampler, config, x_T, wide=False)
    final64, calls64, _, limit64 = run(sampler, config, x_T, wide=True, noise=draws)
    assert limit32 == limit64
    if draws is not None:
      data[f"{case}/noise"] = draws.astype(np.float32)
    data[f"f32/{case}/final"], data[f"f64/{case}/final"] = final32, final64
    data[f"f32/{case}/timesteps"], data[f"f64/{case}/timesteps"] = calls32, calls64
    data[f"limit/{case}"] = np.array(limit32)
    data[f"config/{case}"] = np.array(json.dumps({"sampler": sampler, "gain": GAIN, **config}))
    note = "  (bh1 limit)" if limit32 else ""
    print(f"{case}: t = {np.round(calls64, 3).tolist()}{note}")
  data["cases"] = np.array(list(CASES))
  save("flow", data, len(CASES))


if __name__ == "__main__":
  main()
