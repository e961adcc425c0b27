"""What a network costs, from shapes alone: its parameter count and forward Gflops per example.

Nothing is allocated or compiled. The network is built with `nnx.eval_shape` (parameters are
jax.ShapeDtypeStructs), its forward pass at batch 1 is traced and lowered to XLA on such shapes,
and XLA's cost analysis of that lowered (unoptimized) program counts its floating-point operations
(on CUDA GPUs, whose PJRT plugin cannot analyse an uncompiled program, the forward pass at batch 1
is compiled, still on shapes, and the compiled program is counted).
Papers count a multiply-add as one flop (the DiT paper's Gflops, most "FLOPs" of vision models),
XLA as two, hence the halving; element-wise work (norms, activations, softmax) is counted too,
which adds well under 1% for the DiTs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models import table


@dataclasses.dataclass(frozen=True)
class NetworkCost:
  trainable_parameters: int  # what jaxdiff trains and checkpoints
  # constants the reference implementation stores as (frozen) parameters and jaxdiff recomputes,
  # e.g. the DiT's position embedding: counted so that `parameters` is the published figure
  fixed_parameters: int
  gflops: float  # one forward pass of one example, a multiply-add counted once

  @property
  def parameters(self) -> int:
    return self.trainable_parameters + self.fixed_parameters


def forward_gflops(module: nnx.Module, spec: table.NetworkSpec, *, denoiser: bool = True) -> float:
  """Gflops of `module`'s forward pass on one example of `spec`, dropout off (`module` may be
  shapes only): model(x, t, y), with t and y None for a network that is no denoiser (the
  autoencoder: `Architecture.denoiser`) and y None for an unconditional spec; a network whose
  forward takes other inputs says which with `example_inputs(spec)` (the GAN: its generator's
  latents, the pass that sampling runs)."""
  module.eval()  # dropout's random bits would count as flops
  graphdef, state = nnx.split(module)
  size, channels = spec.image_size, spec.in_channels
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  scalar = jax.ShapeDtypeStruct((1,), jnp.int32)
  t = scalar if denoiser else None
  args = (x, t, scalar if denoiser and spec.num_classes is not None else None)
  if hasattr(module, "example_inputs"):
    args = module.example_inputs(spec)

  def forward(state, *args):
    return nnx.merge(graphdef, state)(*args)

  lowered = jax.jit(forward).lower(state, *args)
  cost = lowered.cost_analysis()
  if cost is None:
    # Backends reached through a PJRT plugin (CUDA GPUs) have no analysis of unoptimized HLO:
    # count the compiled program there (XLA's fusions leave the flops of dots and convolutions).
    cost = lowered.compile().cost_analysis()
  return float(cost["flops"]) / 2 / 1e9


def network_cost(model: Mapping[str, Any], spec: table.NetworkSpec) -> NetworkCost:
  """The cost of the network a run's `model` section describes, on the diffusion space `spec`."""
  module = table.abstract(model, spec)
  params = nnx.state(module, nnx.Param)
  fixed = getattr(module, "fixed_parameter_count", None)  # only networks that have such constants
  return NetworkCost(
    trainable_parameters=int(table.parameter_count(params)),
    fixed_parameters=int(fixed()) if fixed is not None else 0,
    gflops=forward_gflops(module, spec, denoiser=table.architecture(model["arch"]).denoiser),
  )
