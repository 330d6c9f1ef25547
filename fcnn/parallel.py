"""Data parallelism with `jax.sharding`: a Mesh over the batch axis, parameters replicated.

The train step stays the ordinary jitted step (`fcnn.train.make_step(..., mesh=mesh)`): its
inputs arrive placed — parameters and optimizer state replicated on every device, each batch
split along its first axis — and XLA's SPMD partitioner turns the batch mean in the loss into
per-device partial sums plus an all-reduce. The values are those of the single-device step
(up to the order of that sum); only where they are computed changes.

    mesh = parallel.batch_mesh(4)                  # the first 4 of jax.devices()
    params, opt_state = parallel.replicate(mesh, (params, opt_state))
    x, y = parallel.shard_batch(mesh, x, y)        # x.shape[0] / 4 rows on each device

Multi-host: call `jax.distributed.initialize()` first in every process; `batch_mesh()` then
spans the devices of all processes, and each process keeps its devices' rows of the batch
(docs/training.md, "Many devices" and "Multi-host"; `scripts/train.py --distributed`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def batch_mesh(devices: int | list | None = None) -> Mesh:
    """A one-axis Mesh named "batch" over `devices`: a list of devices, a count (the first N
    of `jax.devices()`) or None (all of them, across every process)."""
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, bool) or not isinstance(devices, int | list | tuple):
        raise TypeError(f"batch_mesh: `devices` must be an int, a list of devices or None, "
                        f"got {type(devices).__name__}.")
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            hint = (" On CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N (set before "
                    "jax is imported) splits the host into N devices."
                    if available[0].platform == "cpu" else "")
            raise ValueError(f"batch_mesh: asked for {devices} devices, but jax.devices() has "
                             f"{len(available)} ({available[0].platform}).{hint}")
        chosen = available[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("batch_mesh: `devices` is an empty list.")
    return Mesh(np.array(chosen), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that splits axis 0 over the mesh's "batch" axis."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(mesh: Mesh, tree):
    """Put every leaf of `tree` on every device of `mesh` (parameters, optimizer state)."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(mesh: Mesh, *arrays):
    """Split each array's first axis evenly over the mesh and return them as a tuple.

    The arrays are the global batch. A batch whose size the device count does not divide (e.g.
    an epoch's last partial batch) is replicated instead: every device computes it whole, so the
    step's value is unchanged. With several processes (`jax.distributed.initialize`), every
    process passes the same global batch and keeps only its devices' rows — what
    scripts/train.py does, since its batches are a seeded permutation. A process that holds
    only its own rows builds the array with `jax.make_array_from_process_local_data(
    batch_sharding(mesh), rows)` instead.
    """
    arrays = [a if isinstance(a, jax.Array) else np.asarray(a) for a in arrays]
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(f"shard_batch: array {i} is a scalar; a batch needs a leading axis.")
    size = mesh.devices.size
    return tuple(jax.device_put(a, batch_sharding(mesh) if a.shape[0] % size == 0
                                else replicated(mesh)) for a in arrays)
