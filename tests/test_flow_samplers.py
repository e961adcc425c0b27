"""The samplers of flow models against diffusers 0.42.1 (stored by tests/make_flow_reference.py):
FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, and UniPC and DPM-Solver with
`use_flow_sigmas=True, prediction_type="flow_prediction"`; the ODE they integrate in closed form;
the refusals of the samplers, the sampler table and the config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error
from sampler_reference import config_of, load, sample_case
from test_describe import REPO, run_main

from jaxdiff import config as config_lib
from jaxdiff import schedules
from jaxdiff.samplers import dpm_solver, flow_euler, flow_heun, table, unipc

REF, CASES = load("flow")
SAMPLERS = {
  "flow_euler": flow_euler,
  "flow_heun": flow_heun,
  "unipc": unipc,
  "dpm_solver": dpm_solver,
}
# diffusers' float32 run is the larger error: compared in float32 with its float64 run instead.
DIFFUSERS_FLOAT32_OFF = {"unipc_bh1_o2"}


def _sample(name, dtype, **overrides):
  """(the sample, the model-call times) of a stored case in `dtype`."""
  calls = []
  sampler = SAMPLERS[config_of(REF, name)["sampler"]]
  got = sample_case(sampler, REF, name, dtype, None, calls, prediction="flow", **overrides)
  assert got.dtype == dtype
  jax.effects_barrier()  # the recorded calls are complete
  return np.asarray(got), np.array(calls)


@pytest.mark.parametrize("name", CASES)
def test_final_sample_matches_diffusers_float32(name):
  got, calls = _sample(name, jnp.float32)
  times = REF[f"f32/{name}/timesteps"]
  # FlowMatch schedulers call the model at float32 σ·1000, diffusers from its float32 σ, jaxdiff
  # rounding the float64 product once: at most one float32 ulp apart (6.1e-5 at t ≈ 1000). UniPC
  # and DPM-Solver truncate σ·1000 to integers in float64 in both.
  np.testing.assert_allclose(calls, times, rtol=0, atol=1.3e-4)
  reference = REF[f"f32/{name}/final"]
  if name in DIFFUSERS_FLOAT32_OFF:
    # diffusers keeps σ_0 = 1 − 10⁻⁶ in float32 (0.99999899: α_0 = 1 − σ_0 is 1.3 % off) and bh1's
    # B(h) = h takes that λ_0 as it is: its float32 run lies 2.9e-5 from its float64 one, jaxdiff's
    # (float64 grid and weights) 1.4e-7.
    assert relative_error(reference, REF[f"f64/{name}/final"]) > 1e-5
    reference = REF[f"f64/{name}/final"]
  # Float64 grids and weights rounded once vs diffusers' float32 σ's and arithmetic: measured
  # ≤ 3.6e-6 (UniPC bh1), the FlowMatch schedulers ≤ 1.5e-6, most ≤ 3e-7.
  assert relative_error(got, reference) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_final_sample_matches_diffusers_float64(name):
  with jax.enable_x64(True):
    got, calls = _sample(name, jnp.float64)
  # The same float64 σ's; diffusers' time-shift formula differs from SD3's form by rounding.
  np.testing.assert_allclose(calls, REF[f"f64/{name}/timesteps"], rtol=1e-12, atol=0)
  # Same float64 grid and algebra up to reassociation: measured ≤ 4e-15.
  assert relative_error(got, REF[f"f64/{name}/final"]) < 1e-9


def test_reference_holds_every_sampler_and_the_bh1_limits():
  samplers = {config_of(REF, name)["sampler"] for name in CASES}
  assert samplers == set(SAMPLERS)
  # bh1 onto σ = 0 is NaN in diffusers; the reference holds its limit x̂0 (the script's docstring)
  limits = {name for name in CASES if bool(REF[f"limit/{name}"])}
  assert limits == {"unipc_bh1_o2", "unipc_bh1_o3_shift3"}


@pytest.mark.parametrize(
  "name, calls",
  [("euler_shift3", 12), ("heun_shift3", 11), ("unipc_bh2_o2_dynamic", 9), ("dpm_sde_o2", 12)],
)
def test_trajectory_has_one_image_a_step_and_ends_in_the_sample(name, calls):
  config = config_of(REF, name)
  trajectory, made = _sample(name, jnp.float32, return_trajectory=True)
  assert trajectory.shape == (config["num_steps"],) + REF["x_T"].shape
  assert len(made) == calls  # Heun: 2n − 1 model calls
  # the last image is the sample, within the float32 parity bound above
  assert relative_error(trajectory[-1], REF[f"f32/{name}/final"]) < 1e-5


def _gaussian_velocity(scale):
  """The exact velocity of data N(0, scale²) on the straight path, at t = σ·1000:
  E[ε − x0 | x_σ] = (σ − (1 − σ)·scale²)/((1 − σ)²·scale² + σ²)·x_σ. Its ODE carries x_1 to
  x_0 = scale·x_1."""

  def v(x, t):
    sigma = (t / 1000.0)[:, None, None, None]
    return x * (sigma - (1 - sigma) * scale**2) / ((1 - sigma) ** 2 * scale**2 + sigma**2)

  return v


def test_euler_and_heun_converge_to_the_gaussian_flows_end_at_their_order():
  with jax.enable_x64(True):
    x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1), jnp.float64)
    v = _gaussian_velocity(0.5)

    def errors(sampler):
      return [relative_error(sampler(v, None, x_T, num_steps=n), 0.5 * x_T) for n in (32, 64)]

    euler, heun = errors(flow_euler), errors(flow_heun)
  # Euler's global error is first order (halves with twice the steps; measured 2.009), Heun's
  # second order (a quarter; measured 3.997), both tending to the closed form x_0 = 0.5·x_T.
  assert euler[1] < 0.03 and 1.9 < euler[0] / euler[1] < 2.1
  assert heun[1] < 2e-4 and 3.7 < heun[0] / heun[1] < 4.3


@pytest.mark.parametrize(
  "sampler, options, message",
  [
    (flow_euler, {"shift": 0.0}, "flow shift must be > 0"),
    (flow_heun, {"shift": -3.0}, "flow shift must be > 0"),
    (flow_euler, {"use_dynamic_shifting": True}, "use_dynamic_shifting needs mu"),
    (flow_euler, {"mu": 1.0}, "mu has no effect without use_dynamic_shifting"),
    (flow_euler, {"use_dynamic_shifting": True, "mu": 1.0, "shift": 3.0}, "no effect with"),
    (
      flow_euler,
      {"use_dynamic_shifting": True, "mu": -1.0, "time_shift_type": "linear"},
      "needs mu > 0",
    ),
    (flow_euler, {"time_shift_type": "cubic"}, "unknown time_shift_type"),
    (flow_euler, {"num_steps": 0}, "num_steps must be at least 1"),
    (flow_euler, {"prediction": "epsilon"}, "flow_euler samples flow models"),
    (flow_heun, {"prediction": "v"}, "flow_heun samples flow models"),
    (unipc, {"prediction": "flow", "use_karras_sigmas": True}, "does not apply to a flow model"),
    (unipc, {"prediction": "flow", "spacing": "trailing"}, "does not apply to a flow model"),
    (unipc, {"prediction": "flow", "predict_x0": False}, "cannot sample a flow model"),
    (unipc, {"prediction": "flow", "flow_shift": 0.0}, "flow shift must be > 0"),
    (unipc, {"prediction": "epsilon", "flow_shift": 3.0}, "shape a flow model's grid"),
    (dpm_solver, {"prediction": "flow", "algorithm": "dpmsolver"}, "cannot sample a flow model"),
    (dpm_solver, {"prediction": "flow", "final_sigmas_type": "sigma_min"}, "does not apply"),
    (dpm_solver, {"prediction": "flow", "use_dynamic_shifting": True}, "needs mu"),
    (dpm_solver, {"prediction": "v", "mu": 1.0}, "shape a flow model's grid"),
  ],
)
def test_sampler_argument_errors(sampler, options, message):
  schedule = schedules.make("linear")
  with pytest.raises(ValueError, match=message):
    sampler(lambda x, t: x, schedule, jnp.zeros((1, 2, 2, 1)), **options)


def _flow_config(**sample):
  config = config_lib.default_config()
  config.diffusion.loss, config.diffusion.prediction = "flow_matching", "flow"
  config.sample.sampler = "flow_euler"
  for key, value in sample.items():
    config.sample[key] = value
  return config


@pytest.mark.parametrize(
  "prediction, sample, message",
  [
    # a flow sampler on a diffusion model and a diffusion sampler on a flow model
    ("v", {"sampler": "flow_heun"}, r"'flow_heun' cannot sample a network of .*prediction='v'"),
    ("flow", {"sampler": "ddim"}, r"'ddim' cannot sample a network of diffusion.prediction='flow'"),
    ("flow", {"sampler": "euler"}, r"'euler' cannot sample a network of"),
    ("flow", {"flow_shift": 0.0}, r"sample.flow_shift must be > 0"),
    ("flow", {"flow_shift": -1.0, "sampler": "unipc"}, r"sample.flow_shift must be > 0"),
    ("flow", {"use_dynamic_shifting": True}, r"sample.use_dynamic_shifting needs sample.mu"),
    ("flow", {"mu": 1.15}, r"sample.mu=1.15 has no effect without sample.use_dynamic_shifting"),
    (
      "flow",
      {"use_dynamic_shifting": True, "mu": 1.15, "flow_shift": 3.0},
      r"sample.flow_shift has no effect with sample.use_dynamic_shifting",
    ),
    ("flow", {"time_shift_type": "linear"}, r"time_shift_type has no effect without"),
    # options the chosen sampler does not read on this network
    ("flow", {"sampler": "flow_heun", "use_karras_sigmas": True}, r"has no effect with .*heun"),
    (
      "flow",
      {"sampler": "unipc", "spacing": "trailing"},
      (
        r"sample.spacing='trailing' has no effect with sample.sampler='unipc' on a network of "
        r"diffusion.prediction='flow'"
      ),
    ),
    (
      "v",
      {"sampler": "dpm_solver", "flow_shift": 3.0},
      (
        r"sample.flow_shift=3.0 has no effect with sample.sampler='dpm_solver' on a network of "
        r"diffusion.prediction='v'"
      ),
    ),
    ("flow", {"sampler": "unipc", "time_shift_type": "linear"}, r"samplers that read it"),
  ],
)
def test_config_refusals_are_one_sentence(prediction, sample, message):
  config = _flow_config(**sample)
  if prediction != "flow":
    config.diffusion = config_lib.default_config().diffusion
    config.diffusion.prediction = prediction
  with pytest.raises(ValueError, match=message) as error:
    config_lib.validate(config)
  assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


@pytest.mark.parametrize(
  "name, options, direct",
  [
    (
      "flow_euler",
      {"flow_shift": 3.0, "use_karras_sigmas": True},
      {"shift": 3.0, "use_karras_sigmas": True},
    ),
    (
      "flow_euler",
      {"use_dynamic_shifting": True, "mu": 2.0, "time_shift_type": "linear"},
      {"use_dynamic_shifting": True, "mu": 2.0, "time_shift_type": "linear"},
    ),
    ("flow_heun", {"flow_shift": 2.0}, {"shift": 2.0}),
    (
      "unipc",
      {"flow_shift": 3.0, "order": 3, "unipc_solver_type": "bh1"},
      {"flow_shift": 3.0, "order": 3, "solver_type": "bh1"},
    ),
    (
      "dpm_solver",
      {"use_dynamic_shifting": True, "mu": 1.15, "order": 3},
      {"use_dynamic_shifting": True, "mu": 1.15, "order": 3},
    ),
  ],
)
def test_the_table_runs_each_flow_sampler_with_the_configs_options(name, options, direct):
  # The entry hands the sampler the options it reads on a flow model and nothing else (the
  # config's sample.spacing, 'leading', would be refused by UniPC and DPM-Solver there): the same
  # call made directly gives the same array.
  config = _flow_config(sampler=name, num_steps=6, **options)
  config_lib.validate(config)
  model_fn = lambda x, t: 0.9 * x + 0.01 * jnp.sin(t / 100.0)[:, None, None, None]
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  key = jax.random.key(1)
  got = table.run(name, model_fn, None, x_T, key=key, prediction="flow", options=config.sample)
  kwargs = {"key": key} if table.SAMPLERS[name].takes_key else {}
  want = SAMPLERS[name](model_fn, None, x_T, num_steps=6, prediction="flow", **direct, **kwargs)
  np.testing.assert_array_equal(got, want)


def test_cli_refuses_a_flow_sampler_on_a_diffusion_model(tmp_path):
  # configs/digits.py trains a v-prediction diffusion model: one sentence, exit 1, no work done.
  result = run_main(
    tmp_path,
    f"--config={REPO / 'configs' / 'digits.py'}",
    "--mode=describe",
    "--config.sample.sampler=flow_euler",
  )
  assert result.returncode == 1
  message = result.stderr.strip().splitlines()[-1]
  assert (
    "sample.sampler='flow_euler' cannot sample a network of diffusion.prediction='v'" in message
  )
  assert "Traceback" not in result.stderr
