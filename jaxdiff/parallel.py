"""Device mesh and shardings. One code path for 1 CPU, N local devices and multi-host pods.

The mesh has two axes, `data` × `fsdp`. The batch is split over both. Parameters, their EMA and
the optimizer state are split along `fsdp` (fully sharded data parallelism, ZeRO-3 style): each
array's dimensions get logical names, and `LOGICAL_AXIS_RULES` maps logical names to mesh axes.
A network may name them on its parameters (`nnx.Param` metadata `logical_axes`, e.g. the DiT's
("embed", "mlp")); otherwise they follow from what the array is (a convolution kernel, a dense
kernel, an embedding table, a vector).
XLA's SPMD partitioner then gathers each layer's weights where they are used and reduce-scatters
their gradients, so a model larger than one device's memory trains. With fsdp = 1 (the default)
everything is replicated and this is plain data parallelism.

Axes are Auto so XLA's sharding propagation places intermediates (JAX ≥ 0.10's `jax.make_mesh`
defaults to Explicit axes, which would require annotating every op).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
BATCH = (DATA, FSDP)  # the batch dimension is split over every device

# logical axis → mesh axis, first match wins per array: the output channels of every layer are
# split over `fsdp`; where they do not divide evenly, the input channels are tried instead. A
# transformer's attention heads and MLP width are split before its embedding width (Megatron's
# choice: q/k/v and fc1 by output, the attention output and fc2 by input).
LOGICAL_AXIS_RULES = (
  ("heads", FSDP),
  ("mlp", FSDP),
  ("embed", FSDP),
  ("channels_out", FSDP),
  ("channels_in", FSDP),
  ("vocab", None),
  ("kernel_height", None),
  ("kernel_width", None),
)
# arrays smaller than this stay replicated: splitting a bias costs more in collectives than it saves
MIN_SHARDED_SIZE = 4096


# environment variables by which JAX's own cluster detection finds a multi-process job
_CLUSTER_HINTS = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins this process to a multi-process JAX job, before any device is touched.

  With a coordinator address (GPU clusters, several CPU processes) the three values are passed to
  `jax.distributed.initialize`; CPU processes then exchange collectives over gloo (TCP). Without
  one, JAX's automatic detection runs when the environment names a cluster of more than one
  process (a multi-host TPU slice, SLURM, Open MPI); otherwise this is a single-process run.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id as well.")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id {process_id} must lie in [0, {num_processes}).")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  several = "," in hosts or any(
    os.environ.get(name, "1").isdigit() and int(os.environ.get(name, "1")) > 1
    for name in _CLUSTER_HINTS[1:]
  )
  if several:
    jax.distributed.initialize()


def make_mesh(num_devices: int | None = None, *, fsdp: int = 1) -> Mesh:
  """A `data` × `fsdp` mesh over the first `num_devices` devices (all of them by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"asked for {num_devices} devices but {len(devices)} are visible.")
    devices = devices[:num_devices]
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"fsdp={fsdp} must divide the number of devices ({len(devices)}).")
  grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all devices."""
  return NamedSharding(mesh, P(BATCH))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
  """(steps, batch, …) arrays: steps whole, the batch split over all devices."""
  return NamedSharding(mesh, P(None, BATCH))


def logical_axes(path, shape) -> tuple[str | None, ...]:
  """Logical names of an array's dimensions, from its name in the state tree and its rank."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  if "loss_history" in names:  # indexed by sampled timesteps every step: kept whole
    return (None,) * len(shape)
  if "embedding" in names and len(shape) == 2:
    return ("vocab", "channels_out")
  if len(shape) == 4:  # HWIO convolution kernel
    return ("kernel_height", "kernel_width", "channels_in", "channels_out")
  if len(shape) == 2:
    return ("channels_in", "channels_out")
  if len(shape) == 1:
    return ("channels_out",)
  return (None,) * len(shape)


def spec_for(path, shape, mesh: Mesh, rules=LOGICAL_AXIS_RULES, *, axes=None) -> P:
  """The PartitionSpec of one array under `rules`: one dimension split over one mesh axis.
  `axes` are the array's logical names when its parameter states them, else they are derived."""
  if int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
    return P()
  if axes is None or len(axes) != len(shape):
    axes = logical_axes(path, shape)
  for logical, mesh_axis in rules:
    if mesh_axis is None or mesh.shape[mesh_axis] == 1:
      continue
    for dim, name in enumerate(axes):
      if name == logical and shape[dim] % mesh.shape[mesh_axis] == 0:
        spec = [None] * len(shape)
        spec[dim] = mesh_axis
        return P(*spec)
  return P()


def state_shardings(mesh: Mesh, tree, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for every array of a train state (params, EMA, optimizer state, …).

  Parameter metadata travels with the optimizer's moments (optax maps over the same `nnx.Param`
  variables), so Adam's μ and ν of a weight are split as the weight is."""
  named = {
    path: variable.get_metadata().get("logical_axes")
    for path, variable in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    if isinstance(variable, nnx.Variable)
  }
  # a variable's array sits one step below it in the tree (its `.value`)
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(
      mesh, spec_for(path, np.shape(x), mesh, rules, axes=named.get(path[:-1]))
    ),
    tree,
  )


def global_from_host(array, sharding: NamedSharding) -> jax.Array:
  """An array that every process holds whole and alike (labels of a sample batch, an eval batch
  read by every process) as a global `jax.Array` laid out by `sharding`: each process places only
  the rows its own devices hold, so no process reads or sends another's."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put(tree, shardings):
  """Places a tree that every process holds alike (a fresh state, frozen weights that each process
  read) with `shardings`, one sharding or a tree of them. One process: `jax.device_put`. Several:
  through host memory, each process placing its own devices' parts (device_put cannot move an
  array committed to one device of each process onto the devices of the others)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda a, s: global_from_host(a, s), tree, shardings)


def to_host(array: jax.Array) -> np.ndarray:
  """A global array, whole, as NumPy on every process (the allgather of JAX's multihost
  utilities; a plain copy on one process)."""
  if array.is_fully_addressable:
    return np.asarray(array)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def padded_batch(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the mesh's device count that holds `batch_size` rows."""
  devices = mesh.devices.size
  return -(-batch_size // devices) * devices


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if batch_size % devices or batch_size % jax.process_count():
    raise ValueError(
      f"batch size {batch_size} must be divisible by the {devices} devices and "
      f"{jax.process_count()} processes of the mesh; change data.batch_size."
    )
