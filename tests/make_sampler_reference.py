"""Writes tests/data/sampler_reference.npz: diffusers' DDPM/DDIM trajectories for a fake model.

Run once, from the repository root, in an environment with the reference implementation:

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 diffusers==0.42.1 numpy
    /tmp/refvenv/bin/python tests/make_sampler_reference.py

The model is analytic, eps = 0.1 x + 0.05 sin(t / 100), so the tests can evaluate it in JAX without
torch. Noise is drawn here once and stored; diffusers' own noise draws are replaced by it, so the
tests replay the same noise through jaxdiff's samplers (noise[i] is the draw of step i).

Each case is stored twice: `f32/…` with diffusers' defaults (float32 tables and arithmetic) and
`f64/…` with every table and tensor in float64, for the 1e-9 parity check under jax_enable_x64.
"""

import math
import pathlib

import diffusers
import numpy as np
import torch
from diffusers.schedulers import scheduling_ddpm

OUT = pathlib.Path(__file__).parent / "data" / "sampler_reference.npz"
SHAPE = (2, 4, 4, 1)  # NHWC; the fake model is elementwise, so the layout does not matter
T = 1000
DIFFUSERS_SCHEDULE = {
  "linear": "linear",
  "cosine": "squaredcos_cap_v2",
  "scaled_linear": "scaled_linear",
}
# diffusers' defaults are DDPM's ends; Stable Diffusion's configs pass these for scaled_linear.
BETA_RANGE = {"linear": (1e-4, 0.02), "cosine": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def fake_model(x, t):
  return 0.1 * x + 0.05 * torch.sin(torch.as_tensor(t, dtype=x.dtype) / 100.0)


def betas64(name):
  """The schedules' definitions in float64, written independently of jaxdiff."""
  if name == "linear":
    return np.linspace(1e-4, 0.02, T, dtype=np.float64)
  if name == "scaled_linear":
    return np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=np.float64) ** 2
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


def widen(scheduler, name):
  betas = torch.from_numpy(betas64(name))
  scheduler.betas = betas
  scheduler.alphas = 1.0 - betas
  scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
  scheduler.one = torch.tensor(1.0, dtype=torch.float64)
  if hasattr(scheduler, "final_alpha_cumprod"):
    final = 1.0 if scheduler.config.set_alpha_to_one else scheduler.alphas_cumprod[0].item()
    scheduler.final_alpha_cumprod = torch.tensor(final, dtype=torch.float64)


class NoiseReplay:
  """Stands in for diffusers' randn_tensor and hands out the stored draws in order."""

  def __init__(self, noise):
    self.noise, self.calls = noise, 0

  def __call__(self, shape, generator=None, device=None, dtype=None, **kwargs):
    draw = self.noise[self.calls]
    self.calls += 1
    assert tuple(draw.shape) == tuple(shape)
    return draw.to(dtype)


def run(scheduler, x_T, noise, steps):
  replay = NoiseReplay(noise)
  scheduling_ddpm.randn_tensor = replay
  x, trajectory = x_T, []
  for i, t in enumerate(steps):
    out = fake_model(x, t)
    if isinstance(scheduler, diffusers.DDIMScheduler):
      x = scheduler.step(out, t, x, eta=scheduler.eta, variance_noise=noise[i]).prev_sample
    else:
      replay.calls = i
      x = scheduler.step(out, t, x).prev_sample
    trajectory.append(x.numpy())
  return np.stack(trajectory)


def main():
  rng = np.random.default_rng(0)
  x_T = rng.standard_normal(SHAPE)
  noise = rng.standard_normal((T,) + SHAPE)
  data = {"x_T": x_T, "noise": noise}
  cases = []
  for schedule, variance, clip in (
    ("linear", "fixed_small", True),
    ("cosine", "fixed_large", False),
  ):
    cases.append(("ddpm", dict(schedule=schedule, variance=variance, clip=clip)))
  for schedule in ("linear", "cosine", "scaled_linear"):
    for spacing in ("leading", "trailing", "linspace"):
      cases.append(
        (
          "ddim",
          dict(
            schedule=schedule, spacing=spacing, eta=0.0, clip=True, set_alpha_to_one=True, steps=50
          ),
        )
      )
  cases.append(
    (
      "ddim",
      dict(
        schedule="linear", spacing="leading", eta=1.0, clip=True, set_alpha_to_one=True, steps=50
      ),
    )
  )
  cases.append(
    (
      "ddim",
      dict(
        schedule="cosine", spacing="trailing", eta=0.5, clip=False, set_alpha_to_one=False, steps=20
      ),
    )
  )
  names = []
  for kind, c in cases:
    if kind == "ddpm":
      name = f"ddpm_{c['schedule']}_{c['variance']}_clip{int(c['clip'])}"
      make = lambda: diffusers.DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule=DIFFUSERS_SCHEDULE[c["schedule"]],
        beta_start=BETA_RANGE[c["schedule"]][0],
        beta_end=BETA_RANGE[c["schedule"]][1],
        variance_type=c["variance"],
        clip_sample=c["clip"],
      )
    else:
      name = (
        f"ddim_{c['schedule']}_{c['spacing']}_eta{c['eta']}_clip{int(c['clip'])}"
        f"_one{int(c['set_alpha_to_one'])}_n{c['steps']}"
      )
      make = lambda: diffusers.DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule=DIFFUSERS_SCHEDULE[c["schedule"]],
        beta_start=BETA_RANGE[c["schedule"]][0],
        beta_end=BETA_RANGE[c["schedule"]][1],
        timestep_spacing=c["spacing"],
        clip_sample=c["clip"],
        set_alpha_to_one=c["set_alpha_to_one"],
      )
    for precision, dtype in (("f32", torch.float32), ("f64", torch.float64)):
      scheduler = make()
      if precision == "f64":
        widen(scheduler, c["schedule"])
      scheduler.eta = c.get("eta", 0.0)
      scheduler.set_timesteps(c.get("steps", T))
      steps = [int(s) for s in scheduler.timesteps]
      trajectory = run(
        scheduler, torch.from_numpy(x_T).to(dtype), torch.from_numpy(noise).to(dtype), steps
      )
      data[f"{precision}/{name}/trajectory"] = trajectory
      data[f"{precision}/{name}/timesteps"] = np.array(steps)
    names.append(name)
  for schedule, diffusers_name in DIFFUSERS_SCHEDULE.items():
    s = diffusers.DDPMScheduler(
      num_train_timesteps=T,
      beta_schedule=diffusers_name,
      beta_start=BETA_RANGE[schedule][0],
      beta_end=BETA_RANGE[schedule][1],
    )
    data[f"tables/{schedule}/betas"] = s.betas.numpy()
    data[f"tables/{schedule}/alphas_cumprod"] = s.alphas_cumprod.numpy()
  data["cases"] = np.array(names)
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, **data)
  print(f"wrote {OUT} with {len(names)} cases")


if __name__ == "__main__":
  main()
