"""What the parity tests of the σ-space and multistep samplers share: the stored diffusers runs
(written by tests/make_*_reference.py), the scripts' toy model in JAX, and running a sampler on a
stored case.

A case's options are stored as JSON under `config/<name>` in jaxdiff's spelling, so a sampler
takes those of them that are its keyword options unchanged (the schedule by name, `gain` and
`seed` are the scripts').
"""

import inspect
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.schedules import Schedule


def load(name):
  """(the stored arrays, the case names) of tests/data/<name>_reference.npz."""
  ref = np.load(pathlib.Path(__file__).parent / "data" / f"{name}_reference.npz")
  return ref, [str(c) for c in ref["cases"]]


def config_of(ref, name) -> dict:
  return json.loads(str(ref[f"config/{name}"]))


def toy_model(gain=0.1, calls=None):
  """The reference scripts' analytic model, out = gain·x + 0.05 sin(t / 100); `calls` collects
  the times it is called at, in order (as floats: the σ-space samplers call it between
  training steps)."""

  def model(x, t):
    if calls is not None:
      jax.debug.callback(lambda t: calls.append(float(np.asarray(t)[0])), t, ordered=True)
    return gain * x + 0.05 * jnp.sin(t.astype(x.dtype) / 100.0)[:, None, None, None]

  return model


def diffusers_float32_schedule(ref, name) -> Schedule:
  """The case's schedule built from diffusers' own float32 βs (stored by the script): diffusers
  builds ᾱ in float32, so 1 − β of the cosine schedule's β ≈ 0.999 is off by 1e-5 relative; on
  the same βs the float32 runs differ by the arithmetic alone."""
  betas = ref[f"tables/{config_of(ref, name)['schedule']}/betas"]
  return Schedule(betas=betas, timesteps=np.arange(len(betas)), num_train_timesteps=len(betas))


def sample_case(sampler, ref, name, dtype, schedule, calls=None, **overrides):
  """`sampler` on a stored case: its x_T, the toy model at its gain, the options of its config
  that `sampler` takes and its noise where one is stored; `overrides` replace options."""
  config = config_of(ref, name)
  parameters = inspect.signature(sampler).parameters
  options = {
    k: v
    for k, v in config.items()
    if k in parameters and parameters[k].kind is inspect.Parameter.KEYWORD_ONLY
  }
  if f"{name}/noise" in ref:
    options["noise"] = jnp.asarray(ref[f"{name}/noise"], dtype)
  model = toy_model(config.get("gain", 0.1), calls)
  return sampler(model, schedule, jnp.asarray(ref["x_T"], dtype), **{**options, **overrides})


def sample_and_calls(sampler, ref, name, dtype, schedule):
  """(the sample in `dtype`, the times the model was called at) of a stored case."""
  calls = []
  got = sample_case(sampler, ref, name, dtype, schedule, calls)
  assert got.dtype == dtype
  jax.effects_barrier()  # the recorded calls are complete
  return got, calls


def sample_float64(sampler, ref, name):
  """A stored case sampled in float64 on jaxdiff's own schedule, having checked that the model was
  called at the float64 run's timesteps."""
  with jax.enable_x64(True):
    schedule = schedules.make(config_of(ref, name)["schedule"])
    got, calls = sample_and_calls(sampler, ref, name, jnp.float64, schedule)
  np.testing.assert_array_equal(calls, ref[f"f64/{name}/timesteps"])
  return np.asarray(got)


# Argument errors that every multistep solver reports alike (its own come on top).
MULTISTEP_ARGUMENT_ERRORS = [
  (dict(order=4), "order must be one of"),
  (dict(spacing="quadratic"), "unknown spacing"),
  (dict(prediction="sample"), "unknown prediction"),
  (dict(final_sigmas_type="one"), "unknown final_sigmas_type"),
  (dict(num_steps=0), r"num_steps must lie in \[1, 1000\]"),
  (dict(num_steps=1001), r"num_steps must lie in \[1, 1000\]"),
  (dict(num_steps=1000, spacing="leading"), "repeated noise levels"),
]


def assert_argument_error(sampler, options, message):
  with pytest.raises(ValueError, match=message):
    sampler(toy_model(), schedules.make("linear"), jnp.zeros((1, 2, 2, 1)), **options)


def assert_respaced_schedule_refused(sampler):
  schedule = schedules.make("linear", respacing="ddim10")
  with pytest.raises(ValueError, match="full training schedule"):
    sampler(toy_model(), schedule, jnp.zeros((1, 2, 2, 1)))


def assert_trajectory_ends_in_sample(sampler, ref, name, num_steps):
  """The trajectory has one image a step and ends in the sample itself."""
  schedule = diffusers_float32_schedule(ref, name)
  trajectory = sample_case(sampler, ref, name, jnp.float32, schedule, return_trajectory=True)
  assert trajectory.shape == (num_steps,) + ref["x_T"].shape
  np.testing.assert_array_equal(
    trajectory[-1], sample_case(sampler, ref, name, jnp.float32, schedule)
  )


def assert_learned_variance_ignored(sampler, seed):
  """A model with learned variances (2C channels) samples as one with its first C alone."""
  x_T = jax.random.normal(jax.random.key(seed), (2, 4, 4, 3))
  model = lambda x, t: 0.1 * x
  wide = lambda x, t: jnp.concatenate([model(x, t), jnp.ones_like(x)], axis=-1)
  schedule = schedules.make("linear")
  np.testing.assert_array_equal(
    sampler(wide, schedule, x_T, num_steps=5), sampler(model, schedule, x_T, num_steps=5)
  )
