"""Euler, Heun and ancestral Euler in σ space against diffusers' schedulers (stored by
tests/make_karras_reference.py): final samples, trajectories and the model's call times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import relative_error
from sampler_reference import load, toy_model

from jaxdiff import schedules
from jaxdiff.samplers import karras

REF, CASES = load("karras")
SAMPLERS = {"euler": karras.euler, "heun": karras.heun, "euler_ancestral": karras.euler_ancestral}


def parse(name):
  """'euler_ancestral_linear_trailing_karras0_v' → ('euler_ancestral', 'linear', …, False, 'v')."""
  sampler = "euler_ancestral" if name.startswith("euler_ancestral") else name.split("_")[0]
  schedule, spacing, karras_flag, prediction = name[len(sampler) + 1 :].split("_")
  return sampler, schedule, spacing, karras_flag == "karras1", prediction


def sample_case(name, dtype):
  """(trajectory, model-call times) of jaxdiff's sampler on a reference case."""
  sampler, schedule, spacing, use_karras, prediction = parse(name)
  calls = []
  extra = {}
  if sampler == "euler_ancestral":
    extra["noise"] = jnp.asarray(REF[f"{name}/noise"], dtype)
  trajectory = SAMPLERS[sampler](
    toy_model(calls=calls),
    schedules.make(schedule),
    jnp.asarray(REF["x_T"], dtype),
    num_steps=REF[f"f32/{name}/trajectory"].shape[0],
    spacing=spacing,
    use_karras_sigmas=use_karras,
    prediction=prediction,
    return_trajectory=True,
    **extra,
  )
  jax.effects_barrier()
  return np.asarray(trajectory), np.array(calls)


@pytest.fixture(scope="module")
def runs():
  """Every case in float32 and float64, run once for the tests below."""
  out = {}
  for name in CASES:
    out["f32", name] = sample_case(name, jnp.float32)
    with jax.enable_x64(True):
      trajectory, calls = sample_case(name, jnp.float64)
      assert trajectory.dtype == np.float64
      out["f64", name] = trajectory, calls
  return out


@pytest.mark.parametrize("name", CASES)
def test_float32_matches_diffusers(runs, name):
  got, _ = runs["f32", name]
  ref, wide = REF[f"f32/{name}/trajectory"], REF[f"f64/{name}/trajectory"]
  assert got.shape == ref.shape and got.dtype == np.float32
  # Both step in float32; jaxdiff's σ grid is float64 rounded once, diffusers' comes from float32
  # ᾱ, whose 1 − ᾱ near t = 0 (σ_min) and 1 − β at cosine's β = 0.999 (σ_max ≈ 2e4) keep only a
  # few digits. Most cases agree to ≲ 3e-6; where that float32 table (x0 prediction, cosine) or
  # float32 cancellation (cosine's first step from σ_max) dominates, diffusers' own float32 run is
  # as far from its float64 run (≤ 2e-4), and jaxdiff may be twice as far from either.
  own_error = relative_error(ref[-1], wide[-1])
  bound = max(1e-5, 2 * own_error)
  assert relative_error(got[-1], ref[-1]) <= bound
  assert relative_error(got[-1], wide[-1]) <= bound


@pytest.mark.parametrize("name", CASES)
def test_float64_matches_diffusers(runs, name):
  got, _ = runs["f64", name]
  ref = REF[f"f64/{name}/trajectory"]
  assert got.shape == ref.shape
  # Same float64 σ grid and step algebra on both sides: only reassociation differs (≤ 1e-13).
  assert relative_error(got, ref) <= 1e-9
  assert relative_error(got[-1], ref[-1]) <= 1e-9


@pytest.mark.parametrize("name", CASES)
def test_model_is_called_at_diffusers_timesteps(runs, name):
  _, calls64 = runs["f64", name]
  _, calls32 = runs["f32", name]
  ref64, ref32 = REF[f"f64/{name}/calls"], REF[f"f32/{name}/calls"]
  # Heun: 2n − 1 calls (the last step is Euler alone).
  assert calls64.shape == calls32.shape == ref64.shape == ref32.shape
  np.testing.assert_allclose(calls64, ref64, rtol=0, atol=1e-6)
  if parse(name)[3]:
    # Karras times come from log σ, which diffusers' float32 ᾱ shifts (by up to 0.03 in these
    # cases); jaxdiff's float32 times are the float64 ones rounded, within one float32 ulp.
    ulp = np.spacing(np.abs(ref64).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(calls32 - ref64) <= ulp)
  else:
    np.testing.assert_allclose(calls32, ref32, rtol=0, atol=1e-6)


