"""What the tests/make_*_reference.py scripts of the σ-space and multistep samplers share: the toy
model, diffusers' spelling of the options, float64 runs of diffusers' schedulers, and writing the
file. They run in the reference environment (torch and diffusers; see make_sampler_reference.py);
the tests never import this.

The toy model is analytic, so the tests evaluate it in JAX without torch. Each case runs twice:
`f32/…` with diffusers' defaults (float32 tables, sigmas and arithmetic) and `f64/…` with every
table, sigma and tensor in float64, for the 1e-9 parity check under jax_enable_x64. A float64 run
needs two things diffusers does not offer: float64 β and ᾱ tables (`set_betas`) and, in the
schedulers that hard-code float32 in `set_timesteps` and `step` (the σ-space and multistep
ones), that float32 pointed at float64 while they run (`float64_schedulers`).
"""

import contextlib
import json
import pathlib

import numpy as np
import torch
from make_sampler_reference import BETA_RANGE, DIFFUSERS_SCHEDULE, SHAPE, T

DATA = pathlib.Path(__file__).parent / "data"
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}


def toy_model(x, t, gain=0.1):
  """out = gain·x + 0.05 sin(t / 100), elementwise (the image layout does not matter):
  make_sampler_reference's fake_model at any gain."""
  return gain * x + 0.05 * torch.sin(torch.as_tensor(t, dtype=x.dtype) / 100.0)


def schedule_options(schedule):
  """diffusers' constructor arguments for one of jaxdiff's schedules by name."""
  return dict(
    num_train_timesteps=T,
    beta_schedule=DIFFUSERS_SCHEDULE[schedule],
    beta_start=BETA_RANGE[schedule][0],
    beta_end=BETA_RANGE[schedule][1],
  )


def multistep_options(c):
  """The constructor arguments DPM-Solver's and UniPC's schedulers share, from case `c`."""
  return dict(
    **schedule_options(c["schedule"]),
    solver_order=c["order"],
    solver_type=c["solver_type"],
    lower_order_final=c["lower_order_final"],
    timestep_spacing=c["spacing"],
    use_karras_sigmas=c["use_karras_sigmas"],
    prediction_type=DIFFUSERS_PREDICTION[c["prediction"]],
  )


def set_betas(scheduler, betas):
  """Replaces a scheduler's float32 β, α and ᾱ tables by those of `betas` (float64)."""
  scheduler.betas = betas
  scheduler.alphas = 1.0 - betas
  scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)


class _Float64:
  """A module whose `float32` is float64: diffusers' float32 casts become no-ops in float64."""

  def __init__(self, module):
    self._module = module

  def __getattr__(self, name):
    return getattr(self._module, "float64" if name == "float32" else name)


@contextlib.contextmanager
def float64_schedulers(*modules, default_dtype=False):
  """Points the scheduler modules' `np.float32` and `torch.float32` at float64 while it runs, which
  changes nothing else; with `default_dtype`, torch's default dtype too (UniPC makes the `1` it
  appends to its λ-ratios in it)."""
  saved = [(m, m.np, m.torch) for m in modules], torch.get_default_dtype()
  for m in modules:
    m.np, m.torch = _Float64(np), _Float64(torch)
  if default_dtype:
    torch.set_default_dtype(torch.float64)
  try:
    yield
  finally:
    for m, saved_np, saved_torch in saved[0]:
      m.np, m.torch = saved_np, saved_torch
    torch.set_default_dtype(saved[1])


class NoiseRecorder:
  """Wraps diffusers' randn_tensor and keeps every draw it hands out, in order."""

  def __init__(self, draw):
    self.draw, self.draws = draw, []

  def __call__(self, *args, **kwargs):
    out = self.draw(*args, **kwargs)
    self.draws.append(out.clone())
    return out


def run_loop(scheduler, c, x_T, wide, step=None):
  """diffusers' sampling loop on the toy model at case `c`'s gain and step count, from x_T in
  float32 or, if `wide`, float64: (the last x, the model-call timesteps). `step(i, t, x, out)`
  stands in for `scheduler.step(out, t, x).prev_sample`."""
  scheduler.set_timesteps(c["num_steps"])
  # Step i uses sigma i, as jaxdiff does. Without this diffusers starts at index 1 when the first
  # timestep repeats (its img2img rule), which cosine Karras grids do (998, 998, …), and then runs
  # off the end of its sigmas; with unique first timesteps it changes nothing.
  scheduler.set_begin_index(0)
  dtype = torch.float64 if wide else torch.float32
  x, calls = torch.from_numpy(x_T).to(dtype), []
  for i, t in enumerate(scheduler.timesteps):
    assert torch.isfinite(x).all(), "diffusers diverged before the last step"
    calls.append(int(t))
    out = toy_model(x, t, c.get("gain", 0.1))
    x = step(i, t, x, out) if step else scheduler.step(out, t, x).prev_sample
    assert x.dtype == dtype
  return x, np.array(calls)


def save(name, data, count):
  """Writes tests/data/<name>_reference.npz and says so."""
  out = DATA / f"{name}_reference.npz"
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, **data)
  print(f"wrote {out} ({out.stat().st_size} bytes) with {count} cases")


def write_multistep_reference(name, scheduler_class, defaults, cases, run_case):
  """Runs and writes the cases of a multistep solver's reference.

  `run_case(case, config, x_T)` gives ((float32, float64) final samples, (float32, float64)
  model-call timesteps, other arrays to store by key, a note for the log). Stored per case:
  `f32/<case>/final`, `f64/<case>/final`, the same for `timesteps`, the other arrays and
  `config/<case>` (the case's options, JSON, jaxdiff's spelling); then diffusers' float32 βs
  (`tables/<schedule>/betas`) and the case names.
  """
  x_T = np.random.default_rng(0).standard_normal(SHAPE)
  data = {"x_T": x_T}
  for case, overrides in cases.items():
    config = {**defaults, **overrides}
    finals, calls, arrays, note = run_case(case, config, x_T)
    data[f"f32/{case}/final"], data[f"f64/{case}/final"] = finals
    data[f"f32/{case}/timesteps"], data[f"f64/{case}/timesteps"] = calls
    data.update(arrays)
    data[f"config/{case}"] = np.array(json.dumps(config))
    same = "" if np.array_equal(*calls) else "  (f32/f64 timesteps differ)"
    print(f"{case}: t = {calls[0].tolist()}{same}{note}")
  for schedule in ("linear", "cosine"):
    # diffusers' own float32 βs: the tests' float32 replay builds its schedule from them.
    betas = scheduler_class(beta_schedule=DIFFUSERS_SCHEDULE[schedule]).betas
    data[f"tables/{schedule}/betas"] = betas.numpy()
  data["cases"] = np.array(list(cases))
  save(name, data, len(cases))
