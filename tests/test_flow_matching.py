"""Flow matching (objectives/flow_matching.py, jaxdiff/flow.py): the loss against closed forms on
hand-made networks, the σ's each time sampling and shift draws against their closed-form
distributions, the refusals, and configs/digits_flow.py through the CLI with the U-Net and the DiT
(train, describe, sample)."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cluster import flags
from scipy import integrate, special, stats
from test_train import data_dir  # noqa: F401 — a fixture

from jaxdiff import config as config_lib
from jaxdiff import flow, objectives
from jaxdiff.config import default_config, validate

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_flow.py"


def _objective(**flow_keys):
  config = default_config()
  config.diffusion.loss, config.diffusion.prediction = "flow_matching", flow.PREDICTION
  for key, value in flow_keys.items():
    config.flow[key] = value
  objectives.OBJECTIVES["flow_matching"].check(config)
  return objectives.build(config, None)


def _oracle(x0, offset):
  """A network that knows x_0: from x_σ and t = 1000σ it returns the true velocity
  (x_σ − x_0)/σ = ε − x_0 plus offset(σ)."""

  def network(x, t):
    sigma = (t / flow.TIME_SCALE).reshape(-1, *(1,) * (x.ndim - 1))
    return (x - x0) / sigma + offset(sigma)

  return {"model": network}


def _seen_sigmas(objective, n, key=0):
  """The σ of each of n examples as the objective drew them: with the oracle offset by σ, the
  per-example loss is σ² (float64, so σ = √loss to ~1e-15)."""
  x0 = jnp.full((n, 1, 1, 1), 0.3, jnp.float64)
  _, per_example, _ = objective.loss(jax.random.key(key), _oracle(x0, lambda s: s), x0)
  return np.sqrt(np.asarray(per_example))


# --- the loss ------------------------------------------------------------------------------------


def test_loss_is_the_mean_squared_velocity_error_and_cosmap_weights_it():
  with jax.enable_x64(True):
    x0 = jax.random.normal(jax.random.key(1), (64, 4, 4, 2), jnp.float64)
    offset = jax.random.normal(jax.random.key(2), (4, 4, 2), jnp.float64)
    total, per_example, metrics = _objective().loss(
      jax.random.key(3), _oracle(x0, lambda s: offset), x0
    )
    # the oracle's error is exactly `offset` on every example: loss = mean(offset²). Float64: what
    # differs is the rounding of (x_σ − x_0)/σ, ~1e-16/σ, and σ < 1e-7 has probability 1e-7 a draw
    expected = float(jnp.mean(offset**2))
    assert np.max(np.abs(np.asarray(per_example) / expected - 1)) <= 1e-8
    assert abs(float(total) / expected - 1) <= 1e-8 and metrics == {}
    # cosmap multiplies example i's loss by 2/(π(1 − 2σ + 2σ²)) at its σ (same key: same σ's)
    sigma = _seen_sigmas(_objective(), 64, key=3)
    weighted = _seen_sigmas(_objective(weighting="cosmap"), 64, key=3) ** 2
    cosmap = 2 / (np.pi * (1 - 2 * sigma + 2 * sigma**2))
    np.testing.assert_allclose(weighted, cosmap * sigma**2, rtol=1e-12)  # float64 of one product


def test_loss_of_a_linear_network_is_its_closed_form_expectation():
  # v̂ = a·x_σ with x_0 = c: v̂ − v = (a(1 − σ) + 1)·c + (aσ − 1)·ε, so with ε ~ N(0, 1) and
  # σ ~ U(0, 1): E L = c²·(a²/3 + a + 1) + a²/3 − a + 1
  a, c, n = 0.7, 0.5, 20_000
  x0 = jnp.full((n, 2, 2, 1), c, jnp.float32)
  _, per_example, _ = _objective().loss(jax.random.key(0), {"model": lambda x, t: a * x}, x0)
  expected = c**2 * (a**2 / 3 + a + 1) + a**2 / 3 - a + 1
  per_example = np.asarray(per_example, np.float64)
  stderr = per_example.std() / math.sqrt(n)
  assert abs(per_example.mean() - expected) <= 5 * stderr  # Monte Carlo: 5 standard errors


# --- where on the path: time samplings and shifts ------------------------------------------------


def _logit_normal_cdf(mean, std):
  return lambda s: stats.norm.cdf((special.logit(s) - mean) / std)


def _mode_cdf(scale):
  # σ = f(u) with f decreasing: P(σ ≤ x) = 1 − f⁻¹(x), f⁻¹ by interpolation on a fine grid
  u = np.linspace(0, 1, 200_001)
  f = 1 - u - scale * (np.cos(np.pi * u / 2) ** 2 - 1 + u)
  return lambda s: 1 - np.interp(s, f[::-1], u[::-1])


@pytest.mark.parametrize(
  "keys, cdf",
  [
    ({}, lambda s: s),
    # SD3's shift: σ' = sσ/(1 + (s − 1)σ) ⇔ σ = σ'/(s − (s − 1)σ'), uniform
    ({"shift": 3.0}, lambda s: s / (3 - 2 * s)),
    ({"time_sampling": "logit_normal", "logit_mean": 0.3, "logit_std": 0.7},
     _logit_normal_cdf(0.3, 0.7)),
    # a shift by s adds log s to the logit, Flux's exponential shift μ: the logit-normal's mean moves
    ({"time_sampling": "logit_normal", "shift": 3.0}, _logit_normal_cdf(math.log(3), 1.0)),
    ({"time_sampling": "logit_normal", "use_dynamic_shifting": True, "mu": 1.15},
     _logit_normal_cdf(1.15, 1.0)),
    ({"time_sampling": "mode"}, _mode_cdf(1.29)),
    ({"time_sampling": "mode", "mode_scale": -0.5}, _mode_cdf(-0.5)),
  ],
)  # fmt: skip
def test_the_objective_draws_sigmas_from_the_configured_distribution(keys, cdf):
  with jax.enable_x64(True):
    sigma = _seen_sigmas(_objective(**keys), 4096)
  # Kolmogorov–Smirnov against the closed-form CDF; fixed keys, so the p-value is fixed too: a wrong
  # distribution (no shift, another mean) gives p < 1e-10 at this size
  assert stats.kstest(sigma, cdf).pvalue > 1e-3


def test_logit_normal_and_mode_moments_are_their_densities():
  n = 1_000_000
  key = jax.random.key(7)

  def close(samples, moment, exact):
    values = np.asarray(samples, np.float64) ** moment
    assert abs(values.mean() - exact) <= 5 * values.std() / math.sqrt(n)  # 5 standard errors

  samples = flow.sample_sigmas(key, (n,), "logit_normal", logit_mean=-0.4, logit_std=1.3)
  density = lambda s: float(flow.logit_normal_density(s, -0.4, 1.3))
  assert integrate.quad(density, 0, 1)[0] == pytest.approx(1, abs=1e-7)
  for k in (1, 2):
    close(samples, k, integrate.quad(lambda s, k=k: s**k * density(s), 0, 1)[0])
  # the mode density (SD3 eq. 20): E σ = 1/2 for every scale s, and
  # E σ² = 1/3 − 2s(1/π² − 1/12) + s²(5/24 − 2/π²), both by integrating f(u)^k over u ∈ [0, 1]
  for s in (1.29, -0.8):
    samples = flow.sample_sigmas(key, (n,), "mode", mode_scale=s)
    close(samples, 1, 0.5)
    close(samples, 2, 1 / 3 - 2 * s * (1 / np.pi**2 - 1 / 12) + s**2 * (5 / 24 - 2 / np.pi**2))


def test_shift_values():
  sigma = jnp.array([0.0, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(flow.shift(sigma, 3.0), [0.0, 0.5, 0.75, 1.0], rtol=1e-6)
  np.testing.assert_allclose(flow.shift(sigma, 1.0), sigma)
  # Flux's form at exponent 1 is SD3's with s = e^μ
  inner = jnp.array([0.1, 0.5, 0.9])
  np.testing.assert_allclose(
    flow.exponential_shift(inner, math.log(3.0)), flow.shift(inner, 3.0), rtol=1e-6
  )


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"flow.shift": 0.0}, r"flow\.shift must be > 0"),
    ({"flow.use_dynamic_shifting": True}, r"needs flow\.mu"),
    ({"flow.mu": 0.5}, r"flow\.mu=0\.5 has no effect without flow\.use_dynamic_shifting"),
    ({"flow.use_dynamic_shifting": True, "flow.mu": 0.5, "flow.shift": 3.0},
     r"flow\.shift=3\.0 has no effect with flow\.use_dynamic_shifting"),
    ({"flow.time_sampling": "uniform", "flow.logit_mean": 0.5},
     r"flow\.logit_mean=0\.5 has no effect with flow\.time_sampling='uniform'"),
    ({"flow.time_sampling": "mode", "flow.mode_scale": 2.0}, r"flow\.mode_scale must lie in"),
    ({"flow.mode_scale": 1.0}, r"flow\.mode_scale=1\.0 has no effect with flow\.time_sampling"),
    ({"flow.time_sampling": "gauss"}, r"flow\.time_sampling must be one of"),
    ({"diffusion.min_snr_gamma": 5.0}, r"diffusion\.min_snr_gamma=5\.0 does not apply to a flow"),
    ({"diffusion.timestep_sampler": "loss_second_moment"}, r"does not apply to a flow model"),
    ({"diffusion.rescale_zero_terminal_snr": True}, r"does not apply to a flow model"),
    ({"model.learn_sigma": True}, r"model\.learn_sigma=True adds variance outputs"),
    ({"diffusion.prediction": "v"}, r"'flow_matching' does not train diffusion\.prediction='v'"),
    ({"diffusion.loss": "mse"},
     r"'mse' does not train diffusion\.prediction='flow'; use diffusion\.loss in \['flow_matching"),
    ({"diffusion.loss": "mse", "diffusion.prediction": "v"},
     r"flow\.time_sampling='logit_normal' is read only by diffusion\.loss='flow_matching'"),
    ({"sample.sampler": "ddim"}, r"cannot sample a network of diffusion\.prediction='flow'"),
  ],
)  # fmt: skip
def test_refusals_are_one_sentence(overrides, message):
  config = config_lib.load_file(CONFIG)
  validate(config)  # the shipped config itself is fine
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(ValueError, match=message) as error:
    validate(config)
  assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


# --- configs/digits_flow.py through the front door -----------------------------------------------

# the U-Net and the DiT of digits_flow at test size, 4 steps in calls of 2
TINY = {
  "data.batch_size": 16,
  "train.num_steps": 4,
  "train.steps_per_call": 2,
  "train.log_every": 2,
  "train.checkpoint_every": 4,
  "train.num_devices": 1,
  "optim.warmup_steps": 2,
  "sample.num_steps": 3,
  "sample.num_samples": 8,
  "sample.batch_size": 8,
}
TINY_NETWORK = {
  "unet": {"model.base_channels": 32, "model.channel_mult": (1,)},
  "dit": {"model.hidden_size": 32, "model.depth": 1, "model.num_heads": 2},
}


def _cli(arch, workdir, data_dir, mode):  # noqa: F811
  """`python -m jaxdiff.main` on digits_flow at test size; the finished process, checked."""
  wanted = {**TINY, **TINY_NETWORK[arch], "data.data_dir": str(data_dir)}
  command = [
    sys.executable, "-m", "jaxdiff.main", f"--config={CONFIG}:{arch}", f"--workdir={workdir}",
    f"--mode={mode}", *flags(wanted),
  ]  # fmt: skip
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  return done


def test_digits_flow_is_the_digits_recipe_with_flow_matching():
  for arch, recipe in (("unet", "digits.py"), ("dit", "digits_dit.py")):
    config = config_lib.load_file(CONFIG, arch)
    theirs = config_lib.load_file(ROOT / "configs" / recipe)
    validate(config)
    for section in ("data", "model", "optim", "train"):
      assert config[section].to_dict() == theirs[section].to_dict(), (arch, section)
    assert config.diffusion.loss == "flow_matching" and config.diffusion.prediction == "flow"
    assert config.flow.time_sampling == "logit_normal" and config.sample.num_steps <= 10


def test_cli_trains_a_flow_dit_then_describes_it(tmp_path, data_dir):  # noqa: F811
  workdir = tmp_path / "run"
  _cli("dit", workdir, data_dir, "train")
  _starts_at_a_zero_velocity(workdir)
  done = _cli("dit", workdir, data_dir, "describe")
  assert json.loads(done.stdout.strip().splitlines()[-1])["arch"] == "dit"


def _starts_at_a_zero_velocity(workdir):
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [line["loss"] for line in lines if "loss" in line]
  # both networks start with a zero output layer, v̂ = 0: the loss is E‖ε − x_0‖²/d = 1 + E x_0²,
  # between 1 and 2 for pixels in [-1, 1], until a few steps of a warming-up rate move it
  assert len(losses) == 2 and all(0.9 < loss < 2.1 for loss in losses), losses


def test_a_flow_unet_with_remat_bf16_fsdp_in_every_mode_on_two_processes_equals_one(
  tmp_path, data_dir  # noqa: F811
):
  """configs/digits_flow.py as a cluster runs it: 2 processes × 4 devices, recomputed
  activations, bfloat16, parameters split in 2; train with its grid, sample (UniPC on the flow
  grid, guided), eval (bits/dim through the ODE, 2 RK4 steps, one probe) equal to one process."""
  from cluster import every_mode, same_as_one_process
  from test_multiprocess import PIXEL

  overrides = {
    **PIXEL,
    "data.data_dir": str(data_dir),
    "train.compute_dtype": "bfloat16",
    "eval.num_examples": 32,
    "eval.ode_solver": "rk4",
    "eval.ode_steps": 2,
    "eval.ode_probes": 1,
  }
  overrides.pop("eval.num_timesteps")  # the discrete bound's; a flow model has none
  npz, result = every_mode(CONFIG, tmp_path / "run", overrides)
  _starts_at_a_zero_velocity(tmp_path / "run")
  with np.load(npz) as samples:
    assert samples["arr_0"].shape == (12, 16, 16, 1) and samples["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(samples["arr_1"], np.arange(12) % 10)
  assert result["eval_bound"] == "flow_matching" and result["eval_examples"] == 32
  assert 0 < result["eval_bpd"] < 16  # bits/dim of 8-bit pixels with a model near the prior
  same_as_one_process(CONFIG, overrides, tmp_path / "run", tmp_path, npz, result)


# --- a converted flow DiT says what it predicts --------------------------------------------------


def test_converted_dit_folder_declares_a_flow_model(tmp_path):
  # the random-weight diffusers DiT the converter tests use (tests/data/diffusers_dit_tiny)
  from jaxdiff.convert import folder_prediction, load_converted, load_diffusers_dit
  from jaxdiff.convert.__main__ import main

  tiny = str(ROOT / "tests" / "data" / "diffusers_dit_tiny")
  assert main(["diffusers-dit", tiny, str(tmp_path / "flow"), "--prediction", "flow"]) == 0
  written = json.loads((tmp_path / "flow" / "network_config.json").read_text())
  assert written["arch"] == "dit" and written["prediction"] == "flow"
  assert folder_prediction(tmp_path / "flow") == "flow"
  # a folder converted without --prediction declares nothing: the source's own (the DiT's ε)
  (tmp_path / "plain").mkdir()
  del written["prediction"]
  (tmp_path / "plain" / "network_config.json").write_text(json.dumps(written))
  assert folder_prediction(tmp_path / "plain") is None
  # the declaration is no argument of the network: the folder loads the DiT it was converted from
  converted, source = load_converted(tmp_path / "flow"), load_diffusers_dit(tiny)
  size, channels = written["image_size"], written["in_channels"]
  image = jax.random.normal(jax.random.key(0), (2, size, size, channels))
  t, y = jnp.array([250.0, 999.5]), jnp.array([0, 1])  # a flow model's t = 1000σ is fractional
  np.testing.assert_array_equal(converted(image, t, y), source(image, t, y))
  with pytest.raises(SystemExit):  # argparse: the allowed values, exit status 2
    main(["diffusers-dit", tiny, str(tmp_path / "bad"), "--prediction", "velocity"])
  assert not (tmp_path / "bad").exists()


def test_a_flow_run_is_no_consistency_teacher(tmp_path):
  # consistency distillation reads its teacher as a discrete model: a flow teacher's config.json
  # is refused in one sentence before any checkpoint is read
  from jaxdiff import run as run_lib

  (tmp_path / "config.json").write_text(config_lib.load_file(CONFIG).to_json(indent=2))
  student = config_lib.load_file(ROOT / "configs" / "digits_cd.py")
  student.teacher.workdir = str(tmp_path)
  with pytest.raises(run_lib.RunError, match=r"^the teacher in .* has diffusion\.\w+=.*teacher"):
    run_lib.read_teacher(student)
