"""What an objective is to the train step."""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Objective:
  # loss(key, networks, x0, *, t=None, weights=None) -> (scalar loss, per-example loss, metrics)
  loss: Callable
  # init_extra(params) -> {name: nnx.State}: parameter sets to keep besides params and EMA
  init_extra: Callable | None = None
  # update_extra(extra, params, step) -> extra, after each optimizer update (e.g. a target EMA)
  update_extra: Callable | None = None


@dataclasses.dataclass(frozen=True)
class ObjectiveEntry:
  build: Callable  # build(config, schedule) -> Objective
  needs_learned_variance: bool = False  # the network must output a variance (model.learn_sigma)
