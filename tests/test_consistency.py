"""Consistency distillation and training: the student's f, the teacher's ODE steps against float64
NumPy, distances, curricula and σ sampling against the papers' formulas, the CD loss at its
optimum, and CD through the trainer: a teacher run, exact resume of all three parameter sets,
the teacher checks, sampling the student."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import cluster
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx
from test_train import TINY, data_dir, read_params, tiny_config  # noqa: F401 — a fixture

from jaxdiff import config as config_lib
from jaxdiff import generate, models, objectives, parallel, sampling, schedules
from jaxdiff import preconditioning as pc
from jaxdiff import run as run_lib
from jaxdiff.objectives import consistency as cm
from jaxdiff.samplers import table
from jaxdiff.train import loop
from jaxdiff.train.step import make_train_fn

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cd_config(data_dir, teacher, **overrides):  # noqa: F811
  """configs/digits_cd.py with the trainer tests' TINY sizes (the student of a TINY teacher)."""
  wanted = {
    **TINY,
    "data.data_dir": str(data_dir),
    "teacher.workdir": str(teacher),
    "train.num_steps": 2,
    "train.steps_per_call": 1,
    "train.checkpoint_every": 1,
    "consistency.num_scales": 6,
    "sample.num_steps": 2,
    **overrides,
  }
  return cluster.configured(ROOT / "configs" / "digits_cd.py", wanted)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_dir):  # noqa: F811
  """A TINY digits run of two steps: any trained jaxdiff run can be a teacher."""
  workdir = tmp_path_factory.mktemp("teacher")
  loop.train(tiny_config(data_dir, **{"train.num_steps": 2}), workdir)
  return workdir


# --- the pure parts ---------------------------------------------------------------------------


def test_the_student_function_keeps_the_boundary_and_starts_as_its_teacher():
  schedule = schedules.make("cosine", 1000)
  model = lambda x_t, t: 0.3 * x_t + 0.1 * jnp.cos(t / 200.0)[:, None, None, None]
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2)) * 2
  with jax.enable_x64(True):
    x = x.astype(jnp.float64)
    f = pc.student_function(model, prediction="v", schedule=schedule)
    D = pc.discrete_denoiser(model, schedule=schedule, prediction="v")
    np.testing.assert_array_equal(f(x, 0.002), x)  # exactly, whatever the network
    # the consistency scalings applied to F = (D − c_skip_E·x)/c_out_E, EDM's network behind D
    sigma = np.array([0.05, 1.3, 80.0])
    c_skip = 0.25 / ((sigma - 0.002) ** 2 + 0.25)
    c_out = (sigma - 0.002) * 0.5 / np.sqrt(sigma**2 + 0.25)
    c_skip_e, c_out_e = 0.25 / (sigma**2 + 0.25), sigma * 0.5 / np.sqrt(sigma**2 + 0.25)
    e = lambda v: v[:, None, None, None]
    denoised = D(x, sigma)
    want = e(c_skip) * x + e(c_out) * (denoised - e(c_skip_e) * x) / e(c_out_e)
    np.testing.assert_allclose(f(x, sigma), want, rtol=1e-12, atol=1e-14)
    # a student started from its teacher is its denoiser up to O(σ_min/σ): f = D + a·x − b·D
    a, b = c_skip - c_out / c_out_e * c_skip_e, 1 - c_out / c_out_e
    assert np.all(np.abs(a) <= 1.05 * 0.002 / sigma) and np.allclose(b, 0.002 / sigma)
    raw = pc.student_function(model, prediction="consistency", schedule=schedule)
    np.testing.assert_array_equal(raw(x, sigma), pc.consistency_function(model)(x, sigma))


def _denoiser_np(x, sigma):
  return np.tanh(x) / (1 + sigma) + 0.1 * np.sin(sigma)


