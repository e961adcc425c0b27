"""σ-space denoisers: EDM's and the consistency models' scalings against their papers' formulas,
the boundary condition f(x, σ_min) = x, σ ↔ t for a discrete schedule, and a jaxdiff model as a
denoiser D(x, σ) checked where its answer is known in closed form."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import preconditioning as pc
from jaxdiff import samplers, schedules
from jaxdiff.samplers import karras
from jaxdiff.samplers.sigmas import sigma_to_t

SIGMAS = np.geomspace(0.002, 80.0, 23)


def test_edm_scalings_are_table_1_and_keep_unit_variance():
  with jax.enable_x64(True):
    s = pc.edm_scalings(SIGMAS, sigma_data=0.5)
    c = [np.asarray(v) for v in s]
  d2 = 0.25
  np.testing.assert_allclose(c[0], d2 / (SIGMAS**2 + d2), rtol=1e-14)
  np.testing.assert_allclose(c[1], SIGMAS * 0.5 / np.sqrt(SIGMAS**2 + d2), rtol=1e-14)
  np.testing.assert_allclose(c[2], 1 / np.sqrt(SIGMAS**2 + d2), rtol=1e-14)
  np.testing.assert_allclose(c[3], np.log(SIGMAS) / 4, rtol=1e-14)
  # Karras et al. appendix B.6: the network's input c_in·(x_0 + σn) and its effective target
  # (x_0 − c_skip·(x_0 + σn))/c_out both have unit variance for data of std σ_data.
  np.testing.assert_allclose(c[2] ** 2 * (d2 + SIGMAS**2), 1.0, rtol=1e-14)
  target_var = ((1 - c[0]) ** 2 * d2 + c[0] ** 2 * SIGMAS**2) / c[1] ** 2
  np.testing.assert_allclose(target_var, 1.0, rtol=1e-12)


def test_consistency_scalings_meet_the_boundary_condition():
  with jax.enable_x64(True):
    s = [np.asarray(v) for v in pc.consistency_scalings(SIGMAS)]
    at_min = pc.consistency_scalings(np.float64(0.002))
    edm = pc.edm_scalings(SIGMAS)
    unshifted = pc.consistency_scalings(SIGMAS, sigma_min=0.0)
  shifted = SIGMAS - 0.002
  np.testing.assert_allclose(s[0], 0.25 / (shifted**2 + 0.25), rtol=1e-14)
  np.testing.assert_allclose(s[1], shifted * 0.5 / np.sqrt(SIGMAS**2 + 0.25), rtol=1e-14)
  np.testing.assert_allclose(s[2], 1 / np.sqrt(SIGMAS**2 + 0.25), rtol=1e-14)
  # openai's (and diffusers' sigma_to_t) time input: 1000 · ¼ · ln(σ + 1e-44)
  np.testing.assert_allclose(s[3], 250 * np.log(SIGMAS + 1e-44), rtol=1e-14)
  assert float(at_min.c_skip) == 1.0 and float(at_min.c_out) == 0.0
  # with σ_min = 0 the consistency c_skip and c_out are EDM's
  np.testing.assert_allclose(unshifted.c_skip, edm.c_skip, rtol=1e-14)
  np.testing.assert_allclose(unshifted.c_out, edm.c_out, rtol=1e-14)


def test_the_consistency_function_is_the_identity_at_sigma_min_whatever_the_network():
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  wild = lambda u, t: 1e3 * jnp.sin(u) + t[:, None, None, None]
  f = pc.consistency_function(wild)
  np.testing.assert_array_equal(f(x, 0.002), x)
  out = f(x, jnp.array([0.002, 1.0, 80.0]))  # one σ per example
  np.testing.assert_array_equal(out[0], x[0])
  assert not np.allclose(out[1:], x[1:])


def test_the_network_sees_c_in_x_at_c_noise():
  # F(u, t) = u + t: D = c_skip·x + c_out·(c_in·x + c_noise), in closed form
  x = jax.random.normal(jax.random.key(1), (2, 3, 3, 1), jnp.float32)
  sigma = np.array([0.3, 7.0])
  net = lambda u, t: u + t[:, None, None, None]
  got = pc.edm_denoiser(net, sigma_data=0.5)(x, sigma)
  s = sigma[:, None, None, None]
  total = s**2 + 0.25
  want = 0.25 / total * x + s * 0.5 / np.sqrt(total) * (x / np.sqrt(total) + np.log(s) / 4)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="must return its input's shape"):
    pc.edm_denoiser(lambda u, t: u[..., :0])(x, 1.0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sigma_and_timestep_round_trip_and_agree_with_the_samplers_map(name):
  schedule = schedules.make(name, 1000)
  table = np.sqrt((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
  t = np.concatenate([np.arange(0, 1000, 37.0), np.linspace(0.25, 998.75, 41)])
  with jax.enable_x64(True):
    sigma = np.asarray(pc.sigma_of_timestep(t, schedule=schedule))
    back = np.asarray(pc.timestep_of_sigma(sigma, schedule=schedule))
    at_steps = np.asarray(pc.timestep_of_sigma(table, schedule=schedule))
    # beyond the table's ends t clamps to 0 and T − 1, as diffusers' _sigma_to_t does
    outside = np.array([table[0] / 3, table[-1] * 3])
    clamped = np.asarray(pc.timestep_of_sigma(outside, schedule=schedule))
  np.testing.assert_allclose(sigma[t % 1 == 0], table[t[t % 1 == 0].astype(int)], rtol=1e-12)
  np.testing.assert_allclose(back, t, atol=1e-9)
  np.testing.assert_allclose(at_steps, np.arange(1000), atol=1e-9)
  np.testing.assert_array_equal(clamped, [0.0, 999.0])
  # the samplers' NumPy map (searchsorted, not interp) gives the same fractional times
  probe = np.concatenate([sigma, outside])
  np.testing.assert_allclose(
    np.concatenate([back, clamped]), sigma_to_t(probe, np.log(table)), atol=1e-9
  )
  # traced σ in float32: the same map to float32 rounding of log σ
  t32 = jax.jit(lambda s: pc.timestep_of_sigma(s, schedule=schedule))(sigma.astype(np.float32))
  np.testing.assert_allclose(t32, t, atol=2e-2)


def _single_point_model(schedule, x0_star, prediction):
  """The optimal model when the data is the single point x0*: ε = (x_t − √ᾱ x0*)/√(1 − ᾱ), with
  ᾱ at fractional t from log σ interpolated linearly between training steps (written here
  apart from jaxdiff's map)."""
  alphas_cumprod = schedule.alphas_cumprod
  log_sigma = 0.5 * np.log((1 - alphas_cumprod) / alphas_cumprod)

  def model(x_t, t):
    assert t.shape == (x_t.shape[0],)
    log_s = jnp.interp(t, jnp.arange(len(log_sigma), dtype=t.dtype), log_sigma.astype(t.dtype))
    a = (1 / (1 + jnp.exp(2 * log_s)))[:, None, None, None]
    eps = (x_t - jnp.sqrt(a) * x0_star) / jnp.sqrt(1 - a)
    if prediction == "epsilon":
      return eps
    if prediction == "x0":
      return jnp.broadcast_to(x0_star, x_t.shape)
    return jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0_star  # v

  return model


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_a_discrete_model_is_the_exact_denoiser_of_a_single_point(name, prediction):
  # E[x_0 | x_σ] = x0* for every x and σ: at the training steps' σ, between them (fractional t),
  # for any noise, in float64 to rounding and float32 to float32's.
  schedule = schedules.make(name, 1000)
  table = pc.train_sigmas(schedule)
  sigmas = np.concatenate([table[::97], np.geomspace(table[0], table[-1], 13)[1:-1]])
  x0_star = np.linspace(-0.9, 0.8, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
  noise = np.random.default_rng(0).standard_normal((len(sigmas),) + x0_star.shape)
  x = x0_star + sigmas[:, None, None, None, None] * noise
  with jax.enable_x64(True):
    model = _single_point_model(schedule, jnp.asarray(x0_star), prediction)
    D = pc.discrete_denoiser(model, schedule=schedule, prediction=prediction)
    got = np.stack([np.asarray(D(jnp.asarray(xi), s)) for xi, s in zip(x, sigmas)])
  np.testing.assert_allclose(got, np.broadcast_to(x0_star, got.shape), atol=1e-9)
  D32 = pc.discrete_denoiser(
    _single_point_model(schedule, jnp.asarray(x0_star, jnp.float32), prediction),
    schedule=schedule,
    prediction=prediction,
  )
  got32 = jax.jit(jax.vmap(D32))(jnp.asarray(x, jnp.float32), jnp.asarray(sigmas, jnp.float32))
  # x̂_0 = x − σ·ε̂ at σ up to ~160 (linear) or ~2e4 (cosine) keeps float32's rounding of
  # x ≈ σ·noise (~6e-8·3σ; measured ≤ 3.3e-7·(1 + σ)): the bound grows with σ
  error = np.abs(np.asarray(got32, np.float64) - x0_star).max(axis=(1, 2, 3, 4))
  assert np.all(error <= 1e-6 * (1 + sigmas)), error


def test_a_discrete_denoiser_drives_the_karras_euler_sampler():
  # Euler on dx/dσ = (x − D(x, σ))/σ over samplers.karras's grid (fractional t, Karras σ) must
  # be samplers.euler itself (which matches diffusers' EulerDiscreteScheduler).
  schedule = schedules.make("cosine", 1000)
  model = lambda x, t: 0.1 * x + 0.05 * jnp.sin(t / 100.0)[:, None, None, None]
  x_T = jax.random.normal(jax.random.key(2), (2, 4, 4, 1))
  options = {"num_steps": 7, "spacing": "linspace", "use_karras_sigmas": True}
  want = samplers.euler(model, schedule, x_T, prediction="v", **options)
  _, sigmas = karras.sigma_grid(schedule, **options)
  D = pc.discrete_denoiser(model, schedule=schedule, prediction="v")
  x = x_T * karras.init_noise_sigma(sigmas, "linspace")
  for sigma, sigma_next in itertools.pairwise(sigmas):
    x = x + (x - D(x, sigma)) / sigma * (sigma_next - sigma)
  np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


def test_what_a_discrete_denoiser_refuses():
  model = lambda x, t: x
  with pytest.raises(ValueError, match="full training schedule"):
    pc.discrete_denoiser(
      model, schedule=schedules.make("linear", 1000, respacing="50"), prediction="v"
    )
  with pytest.raises(ValueError, match="ε-prediction cannot be sampled"):
    pc.discrete_denoiser(
      model,
      schedule=schedules.make("linear", 1000, rescale_zero_terminal_snr=True),
      prediction="epsilon",
    )


def test_karras_sigmas_is_eq_5():
  s = pc.karras_sigmas(80.0, 0.002, 40)
  assert s[0] == pytest.approx(80.0, rel=1e-14) and s[-1] == pytest.approx(0.002, rel=1e-12)
  ramp = np.arange(40) / 39
  want = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(s, want, rtol=1e-14)
