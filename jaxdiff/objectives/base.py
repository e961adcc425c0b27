"""What an objective is to the train step."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxdiff.diffusion import PREDICTIONS


@dataclasses.dataclass(frozen=True)
class Objective:
  # loss(key, networks, x0, *, t=None, weights=None) -> (scalar loss, per-example loss, metrics)
  loss: Callable
  # init_extra(params) -> {name: nnx.State}: parameter sets to keep besides params and EMA
  init_extra: Callable | None = None
  # update_extra(extra, params, step) -> extra, after each optimizer update (e.g. a target EMA)
  update_extra: Callable | None = None
  # init_params(params) -> params: the fresh run's starting parameters (and EMA) in place of the
  # random initialization, e.g. a distilled student's teacher weights; never called on resume
  init_params: Callable | None = None
  # what else the loss reads from the step, as keyword arguments of these names: 'step' (the
  # updates applied so far, for a curriculum), 'labels' (the batch's labels after label dropout,
  # or None; every network sees them unless called with another y, e.g. a guided teacher's null)
  # or 'frozen' (`frozen_params` below, as the step received them)
  context: tuple[str, ...] = ()
  # parameters of frozen helper networks the loss reads (LPIPS's), passed into the jitted step
  # as an argument rather than baked into its program as constants; never trained or checkpointed
  frozen_params: Any = None
  # {name of a top-level submodule: factor}: that submodule's optimizer updates are multiplied by
  # the factor (after Adam: its learning rate × factor), e.g. a GAN's discriminator's own rate
  update_scales: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class ObjectiveEntry:
  build: Callable  # build(config, schedule) -> Objective
  needs_learned_variance: bool = False  # the network must output a variance (model.learn_sigma)
  # the diffusion.prediction values it trains (preconditioning.STUDENT_PREDICTIONS adds the raw
  # network of a consistency model to the discrete ones)
  predictions: tuple[str, ...] = PREDICTIONS
  # build(config, schedule, teacher=...) gets the frozen EMA parameters of another run (read by
  # run.py), or None when a checkpoint holds them already and only their shapes matter
  needs_teacher: bool = False
  # the network it trains is a denoiser model(x, t, y) (else e.g. an autoencoder): must agree with
  # the network table's `Architecture.denoiser`
  trains_denoiser: bool = True
  # bound(config, schedule) -> fn(model, images, labels, key) -> per-example bits/dim for
  # --mode=eval; None: the diffusion bound (jaxdiff.likelihood)
  bound: Callable | None = None
  # check(config) raises ValueError for settings of the objective's own config section
  check: Callable | None = None
  # uses_lpips(config) -> True when the config asks for the LPIPS distance: run.py then loads the
  # network from `lpips.path` and the builder gets it as build(..., lpips=module)
  uses_lpips: Callable | None = None
  # trained_sigmas(config) -> the σ's (increasing, float64) the network was trained at last, for a
  # network that knows only those (consistency training): the consistency sampler's default σ's
  # move onto them
  trained_sigmas: Callable | None = None
  # (name, {key: default}) of a config section only this objective reads (flow matching's `flow.*`):
  # config.default_config builds the section from it, and a config of another objective that sets
  # one of its keys away from its default is refused (the key would be ignored)
  section: tuple[str, dict] | None = None