def test_euler_and_heun_teacher_steps_against_float64_numpy():
  x = np.random.default_rng(0).standard_normal((3, 2, 2, 1)) * 5
  sigma, sigma_next = np.array([80.0, 3.0, 0.01]), np.array([57.0, 1.9, 0.002])
  s, s2 = sigma[:, None, None, None], sigma_next[:, None, None, None]
  d = (x - _denoiser_np(x, s)) / s
  euler = x + (s2 - s) * d
  d2 = (euler - _denoiser_np(euler, s2)) / s2
  heun = x + (s2 - s) * (d + d2) / 2
  D = lambda x, sigma: (
    jnp.tanh(x) / (1 + sigma[:, None, None, None]) + 0.1 * jnp.sin(sigma[:, None, None, None])
  )
  with jax.enable_x64(True):
    args = (D, jnp.asarray(x), jnp.asarray(sigma), jnp.asarray(sigma_next))
    np.testing.assert_allclose(cm.euler_step(*args), euler, rtol=1e-13)
    np.testing.assert_allclose(cm.heun_step(*args), heun, rtol=1e-13)
  assert cm.TEACHER_STEPS["ddim"] is cm.euler_step


def test_ddim_of_a_discrete_teacher_is_euler_in_sigma():
  # DDIM (η = 0) in x_t with ᾱ = 1/(1 + σ²), written out with the model's ε̂ — the same point as
  # the Euler step of its σ-space denoiser on x = x_t/√ᾱ
  schedule = schedules.make("cosine", 1000)
  model = lambda x_t, t: 0.4 * jnp.tanh(x_t) + 0.02 * (t / 1000.0)[:, None, None, None]
  x = np.random.default_rng(1).standard_normal((2, 3, 3, 1)) * 7
  sigma, sigma_next = np.array([7.0, 0.9]), np.array([3.1, 0.2])
  with jax.enable_x64(True):
    t = pc.timestep_of_sigma(jnp.asarray(sigma), schedule=schedule)
    a, a2 = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    a, a2 = a[:, None, None, None], a2[:, None, None, None]
    x_t = x * np.sqrt(a)
    eps = np.asarray(model(jnp.asarray(x_t), t))  # an ε-prediction model
    x0 = (x_t - np.sqrt(1 - a) * eps) / np.sqrt(a)
    ddim = (np.sqrt(a2) * x0 + np.sqrt(1 - a2) * eps) / np.sqrt(a2)
    D = pc.discrete_denoiser(model, schedule=schedule, prediction="epsilon")
    got = cm.euler_step(D, jnp.asarray(x), jnp.asarray(sigma), jnp.asarray(sigma_next))
  np.testing.assert_allclose(got, ddim, rtol=1e-12)


def test_distances_and_weights_in_closed_form():
  a = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1) / 10
  b = a + np.array([0.3, -0.01], np.float32)[:, None, None, None]
  np.testing.assert_allclose(cm.distance("l2", a, b), [0.09, 1e-4], rtol=1e-5)
  np.testing.assert_allclose(cm.distance("l1", a, b), [0.3, 0.01], rtol=1e-5)
  c = 0.00054 * 4.0  # √d = √16
  want = np.sqrt(16 * np.array([0.09, 1e-4]) + c**2) - c
  np.testing.assert_allclose(cm.distance("pseudo_huber", a, b), want, rtol=1e-5)
  np.testing.assert_allclose(
    cm.distance("pseudo_huber", a, b, huber_c=0.5),
    np.sqrt(16 * np.array([0.09, 1e-4]) + 0.25) - 0.5,
    rtol=1e-5,
  )
  # pseudo-Huber is ‖δ‖²/2c near 0 (L2) and ‖δ‖ − c far away (L1)
  small = cm.distance("pseudo_huber", a, a + 1e-5, huber_c=1.0)
  np.testing.assert_allclose(small, 16e-10 / 2, rtol=1e-2)
  lo, hi = jnp.array([0.002, 1.0]), jnp.array([0.01, 3.0])
  np.testing.assert_allclose(cm.weights_of("inverse_gap", lo, hi), [125.0, 0.5], rtol=1e-6)
  np.testing.assert_array_equal(cm.weights_of("uniform", lo, hi), [1.0, 1.0])


