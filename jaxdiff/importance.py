"""Importance sampling of timesteps from a history of losses (Nichol & Dhariwal 2021, §3.3).

L_vlb's terms differ by orders of magnitude across t (the first few dominate), so uniform t gives
a noisy gradient. Drawing t with p_t ∝ √E[L_t²], estimated from the last K losses seen at each t,
and weighting each example by 1/(N·p_t) keeps the loss unbiased and lowers its variance. Until
every step has K losses recorded, t is uniform (weights 1); a floor of `uniform_prob` mixed into
p_t keeps every step reachable. The history is part of the train state, so it is checkpointed and
a resumed run draws the same timesteps as an uninterrupted one.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LossHistory:
  values: jax.Array  # (N, K) float32: the last K losses seen at each step, newest last
  counts: jax.Array  # (N,) int32: losses recorded per step, saturating at K


def init_history(num_timesteps: int, history_size: int = 10) -> LossHistory:
  if history_size < 1:
    raise ValueError(f"the loss history needs history_size ≥ 1, got {history_size}.")
  return LossHistory(
    values=jnp.zeros((num_timesteps, history_size), jnp.float32),
    counts=jnp.zeros((num_timesteps,), jnp.int32),
  )


def probabilities(history: LossHistory, *, uniform_prob: float = 0.001) -> jax.Array:
  """p_t ∝ √mean(L_t²) once every step holds a full history, mixed with uniform_prob/N; else 1/N."""
  num_timesteps, size = history.values.shape
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
  rms = jnp.sqrt(jnp.mean(jnp.square(history.values), axis=1))
  total = jnp.sum(rms)
  p = rms / jnp.where(total > 0, total, 1.0)
  p = (1 - uniform_prob) * p + uniform_prob / num_timesteps
  warmed_up = jnp.all(history.counts >= size) & (total > 0)
  return jnp.where(warmed_up, p, uniform)


def sample(key, history: LossHistory, batch_size: int, *, uniform_prob: float = 0.001):
  """(t, weights): t ~ p and the per-example weights 1/(N·p_t) that keep the loss unbiased."""
  p = probabilities(history, uniform_prob=uniform_prob)
  num_timesteps = p.shape[0]
  t = jax.random.choice(key, num_timesteps, (batch_size,), p=p)
  return t, 1.0 / (num_timesteps * p[t])


def update(history: LossHistory, t, losses) -> LossHistory:
  """Appends each example's loss to its step's history, in batch order, dropping the oldest."""

  def push(h, item):
    step, loss = item
    row = jnp.roll(h.values[step], -1).at[-1].set(loss.astype(jnp.float32))
    count = jnp.minimum(h.counts[step] + 1, h.values.shape[1])
    return LossHistory(h.values.at[step].set(row), h.counts.at[step].set(count)), None

  history, _ = jax.lax.scan(push, history, (t, jax.lax.stop_gradient(losses)))
  return history
