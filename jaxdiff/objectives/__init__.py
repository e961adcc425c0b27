"""The objective table: `diffusion.loss` → what the train step minimizes.

The train step knows no loss by name. It builds the objective from this table once and calls

    loss(key, networks, x0, *, t=None, weights=None) -> (loss, per-example loss, metrics)

where `networks` maps names to model functions `fn(x, t)`: 'model' is the network being trained
and every extra parameter set the objective keeps (`init_extra`) is there under its own name (a
frozen teacher, a target network); each sees the batch's labels unless called as fn(x, t, y).
`t` and `weights` come from importance sampling when the run uses it; the step number and the
labels come as `step=` and `labels=` to an objective that names them in `Objective.context`.
Adding an objective is a new module with a builder `build(config, schedule) -> Objective`
plus one entry in `OBJECTIVES`.
"""

from __future__ import annotations

from jaxdiff import flow, preconditioning
from jaxdiff.objectives import autoencoder, consistency, flow_matching, gan, probability_flow
from jaxdiff.objectives.base import Objective, ObjectiveEntry
from jaxdiff.objectives.denoising import hybrid, mse, vlb

OBJECTIVES: dict[str, ObjectiveEntry] = {
  "mse": ObjectiveEntry(mse),
  "hybrid": ObjectiveEntry(hybrid, needs_learned_variance=True),
  "vlb": ObjectiveEntry(vlb, needs_learned_variance=True),
  # the first stage of latent diffusion: reconstruction + β·KL of model.arch='autoencoder'
  "autoencoder": ObjectiveEntry(
    autoencoder.autoencoder,
    trains_denoiser=False,
    bound=autoencoder.bound,
    check=autoencoder.check,
    uses_lpips=autoencoder.uses_lpips,
  ),
  # a GAN (model.arch='gan'): non-saturating or hinge loss, R1, the discriminator's own rate
  "gan": ObjectiveEntry(gan.gan, trains_denoiser=False, bound=gan.no_bound, check=gan.check),
  # consistency models (objectives/consistency.py): distilled from a teacher run, or trained alone
  "consistency_distillation": ObjectiveEntry(
    consistency.consistency_distillation,
    needs_teacher=True,
    bound=consistency.no_bound,
    check=consistency.check,
    uses_lpips=consistency.uses_lpips,
  ),
  "consistency_training": ObjectiveEntry(
    consistency.consistency_training,
    predictions=preconditioning.STUDENT_PREDICTIONS,
    bound=consistency.no_bound,
    check=consistency.check_training,
    uses_lpips=consistency.uses_lpips,
    trained_sigmas=consistency.ct_trained_sigmas,
  ),
  "improved_consistency_training": ObjectiveEntry(
    consistency.improved_consistency_training,
    predictions=preconditioning.STUDENT_PREDICTIONS,
    bound=consistency.no_bound,
    check=consistency.check_training,
    uses_lpips=consistency.uses_lpips,
    trained_sigmas=consistency.ict_trained_sigmas,
  ),
  # flow matching (objectives/flow_matching.py): velocity of the straight path, SD3's/Flux's σ's
  "flow_matching": ObjectiveEntry(
    flow_matching.flow_matching,
    predictions=(flow.PREDICTION,),
    bound=probability_flow.bound,  # bits/dim through the probability-flow ODE
    check=flow_matching.check,
    section=("flow", flow_matching.DEFAULTS),
  ),
}


def uses_lpips(config) -> bool:
  """Whether the objective of `config` asks for the LPIPS network (`lpips.path`)."""
  entry = OBJECTIVES.get(config.diffusion.loss)
  return bool(entry and entry.uses_lpips and entry.uses_lpips(config))


def trained_sigmas(config):
  """The σ's the network of `config`'s objective was last trained at when it knows only those
  (`ObjectiveEntry.trained_sigmas`), else None."""
  entry = OBJECTIVES.get(config.diffusion.loss)
  return entry.trained_sigmas(config) if entry and entry.trained_sigmas else None


def build(config, schedule, *, teacher=None, lpips=None) -> Objective:
  """The objective `config.diffusion.loss` names; an entry that `needs_teacher` gets `teacher`,
  one that `uses_lpips` the LPIPS module `lpips` (None: shapes only matter, e.g. in tests)."""
  name = config.diffusion.loss
  if name not in OBJECTIVES:
    raise ValueError(f"diffusion.loss must be one of {list(OBJECTIVES)}, got {name!r}.")
  entry, kwargs = OBJECTIVES[name], {}
  if entry.needs_teacher:
    kwargs["teacher"] = teacher
  if uses_lpips(config):
    kwargs["lpips"] = lpips
  return entry.build(config, schedule, **kwargs)


__all__ = ["OBJECTIVES", "Objective", "ObjectiveEntry", "build", "trained_sigmas", "uses_lpips"]
