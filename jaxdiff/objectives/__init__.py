"""The objective table: `diffusion.loss` → what the train step minimizes.

The train step knows no loss by name. It builds the objective from this table once and calls

    loss(key, networks, x0, *, t=None, weights=None) -> (loss, per-example loss, metrics)

where `networks` maps names to model functions `fn(x, t)`: 'model' is the network being trained
and every extra parameter set the objective keeps (`init_extra`) is there under its own name (a
frozen teacher, a target network). `t` and `weights` come from importance sampling when the run
uses it. Adding an objective is a new module with a builder `build(config, schedule) -> Objective`
plus one entry in `OBJECTIVES`.
"""

from __future__ import annotations

from jaxdiff.objectives.base import Objective, ObjectiveEntry
from jaxdiff.objectives.denoising import hybrid, mse, vlb

OBJECTIVES: dict[str, ObjectiveEntry] = {
  "mse": ObjectiveEntry(mse),
  "hybrid": ObjectiveEntry(hybrid, needs_learned_variance=True),
  "vlb": ObjectiveEntry(vlb, needs_learned_variance=True),
}


def build(config, schedule) -> Objective:
  """The objective `config.diffusion.loss` names."""
  name = config.diffusion.loss
  if name not in OBJECTIVES:
    raise ValueError(f"diffusion.loss must be one of {list(OBJECTIVES)}, got {name!r}.")
  return OBJECTIVES[name].build(config, schedule)


__all__ = ["OBJECTIVES", "Objective", "ObjectiveEntry", "build"]
