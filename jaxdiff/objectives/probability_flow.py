"""--mode=eval's bits/dim through the probability-flow ODE (jaxdiff.likelihood_ode), from the
`eval.ode_*` keys: a flow model's bound in the objective table (it has no variational bound), and
what `eval.ode_bits_per_dim=True` reports beside a diffusion model's VLB."""

from __future__ import annotations

import jax
from flax import nnx

from jaxdiff import likelihood_ode


def check(config) -> None:
  """ValueError for `eval.ode_*` values the ODE cannot use."""
  e = config.eval
  if e.ode_divergence not in likelihood_ode.DIVERGENCES:
    raise ValueError(
      f"eval.ode_divergence must be one of {list(likelihood_ode.DIVERGENCES)}, got "
      f"{e.ode_divergence!r}."
    )
  if e.ode_solver not in likelihood_ode.SOLVERS:
    raise ValueError(
      f"eval.ode_solver must be one of {list(likelihood_ode.SOLVERS)}, got {e.ode_solver!r}."
    )
  if e.ode_probes < 1:
    raise ValueError(f"eval.ode_probes must be at least 1, got {e.ode_probes}.")
  if e.ode_divergence == "exact" and e.ode_probes != 1:
    raise ValueError(
      f"eval.ode_probes={e.ode_probes} has no effect with eval.ode_divergence='exact', which "
      "draws no probes; set eval.ode_probes=1 or a Hutchinson estimator (rademacher, gaussian)."
    )
  if not (e.ode_rtol > 0 and e.ode_atol > 0):
    raise ValueError(
      f"eval.ode_rtol and eval.ode_atol must be > 0, got {e.ode_rtol}, {e.ode_atol}."
    )
  if e.ode_steps < 1:
    raise ValueError(f"eval.ode_steps (rk4's steps) must be at least 1, got {e.ode_steps}.")


def bound(config, schedule):
  """fn(model, images, labels, key) -> (B, K) bits/dim of each image under the model's
  probability-flow ODE, one column per Hutchinson probe (one for the exact divergence).

  A class-conditional model is scored as p(x | y) with the true labels, without guidance.
  """
  e, prediction = config.eval, config.diffusion.prediction
  options = {
    "divergence": e.ode_divergence,
    "num_probes": e.ode_probes,
    "solver": e.ode_solver,
    "rtol": e.ode_rtol,
    "atol": e.ode_atol,
    "num_steps": e.ode_steps,
  }

  def per_example(model, images, labels, key):
    graphdef, state = nnx.split(model)

    def network(x, t):
      # bound afresh at each call, in the ODE loop's trace (remat'ed blocks write into it)
      return nnx.merge(graphdef, jax.tree.map(lambda v: v, state))(x, t, labels)

    ode = likelihood_ode.model_ode(network, prediction=prediction, schedule=schedule)
    bits, solution = likelihood_ode.ode_bits_per_dim(key, ode, images, **options)
    return jax.numpy.where(solution.success, bits, jax.numpy.nan)

  return per_example
