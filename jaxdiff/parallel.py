"""Device mesh and shardings. One code path for 1 CPU, N local devices and multi-host pods.

The mesh has a single `data` axis today: the batch is split along it, parameters are replicated.
Axes are Auto so XLA's sharding propagation places intermediates (JAX ≥ 0.10's `jax.make_mesh`
defaults to Explicit axes, which would require annotating every op).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D `data` mesh over the first `num_devices` devices (all of them by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"asked for {num_devices} devices but {len(devices)} are visible.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if batch_size % devices or batch_size % jax.process_count():
    raise ValueError(
      f"batch size {batch_size} must be divisible by the {devices} devices and "
      f"{jax.process_count()} processes of the mesh; change data.batch_size."
    )
