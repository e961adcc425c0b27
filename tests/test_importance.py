"""Importance sampling of timesteps from a loss history (improved DDPM §3.3) against its rules."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import importance


def adm_history(num_timesteps, size, pushes):
  """The rule as the paper's code states it, in plain Python: per step, the last `size` losses."""
  rows = [collections.deque(maxlen=size) for _ in range(num_timesteps)]
  for t, loss in pushes:
    rows[t].append(loss)
  return rows


def test_update_keeps_the_last_k_losses_per_step_in_order():
  rng = np.random.default_rng(0)
  t = rng.integers(0, 5, 40)
  losses = rng.uniform(0, 3, 40).astype(np.float32)
  history = importance.update(importance.init_history(5, 3), jnp.asarray(t), jnp.asarray(losses))
  expected = adm_history(5, 3, zip(t, losses))
  for step, row in enumerate(expected):
    assert int(history.counts[step]) == len(row)
    # a full row holds exactly the deque (oldest first); a short one ends with it
    np.testing.assert_array_equal(np.asarray(history.values[step])[3 - len(row) :], list(row))


def test_uniform_until_every_step_has_a_full_history():
  history = importance.init_history(4, 2)
  history = importance.update(history, jnp.array([0, 0, 1, 1, 2, 2, 3]), jnp.ones(7) * 5)
  np.testing.assert_array_equal(importance.probabilities(history), np.full(4, 0.25, np.float32))
  t, w = importance.sample(jax.random.key(0), history, 8)
  np.testing.assert_array_equal(w, np.ones(8))


def test_probabilities_follow_the_root_mean_square_loss():
  values = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0], [6.0, 8.0]], np.float32)
  history = importance.LossHistory(jnp.asarray(values), jnp.full((4,), 2, jnp.int32))
  rms = np.sqrt((values**2).mean(1))
  expected = 0.999 * rms / rms.sum() + 0.001 / 4
  # float32 sums of four terms: a few ulps
  np.testing.assert_allclose(importance.probabilities(history), expected, rtol=1e-6)


def test_draws_follow_p_and_weights_keep_the_loss_unbiased():
  values = np.array([[1.0], [3.0], [0.0], [12.0]], np.float32)
  history = importance.LossHistory(jnp.asarray(values), jnp.ones((4,), jnp.int32))
  p = np.asarray(importance.probabilities(history))
  n = 200_000
  t, w = importance.sample(jax.random.key(1), history, n)
  t, w = np.asarray(t), np.asarray(w)
  freq = np.bincount(t, minlength=4) / n
  # binomial standard errors √(p(1−p)/n) ≤ 1.2e-3; 5σ
  np.testing.assert_allclose(freq, p, atol=6e-3)
  np.testing.assert_allclose(w, 1 / (4 * p[t]), rtol=1e-6)
  # E_p[w·f(t)] = Σ_t p_t·w_t·f(t) = mean_t f(t) for any f: the weighted loss is unbiased
  assert set(t) == {0, 1, 2, 3}
  w_of_t = np.array([w[t == k][0] for k in range(4)])
  f = np.array([2.0, -1.0, 5.0, 0.5])
  np.testing.assert_allclose(np.sum(p * w_of_t * f), f.mean(), rtol=1e-6)


def test_history_size_must_be_positive():
  with pytest.raises(ValueError, match="history_size"):
    importance.init_history(10, 0)