def test_the_curricula_are_the_papers_formulas():
  K = 1000
  k = np.arange(K + 1)
  # iCT (Song & Dhariwal 2024): K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋ = ⌊1000/8⌋ = 125
  want = np.minimum(10 * 2 ** (k // 125), 1280) + 1
  got = jax.vmap(lambda s: cm.ict_num_scales(s, total_steps=K, start=10, end=1280))(k)
  np.testing.assert_array_equal(got, want)
  assert want[0] == 11 and want[-1] == 1281 and (want == 1281).sum() == K + 1 - 875
  # CT (Song et al. 2023): N(k) = ⌈√(k/K((s1 + 1)² − s0²) + s0²) − 1⌉ + 1, μ(k) = exp(s0 ln μ0/N(k))
  n = np.ceil(np.sqrt(k / K * (151**2 - 4) + 4) - 1) + 1
  got = jax.vmap(lambda s: cm.ct_num_scales(s, total_steps=K, start=2, end=150))(k)
  np.testing.assert_array_equal(got, n)
  mu = np.exp(2 * np.log(0.9) / n)
  np.testing.assert_allclose(cm.ct_target_ema(got, start_ema=0.9, start_scales=2), mu, rtol=1e-6)
  assert got[0] == 2 and got[-1] == 151 and mu[0] == pytest.approx(0.9)


def test_digits_ict_samples_at_sigmas_its_network_was_trained_at():
  # An iCT network sees only its grid's σ's (t_in = 250·ln σ jumps between them), so
  # configs/digits_ict.py samples at points of its last grid, as the objective builds that grid.
  config = config_lib.load_file(ROOT / "configs" / "digits_ict.py")
  c, last_step = config.consistency, config.train.num_steps - 1
  n = int(
    cm.ict_num_scales(
      last_step, total_steps=config.train.num_steps, start=c.start_scales, end=c.end_scales
    )
  )
  assert n == c.end_scales + 1  # the last stage is at s1
  grid = np.asarray(
    cm.karras_grid(np.arange(n), n, sigma_min=pc.SIGMA_MIN, sigma_max=c.sigma_max, rho=c.rho)
  )
  for sigma in config.sample.sigmas:
    assert np.min(np.abs(grid / sigma - 1)) < 1e-6, (sigma, grid)  # float32 grid against float64


def test_the_timestep_grid_is_the_teachers_trailing_timesteps():
  schedule = schedules.make("cosine", 1000)
  # diffusers' 'trailing' timesteps for 10 steps (DDIMScheduler): 999, 899, …, 99; the grid keeps
  # 899 … 99 and puts σ_max in 999's place (σ(999) ≈ 2·10⁴ on the cosine schedule) and σ_min last
  trailing = np.round(np.arange(1000, 0, -1000 / 10)).astype(int) - 1
  alphas_cumprod = np.asarray(schedule.alphas_cumprod, np.float64)
  inner = np.sqrt((1 - alphas_cumprod[trailing[1:]]) / alphas_cumprod[trailing[1:]])
  want = np.concatenate([[0.002], inner[::-1], [80.0]])
  got = cm.timestep_grid(11, schedule=schedule, sigma_min=0.002, sigma_max=80.0)
  np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 exp(log σ) at table points
  assert np.all(np.diff(got) > 0)
  with pytest.raises(ValueError, match=r"timestep 899 at σ = 6\.36.*above consistency.sigma_max"):
    cm.timestep_grid(11, schedule=schedule, sigma_min=0.002, sigma_max=5.0)
  config = config_lib.load_file(ROOT / "configs" / "digits_cd.py")
  config.consistency.grid = "timesteps"
  np.testing.assert_array_equal(cm.cd_grid(config, schedule), got)
  config.consistency.grid = "karras"  # the paper's, with consistency.rho
  np.testing.assert_allclose(
    cm.cd_grid(config, schedule),
    (0.002 ** (1 / 7) + np.arange(11) / 10 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7,
    rtol=1e-12,
  )
  ict = config_lib.load_file(ROOT / "configs" / "digits_ict.py")
  ict.consistency.grid = "timesteps"
  with pytest.raises(ValueError, match="for consistency_distillation only"):
    config_lib.validate(ict)


@pytest.mark.parametrize("num_scales", [11, 41, 1281])
def test_lognormal_pair_probabilities_are_the_papers(num_scales):
  ramp = np.arange(num_scales) / (num_scales - 1)
  sigmas = (0.002 ** (1 / 7) + ramp * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
  cdf = scipy.special.erf((np.log(sigmas) + 1.1) / (np.sqrt(2) * 2.0))
  want = np.diff(cdf) / np.diff(cdf).sum()
  got = cm.lognormal_pair_probabilities(
    num_scales, max_scales=1281, sigma_min=0.002, sigma_max=80.0, rho=7.0, p_mean=-1.1, p_std=2.0
  )
  # float32 σ's: adjacent ln σ of the 1281-point grid differ by ~3e-3 and carry ~4e-7 of rounding
  np.testing.assert_allclose(got[: num_scales - 1], want, rtol=5e-4)
  assert np.all(np.asarray(got[num_scales - 1 :]) == 0)


def _optimal_student(schedule, x0_star):
  """An x0-prediction network whose student f is the exact consistency function of single-point
  data, f*(x, σ) = x0* + σ_min·(x − x0*)/σ (the ODE's origin at σ_min), inverted here through
  f = (c_skip − r·c_skip_E)·x + r·D, r = (σ − σ_min)/σ, and x_t = x/√(1 + σ²)."""

  def net(x_t, t, y=None):
    sigma = pc.sigma_of_timestep(t, schedule=schedule)[:, None, None, None]
    x = x_t * jnp.sqrt(1 + sigma**2)
    r = (sigma - 0.002) / sigma
    a = 0.25 / ((sigma - 0.002) ** 2 + 0.25) - r * 0.25 / (sigma**2 + 0.25)
    return (x0_star + 0.002 * (x - x0_star) / sigma - a * x) / r

  return net


@pytest.mark.parametrize("solver,grid", [("euler", "karras"), ("heun", "timesteps")])
def test_the_cd_loss_vanishes_at_its_optimum_and_the_target_is_an_ema(solver, grid, tmp_path):
  config = tiny_config(
    tmp_path, **{"diffusion.prediction": "x0", "diffusion.loss": "consistency_distillation"}
  )
  config.consistency.update(num_scales=4, distance="l2", teacher_solver=solver, grid=grid)
  schedule = schedules.make("cosine", 1000)
  objective = cm.consistency_distillation(config, schedule)
  x0 = np.linspace(-0.8, 0.9, 6 * 4 * 4).reshape(6, 4, 4, 1)
  with jax.enable_x64(True):
    x0 = jnp.asarray(x0)
    teacher = lambda x_t, t, y=None: jnp.broadcast_to(x0, x_t.shape)  # the exact denoiser
    best = _optimal_student(schedule, x0)
    networks = {"model": best, "target": best, "teacher": teacher}
    total, per_example, _ = objective.loss(jax.random.key(0), networks, x0, labels=None)
    assert total < 1e-24 and per_example.shape == (6,)
    off = {**networks, "model": lambda x_t, t, y=None: best(x_t, t) + 0.01}
    assert objective.loss(jax.random.key(0), off, x0, labels=None)[0] > 1e-6
  extra = {"teacher": {"w": jnp.ones(2)}, "target": {"w": jnp.ones(2)}}
  moved = objective.update_extra(extra, {"w": jnp.zeros(2)}, 7)
  np.testing.assert_allclose(moved["target"]["w"], 0.95)  # μ·target + (1 − μ)·params
  np.testing.assert_array_equal(moved["teacher"]["w"], 1.0)
  # CT's target follows μ(k) of its N(k)
  ct = cm.consistency_training(config, schedule)
  target = ct.update_extra({"target": {"w": jnp.ones(())}}, {"w": jnp.zeros(())}, 0)["target"]["w"]
  np.testing.assert_allclose(target, np.exp(2 * np.log(0.95) / 2), rtol=1e-6)


def test_the_sampler_table_uses_the_distilled_students_f():
  schedule = schedules.make("cosine", 1000)
  model = lambda x_t, t: 0.5 * x_t + 0.05 * jnp.sin(t / 100.0)[:, None, None, None]
  x_T = jax.random.normal(jax.random.key(4), (2, 4, 4, 1))
  options = config_lib.default_config().sample
  options.update(sampler="consistency", num_steps=1, spacing="leading")
  got = table.run("consistency", model, schedule, x_T, key=None, prediction="v", options=options)
  f = pc.student_function(model, prediction="v", schedule=schedule)
  np.testing.assert_allclose(got, jnp.clip(f(80.0 * x_T, 80.0), -1, 1), rtol=1e-6, atol=1e-6)
  with pytest.raises(
    ValueError, match="cannot sample a network of diffusion.prediction='consistency'"
  ):
    table.run("ddim", model, schedule, x_T, key=None, prediction="consistency", options=options)


# --- through the trainer ----------------------------------------------------------------------


def test_distillation_trains_resumes_bit_exactly_and_samples_without_the_teacher(
  tmp_path,
  data_dir,  # noqa: F811
  teacher,
):
  own = tmp_path / "teacher"  # a copy, removed before the resume
  shutil.copytree(teacher, own)
  config = cd_config(data_dir, own)
  taught = run_lib.build(config, teacher=run_lib.read_teacher(config)).state
  teacher_ema = read_params(teacher, 2)["ema_params"]
  flat = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  for part in (taught.params, taught.ema_params, taught.extra["teacher"], taught.extra["target"]):
    jax.tree.map(np.testing.assert_array_equal, flat(part), flat(teacher_ema))
  straight = tmp_path / "straight"
  loop.train(config, straight)
  resumed = tmp_path / "resumed"
  loop.train(cd_config(data_dir, own, **{"train.num_steps": 1}), resumed)
  shutil.rmtree(own)  # a resumed run restores the teacher's copy in its checkpoint
  loop.train(config, resumed)
  a, b = read_params(straight, 2), read_params(resumed, 2)
  assert set(a["extra"]) == {"teacher", "target"}
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert flat(a["extra"]["teacher"]) and all(
    np.array_equal(x, y) for x, y in zip(flat(a["extra"]["teacher"]), flat(teacher_ema))
  )
  moved = [not np.array_equal(x, y) for x, y in zip(flat(a["params"]), flat(teacher_ema))]
  assert any(moved)  # the student trained away from its teacher
  images = np.load(sampling.sample(config, resumed))["arr_0"]
  assert images.shape == (8, 16, 16, 1) and images.dtype == np.uint8
  assert len(np.unique(images.reshape(8, -1), axis=0)) == 8


def test_a_missing_or_mismatched_teacher_is_one_sentence(tmp_path, data_dir, teacher):  # noqa: F811
  def refused(config, match):
    with pytest.raises(run_lib.RunError, match=match) as error:
      run_lib.setup(config, tmp_path / "student")
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")

  refused(cd_config(data_dir, ""), r"distils a teacher: set --config.teacher.workdir")
  refused(cd_config(data_dir, tmp_path / "nowhere"), "holds no jaxdiff run")
  refused(
    cd_config(data_dir, teacher, **{"data.image_size": 8}),
    r"has data.image_size=16 but this run has 8",
  )
  refused(
    cd_config(data_dir, teacher, **{"model.base_channels": 16}),
    r"has model.base_channels=32 but this run has 16",
  )
  empty = tmp_path / "untrained"
  empty.mkdir()
  shutil.copy(teacher / "config.json", empty / "config.json")
  refused(cd_config(data_dir, empty), "has no checkpoint yet; train it first")
  assert not (tmp_path / "student").exists()  # refused before the workdir was made
  config = json.loads((teacher / "config.json").read_text())
  assert config["diffusion"]["loss"] == "mse"


def test_the_cli_refuses_a_missing_teacher_with_exit_code_1(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxdiff.main",
      f"--config={ROOT / 'configs' / 'digits_cd.py'}",
      f"--workdir={tmp_path / 'cd'}",
      f"--config.teacher.workdir={tmp_path / 'missing'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 1
  want = (
    f"error: teacher.workdir={tmp_path / 'missing'} holds no jaxdiff run (no config.json); "
    "train the teacher there first or correct --config.teacher.workdir."
  )
  assert result.stderr.strip().splitlines() == [want]


class _Toy(nnx.Module):
  """A per-pixel MLP of (x, t): a network for trainer plumbing, not for quality."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(channels + 1, 8, rngs=rngs)
    self.out = nnx.Linear(8, channels, rngs=rngs)

  def __call__(self, x, t, y=None):
    t = jnp.broadcast_to(t.astype(x.dtype)[:, None, None, None] / 1000, x.shape[:-1] + (1,))
    return self.out(nnx.silu(self.hidden(jnp.concatenate([x, t], -1))))


@dataclasses.dataclass(frozen=True)
class _ToyConfig:
  pass


def test_ct_trains_through_the_step_with_its_curriculum_and_target(tmp_path, monkeypatch):
  # N(0), N(1) of K = 1000 steps: ⌈√(k/1000·(151² − 4) + 4) − 1⌉ + 1 = 2, 6
  loss, scales = "consistency_training", [2, 6]
  entry = models.table.Architecture(_Toy, _ToyConfig, lambda c, spec, rngs: _Toy(1, rngs=rngs))
  monkeypatch.setitem(models.ARCHITECTURES, "toy", entry)
  config = config_lib.default_config(arch="toy")
  config.data.update(data_dir=str(tmp_path), batch_size=8, num_classes=None)
  config.diffusion.update(loss=loss, prediction="consistency")
  config.sample.update(sampler="consistency", num_steps=1)
  config.train.num_devices = 1
  config_lib.validate(config)
  parts = run_lib.build(config)
  fn = make_train_fn(parallel.make_mesh(1), parts.state, steps_per_call=1, **parts.step_kwargs())
  images = np.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 16, 16, 1)).astype(np.float32)
  kernel = lambda tree: np.array(tree["out"]["kernel"][...])  # a host copy: the step donates
  state, seen, kernels = parts.state, [], [kernel(parts.state.params)]
  for batch in images:
    state, metrics = fn(state, jax.device_put({"image": batch}), None)
    assert np.isfinite(float(metrics["loss"][0]))
    seen.append(int(metrics["num_scales"][0]))
    kernels.append(kernel(state.params))
  assert seen == scales and int(state.step) == 2
  # θ⁻ ← μ(k)·θ⁻ + (1 − μ(k))·θ after update k, μ(k) = exp(s0·ln μ0/N(k)) = 0.95, 0.95^(1/3)
  target = kernels[0]
  for k, params in enumerate(kernels[1:]):
    mu = np.exp(2 * np.log(0.95) / scales[k])
    target = mu * target + (1 - mu) * params
  assert set(state.extra) == {"target"}
  np.testing.assert_allclose(kernel(state.extra["target"]), target, rtol=1e-5, atol=1e-7)


def test_a_consistency_trained_network_samples_its_default_sigmas_on_its_last_grid(monkeypatch):
  # iCT over K = 400 steps with s0 = 10, s1 = 20: K' = ⌊400/(log2 2 + 1)⌋ = 200, N(399) = 21 points
  entry = models.table.Architecture(_Toy, _ToyConfig, lambda c, spec, rngs: _Toy(1, rngs=rngs))
  monkeypatch.setitem(models.ARCHITECTURES, "toy", entry)
  config = config_lib.default_config(arch="toy")
  config.data.update(batch_size=8, num_classes=None)
  config.diffusion.update(loss="improved_consistency_training", prediction="consistency")
  config.consistency.update(start_scales=10, end_scales=20)
  config.train.update(num_steps=400, num_devices=1)
  config.sample.update(sampler="consistency", num_steps=2)
  config_lib.validate(config)
  karras = pc.karras_sigmas(80.0, pc.SIGMA_MIN, 21)[::-1]
  np.testing.assert_allclose(objectives.trained_sigmas(config), karras, rtol=1e-12)
  parts = run_lib.build(config)
  mesh = parallel.make_mesh(1)

  def draw(sigmas):
    config.sample.sigmas = sigmas
    fn = generate.make_sample_fn(
      parts.model_def, parts.schedule, config, mesh, 4, codec=parts.codec, spec=parts.spec
    )
    return np.asarray(fn(parts.state.ema_params, None, jax.random.key(0), None))

  # the defaults (80, 1.3824) land on the grid's points 20 and 9 (tests/test_consistency_sampler)
  default, on_grid = draw(()), draw((80.0, float(karras[9])))
  np.testing.assert_array_equal(default, on_grid)
  assert not np.array_equal(default, draw((80.0, 1.3824)))
  for loss in ("mse", "consistency_distillation"):  # networks that know every t keep the defaults
    config.diffusion.loss = loss
    assert objectives.trained_sigmas(config) is None


def test_ict_is_its_own_target():
  # no extra parameter sets; the loss at step k draws pairs of the N(k)-point grid
  config = config_lib.default_config()
  config.diffusion.update(loss="improved_consistency_training", prediction="consistency")
  objective = cm.improved_consistency_training(config, schedules.make("linear", 1000))
  assert objective.init_extra is None and objective.update_extra is None
  assert objective.context == ("step",)
  x0 = jnp.linspace(-1, 1, 4 * 8 * 8).reshape(4, 8, 8, 1)
  weight = jnp.asarray(0.7)
  net = lambda w: {"model": lambda u, t, y=None: w * jnp.tanh(u) + 1e-3 * t[:, None, None, None]}

  def loss(w):
    total, per_example, metrics = objective.loss(jax.random.key(1), net(w), x0, step=500)
    return total, (per_example, metrics)

  (total, (per_example, metrics)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(weight)
  assert per_example.shape == (4,) and np.isfinite(float(total)) and float(grad) != 0.0
  assert int(metrics["num_scales"]) == 10 * 2 ** (500 // 125) + 1  # 161


def test_a_distillation_in_a_bucket_in_every_mode_on_two_processes_equals_one(
  teacher,
  data_dir,  # noqa: F811
  tmp_path,
  bucket,
):
  # cd_config's sizes on every device of both processes; the teacher, a workdir in the bucket
  # as the student's own, is read by each process
  overrides = {
    **{k: v for k, v in TINY.items() if k != "train.num_devices"},
    "data.data_dir": str(data_dir),
    "teacher.workdir": bucket.upload(teacher, "cd/teacher"),
    "train.num_steps": 2,
    "train.steps_per_call": 1,
    "train.checkpoint_every": 2,
    "train.sample_every": 2,
    "consistency.num_scales": 6,
    "sample.num_steps": 2,
    "eval.num_samples": 8,
  }
  config_file = ROOT / "configs" / "digits_cd.py"
  npz, result = cluster.every_mode(config_file, "cd/run", overrides, bucket=bucket)
  assert np.load(npz)["arr_0"].shape == (8, 16, 16, 1) and result["eval_samples"] == 8
  workdir, here = bucket.local("cd/run"), {"teacher.workdir": str(teacher)}
  cluster.same_as_one_process(config_file, overrides, workdir, tmp_path, npz, result, here=here)
