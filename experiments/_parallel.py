"""Data parallelism for the experiments: one mesh axis ``"data"`` over every device.

The batch is sharded along its first axis, parameters and optimizer state are replicated; jit
then runs the same program on every device and XLA inserts the gradient all-reduce. With one
device (the default on CPU) every function here is the identity, so the single-device path is
the same code. Multi-host: call ``initialize_distributed()`` first in every process (behind a
flag), then ``jax.devices()`` spans all hosts and each host feeds the slice of the global batch
that lives on its devices (``shard_batch`` does this with
``jax.make_array_from_process_local_data``).

Test without accelerators: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed() -> None:
    """``jax.distributed.initialize()`` (reads the coordinator from the environment / TPU)."""
    jax.distributed.initialize()


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf fully replicated over ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def batch_multiple(mesh: Mesh) -> int:
    """Global batch sizes must be a multiple of this (the number of devices on the mesh)."""
    return mesh.devices.size


def shard_batch(x: Any, mesh: Mesh) -> Any:
    """Shards every leaf of a (global) batch along axis 0 over the ``"data"`` axis.

    Raises:
      ValueError: if a leaf's batch size is not a multiple of the number of devices.
    """
    n = batch_multiple(mesh)
    sharding = NamedSharding(mesh, PartitionSpec("data"))

    def put(a):
        if a.shape[0] % n:
            raise ValueError(
                f"shard_batch: batch size {a.shape[0]} is not a multiple of the {n} devices "
                "on the mesh; choose a batch size divisible by the device count"
            )
        if jax.process_count() == 1:
            return jax.device_put(a, sharding)
        per_host = a.shape[0] // jax.process_count()
        i = jax.process_index()
        local = np.asarray(a[i * per_host : (i + 1) * per_host])
        return jax.make_array_from_process_local_data(sharding, local, a.shape)

    return jax.tree.map(put, x)
