"""The device mesh: parameters replicated, batches split along a `data` axis."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process) named `data`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def training_mesh(global_batch_size: int) -> Mesh:
    """The mesh that batches of `global_batch_size` train on: every device, except that the
    CPU devices of a single process (its cores, see `runtime.cpu_devices`) are cut down to
    the most that the batch divides by, so that any batch size runs on any core count."""
    devices = jax.devices()
    if (jax.process_count() > 1 or any(device.platform != "cpu" for device in devices)
            or not isinstance(global_batch_size, int) or global_batch_size < 1):  # a bad size: the config check's
        return make_mesh(devices)
    count = max(n for n in range(1, len(devices) + 1) if global_batch_size % n == 0)
    return make_mesh(devices[:count])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split across the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
    """A stack of batches [K, B, ...]: every device holds all K, split along B on `data`."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ValueError unless the global batch splits evenly over the mesh's devices."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"global batch size {global_batch_size} does not divide by the {devices} devices of "
            f"the mesh; choose a multiple of {devices} (e.g. --config.train.batch_size="
            f"{max(devices, global_batch_size // devices * devices)})"
        )


def global_batch(local_batch, mesh: Mesh, stacked: bool = False):
    """Turns this process's slice of a batch (a pytree of NumPy arrays) into global arrays
    sharded on `data`; with one process the local batch is the global batch. `stacked`: the
    arrays are stacks of batches [K, B_local, ...], split along their second axis."""
    sharding = stacked_batch_sharded(mesh) if stacked else batch_sharded(mesh)
    leaves = jax.tree_util.tree_leaves(local_batch)
    check_batch_size(leaves[0].shape[int(stacked)] * jax.process_count(), mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
