"""The sampler loop and table: pytree carries, fractional model times, the table as the config's
source of truth, and clear errors at the samplers' boundary."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import generate, parallel, samplers, schedules
from jaxdiff import run as run_lib
from jaxdiff.models.layers import sinusoidal_embedding
from jaxdiff.samplers import table
from jaxdiff.samplers.loop import call_model, run_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_multistep_sampler_carries_its_previous_model_output():
  # Two-step Adams–Bashforth on dx/ds = -x·t_i with model times t_i: the carry is (x, previous
  # output), a pytree; the first step is Euler. Reference: the same recurrence in float64 NumPy.
  times = np.array([0.5, 1.25, 2.0, 0.75])
  h = 0.1
  model_fn = lambda x, t: -x * t[:, None, None, None]

  def step(carry, s, _):
    x, previous = carry
    out = call_model(model_fn, x, s["t"])
    slope = jnp.where(s["first"], out, 1.5 * out - 0.5 * previous)
    return x + h * slope, out

  x_T = jax.random.normal(jax.random.key(0), (2, 3, 3, 1))
  per_step = {"t": jnp.asarray(times, jnp.float32), "first": jnp.arange(4) == 0}
  init = (x_T, jnp.zeros_like(x_T))
  trajectory = run_steps(
    step, x_T, per_step, needs_noise=False, init=init, read=lambda c: c[0], return_trajectory=True
  )
  x, previous, expected = np.asarray(x_T, np.float64), None, []
  for i, t in enumerate(times):
    out = -x * t
    x = x + h * (out if i == 0 else 1.5 * out - 0.5 * previous)
    previous = out
    expected.append(x)
  assert trajectory.shape == (4, 2, 3, 3, 1)
  # float32 against float64 over four steps of O(1) values: rounding only
  np.testing.assert_allclose(trajectory, np.stack(expected), rtol=1e-6)


def test_the_model_is_called_at_fractional_times_and_integers_stay_int32():
  seen = []

  def model_fn(x, t):
    seen.append(t.dtype)
    return x * t[:, None, None, None]

  x = jnp.ones((2, 1, 1, 1))
  np.testing.assert_array_equal(
    call_model(model_fn, x, jnp.float32(10.25)), 10.25 * np.ones(x.shape)
  )
  np.testing.assert_array_equal(call_model(model_fn, x, jnp.int32(7)), 7 * np.ones(x.shape))
  assert seen == [jnp.float32, jnp.int32]
  # the U-Net's time embedding takes the fractional time as it is (DDPM's sinusoid, closed form)
  emb = sinusoidal_embedding(jnp.array([10.25]), 8, flip_sin_to_cos=False, freq_shift=1)
  freqs = np.exp(-math.log(10000.0) * np.arange(4) / 3)
  expected = np.concatenate([np.sin(10.25 * freqs), np.cos(10.25 * freqs)])
  np.testing.assert_allclose(emb[0], expected, rtol=1e-6, atol=1e-6)  # float32 angles ~10


def test_boundary_errors_name_the_mistake():
  model_fn = lambda x, t: x
  s = schedules.make("cosine", 10)
  with pytest.raises(ValueError, match="x_T must be a batch of images"):
    samplers.ddim(model_fn, s, jnp.zeros((4,)), num_steps=2)
  with pytest.raises(ValueError, match="noise must have shape"):
    samplers.ddpm(model_fn, s, jnp.zeros((2, 4, 4, 1)), noise=jnp.zeros((3, 2, 4, 4, 1)))
  three = lambda x, t: jnp.zeros(x.shape[:-1] + (3,))
  with pytest.raises(ValueError, match=r"the model returned shape \(2, 4, 4, 3\)"):
    samplers.ddim(three, s, jnp.zeros((2, 4, 4, 1)), num_steps=2)
  with pytest.raises(ValueError, match="needs a model with learned variances"):
    samplers.ddpm(
      model_fn, s, jnp.zeros((2, 4, 4, 1)), key=jax.random.key(0), variance="learned_range"
    )


def _digits_config():
  return config_lib.load_file(ROOT / "configs" / "digits.py")


def test_the_config_schema_and_choices_come_from_the_tables():
  config = config_lib.default_config()
  assert config_lib.choices()["sample.sampler"] == tuple(samplers.SAMPLERS)
  for name, option in table.OPTIONS.items():
    assert config.sample[name] == option.default
  config.sample.spacing = "sideways"
  with pytest.raises(ValueError, match="sample.spacing must be one of"):
    config_lib.validate(config)
  config = config_lib.default_config()
  config.sample.eta = 1.5
  with pytest.raises(ValueError, match=r"sample.eta must lie in \[0, 1\]"):
    config_lib.validate(config)
  config = config_lib.default_config()
  config.model.arch = "not_a_network"
  with pytest.raises(ValueError, match="model.arch must be one of"):
    config_lib.validate(config)


def test_a_new_sampler_is_one_table_entry(monkeypatch):
  # x_0 = x_T / 2 after one model call at t = 0: a sampler nothing but its table entry knows
  def halve(model_fn, schedule, x_T, *, prediction, num_steps):
    return 0.5 * x_T + 0.0 * call_model(model_fn, x_T, 0)

  monkeypatch.setitem(table.SAMPLERS, "halve", table.Sampler(halve, ("num_steps",)))
  config = _digits_config()
  config.sample.sampler = "halve"
  for name, option in table.OPTIONS.items():  # options 'halve' does not read stay at defaults
    config.sample[name] = option.default
  config_lib.validate(config)
  parts = run_lib.build(config)
  mesh = parallel.make_mesh(1)
  fn = generate.make_sample_fn(
    parts.model_def, parts.schedule, config, mesh, 4, codec=parts.codec, spec=parts.spec
  )
  key = jax.random.key(3)
  images = fn(parts.state.ema_params, None, key, np.arange(4))
  x_T = jax.random.normal(jax.random.split(key)[0], (4, 16, 16, 1))
  np.testing.assert_allclose(images, 0.5 * x_T, rtol=1e-6)


@pytest.mark.parametrize(
  "name, options",
  [
    ("euler", {"spacing": "trailing", "use_karras_sigmas": True}),
    ("heun", {"spacing": "linspace"}),
    ("euler_ancestral", {"spacing": "leading"}),
    ("dpm_solver", {"order": 3, "algorithm": "dpmsolver", "lower_order_final": False}),
    ("dpm_solver", {"algorithm": "sde-dpmsolver++", "solver_type": "heun"}),
    ("unipc", {"order": 3, "spacing": "trailing"}),
  ],
)
def test_the_table_runs_each_sampler_with_the_configs_options(name, options):
  # The entry must hand the sampler exactly the config's options: the same call made directly
  # gives the same array.
  config = config_lib.default_config()
  config.sample.sampler = name
  config.sample.num_steps = 6
  for key, value in options.items():
    config.sample[key] = value
  config_lib.validate(config)
  model_fn = lambda x, t: 0.9 * x + 0.01 * jnp.sin(t / 100.0)[:, None, None, None]
  s = schedules.make("cosine", 1000)
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  key = jax.random.key(1)
  got = table.run(name, model_fn, s, x_T, key=key, prediction="v", options=config.sample)
  direct = getattr(samplers, name)
  kwargs = {"key": key} if table.SAMPLERS[name].takes_key else {}
  # jaxdiff's sample.spacing default ('leading', DDIM's) differs from dpm_solver's ('linspace')
  options = {"spacing": config.sample.spacing, **options}
  want = direct(model_fn, s, x_T, num_steps=6, prediction="v", **options, **kwargs)
  np.testing.assert_array_equal(got, want)


def test_options_a_sampler_does_not_read_are_refused():
  config = config_lib.default_config()
  config.sample.use_karras_sigmas = True  # DDIM has no σ grid
  with pytest.raises(ValueError, match="use_karras_sigmas=True has no effect with sample.sampler"):
    config_lib.validate(config)
  config = config_lib.default_config()
  config.sample.sampler = "dpm_solver"
  config.sample.order = 4
  with pytest.raises(ValueError, match=r"sample.order must be one of \[1, 2, 3\]"):
    config_lib.validate(config)
  config.sample.order = 2
  config.sample.algorithm = "dpmsolver+++"
  with pytest.raises(ValueError, match="sample.algorithm must be one of"):
    config_lib.validate(config)


def test_zero_terminal_snr_and_guidance_rescale_from_the_config():
  config = _digits_config()
  config.diffusion.rescale_zero_terminal_snr = True
  config.diffusion.prediction = "epsilon"
  with pytest.raises(ValueError, match="cannot be sampled; set diffusion.prediction=v"):
    config_lib.validate(config)
  config.diffusion.prediction = "v"
  config.sample.sampler, config.sample.spacing, config.sample.num_steps = "euler", "trailing", 3
  config.sample.guidance_rescale = 1.5
  with pytest.raises(ValueError, match=r"sample.guidance_rescale must lie in \[0, 1\]"):
    config_lib.validate(config)
  config.sample.guidance_rescale = 0.7
  config_lib.validate(config)
  parts = run_lib.build(config)
  assert parts.schedule.alphas_cumprod[-1] == 0.0  # the run's schedule is the rescaled one
  fn = generate.make_sample_fn(
    parts.model_def,
    parts.schedule,
    config,
    parallel.make_mesh(1),
    4,
    codec=parts.codec,
    spec=parts.spec,
  )
  leaves, tree = jax.tree.flatten(parts.state.ema_params)  # nonzero output layer
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  images = fn(params, None, jax.random.key(0), np.arange(4))
  assert images.shape == (4, 16, 16, 1) and np.all(np.isfinite(images))
