"""Writes tests/data/consistency_reference.npz: diffusers' consistency-model sampling of a fake
network.

Run once, from the repository root, in the environment of tests/make_sampler_reference.py:

    python tests/make_consistency_reference.py   # torch + diffusers 0.42.1 installed

Each case runs ConsistencyModelPipeline's loop by hand on CMStochasticIterativeScheduler (its
defaults: 40 training steps, σ ∈ [0.002, 80], σ_data 0.5, clip_denoised): x = x_T·σ_max; per
timestep: scale_model_input, the network, step. The network is analytic, so the test evaluates it
in JAX without torch:

    F(u, t) = 2.5·tanh(u) + 0.3·sin(t / 300)

of the scaled input u and the timestep t = 250·ln(σ + 1e-44) the scheduler hands it; 2.5 makes
x̂_0 ≈ 1.25·tanh(x_T) at σ_max, so clipping to [−1, 1] acts on part of the image only. Stored per
case: the final sample (`<case>/final`), the timesteps of the network calls (`<case>/calls`),
the σ's of the run without diffusers' trailing σ_min (`<case>/sigmas`) and, for the multistep
cases, the noise diffusers drew from a seeded generator (`<case>/noise`, noise[i] the draw of step
i, the last one multiplied by 0).
"""

import json

import diffusers
import numpy as np
import torch
from diffusers.schedulers import scheduling_consistency_models
from diffusers_reference import save

SHAPE = (2, 8, 8, 3)  # NHWC; the network is elementwise, so the layout does not matter

# name: (set_timesteps arguments, clip_denoised)
CASES = {
  "one_step": ({"num_inference_steps": 1}, True),
  # the ImageNet-64 CD pipeline's two-step example
  "two_step": ({"timesteps": [22, 0]}, True),
  "two_step_unclipped": ({"timesteps": [22, 0]}, False),
  "three_step": ({"num_inference_steps": 3}, True),
}


def network(u, t):
  return 2.5 * torch.tanh(u) + 0.3 * torch.sin(torch.as_tensor(t, dtype=torch.float64) / 300.0)


def run_case(x_T, timesteps, clip):
  scheduler = diffusers.CMStochasticIterativeScheduler(clip_denoised=clip)
  scheduler.set_timesteps(**timesteps)
  draws, calls = [], []
  draw = scheduling_consistency_models.randn_tensor

  def recording_draw(*args, **kwargs):
    z = draw(*args, **kwargs)
    draws.append(z.numpy().copy())
    return z

  scheduling_consistency_models.randn_tensor = recording_draw
  generator = torch.Generator().manual_seed(1234)
  x = torch.from_numpy(x_T).to(torch.float32) * scheduler.init_noise_sigma
  try:
    for t in scheduler.timesteps:
      calls.append(float(t))
      out = network(scheduler.scale_model_input(x, t), t).to(torch.float32)
      x = scheduler.step(out, t, x, generator=generator).prev_sample
  finally:
    scheduling_consistency_models.randn_tensor = draw
  assert x.dtype == torch.float32
  result = {
    "final": x.numpy().copy(),
    "calls": np.array(calls),
    "sigmas": scheduler.sigmas.numpy()[:-1].astype(np.float64),
  }
  if draws:
    result["noise"] = np.stack(draws)
  return result


def main():
  x_T = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
  data = {"x_T": x_T}
  for name, (timesteps, clip) in CASES.items():
    for key, value in run_case(x_T, timesteps, clip).items():
      data[f"{name}/{key}"] = value
    data[f"config/{name}"] = np.array(json.dumps({"clip_denoised": clip}))
    print(f"{name}: σ = {data[f'{name}/sigmas'].tolist()}, t = {data[f'{name}/calls'].tolist()}")
  data["cases"] = np.array(list(CASES))
  save("consistency", data, len(CASES))


if __name__ == "__main__":
  main()