def test_grid_ends_and_init_noise_sigma():
  schedule = schedules.make("linear")
  sigma = np.sqrt((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
  t, s = karras.sigma_grid(schedule, num_steps=7, spacing="trailing", use_karras_sigmas=True)
  assert t.shape == (7,) and s.shape == (8,) and s[-1] == 0.0
  # Karras σ span the spacing's own first and last σ (trailing ends at t = 142, not 0).
  np.testing.assert_allclose([s[0], s[-2]], [sigma[999], sigma[142]], rtol=1e-12)
  np.testing.assert_allclose([t[0], t[-1]], [999, 142], atol=1e-6)
  assert karras.init_noise_sigma(s, "trailing") == s[0]
  assert karras.init_noise_sigma(s, "leading") == pytest.approx(np.sqrt(s[0] ** 2 + 1))
  for n in (61, 103, 998):  # diffusers' trailing grid has n + 1 steps for these
    assert karras.sigma_timesteps(1000, n, "trailing").shape == (n,)
    assert karras.sigma_timesteps(1000, n, "trailing").min() >= 0


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_predictions_agree_for_one_model(sampler):
  # The toy ε-model rewritten as an x0- and a v-model through ᾱ at its (integer, 'leading')
  # times gives the same samples: checks the σ-space conversions, including the ancestral
  # sampler's 'x0', which diffusers does not implement.
  schedule = schedules.make("linear")
  with jax.enable_x64(True):
    abar = jnp.asarray(schedule.alphas_cumprod)
    x_T = jnp.asarray(REF["x_T"])
    noise = jnp.asarray(jax.random.normal(jax.random.key(0), (5, *x_T.shape), jnp.float64))

    def eps_model(x, t):
      return 0.1 * x + 0.05 * jnp.sin(t / 100.0)[:, None, None, None]

    def converted(prediction):
      def model(x, t):
        a = abar[t.astype(jnp.int32)][:, None, None, None]
        eps = eps_model(x, t)
        x0 = (x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
        return x0 if prediction == "x0" else jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0

      return model

    extra = {"noise": noise} if sampler == "euler_ancestral" else {}
    run = lambda model, prediction: SAMPLERS[sampler](
      model, schedule, x_T, num_steps=5, prediction=prediction, **extra
    )
    ref = run(eps_model, "epsilon")
    for prediction in ("x0", "v"):
      assert relative_error(run(converted(prediction), prediction), ref) < 1e-9


def test_ancestral_key_draws_are_reproducible_and_jit_compatible():
  schedule = schedules.make("linear", 100)
  x_T = jax.random.normal(jax.random.key(3), (2, 4, 4, 1))
  model = lambda x, t: 0.1 * x
  run = lambda key: karras.euler_ancestral(model, schedule, x_T, num_steps=5, key=key)
  a = run(jax.random.key(4))
  np.testing.assert_array_equal(a, run(jax.random.key(4)))
  assert relative_error(run(jax.random.key(5)), np.asarray(a)) > 1e-2
  jitted = jax.jit(lambda x, key: karras.euler_ancestral(model, schedule, x, num_steps=5, key=key))
  np.testing.assert_allclose(jitted(x_T, jax.random.key(4)), a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_argument_errors(sampler):
  schedule = schedules.make("linear", 100)
  x_T = jnp.zeros((1, 2, 2, 1))
  run = lambda **kw: SAMPLERS[sampler](lambda x, t: x, schedule, x_T, key=jax.random.key(0), **kw)
  if sampler != "euler_ancestral":
    run = lambda **kw: SAMPLERS[sampler](lambda x, t: x, schedule, x_T, **kw)
  with pytest.raises(ValueError, match="unknown spacing"):
    run(spacing="quadratic")
  with pytest.raises(ValueError, match="unknown prediction"):
    run(prediction="score")
  for num_steps in (0, 101):
    with pytest.raises(ValueError, match=r"num_steps must lie in \[1, 100\]"):
      run(num_steps=num_steps)
  with pytest.raises(TypeError, match="num_steps must be an integer"):
    run(num_steps=2.5)
  with pytest.raises(ValueError, match="full training schedule"):
    SAMPLERS[sampler](lambda x, t: x, schedules.respace(schedule, "ddim10"), x_T, num_steps=5)
  if sampler == "euler_ancestral":
    with pytest.raises(ValueError, match="pass key"):
      karras.euler_ancestral(lambda x, t: x, schedule, x_T, num_steps=5)
    with pytest.raises(ValueError, match="noise must have shape"):
      karras.euler_ancestral(lambda x, t: x, schedule, x_T, num_steps=5, noise=jnp.zeros((4, 1)))
