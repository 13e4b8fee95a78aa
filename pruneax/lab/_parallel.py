"""Data and model parallelism for experiments and users: one mesh axis ``"data"`` over every device.

The batch is sharded along its first axis, parameters and optimizer state are replicated; jit
then runs the same program on every device and XLA inserts the gradient all-reduce. With one
device (the default on CPU) every function here is the identity, so the single-device path is
the same code. Multi-host: call ``initialize_distributed()`` first in every process (behind a
flag), then ``jax.devices()`` spans all hosts and each host feeds the slice of the global batch
that lives on its devices (``shard_batch`` does this with
``jax.make_array_from_process_local_data``).

Parameter sharding (for the LLM): ``model_mesh(model=m)`` is a 2-D mesh ``("data", "model")``;
``llm_param_specs`` gives the Megatron-style specs of ``pruneax.models.partition_spec``
(column-parallel q / k / v / gate / up kernels and the LM head, row-parallel o / down kernels,
the embedding sharded along the vocabulary, norms replicated) and ``shard_params`` places
them. jit then partitions every matmul (GSPMD) and inserts the collectives; the batch stays
sharded along ``"data"`` only. Each device holds about 1/m of the projection weights.

Test without accelerators: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pruneax.weights import path_name


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """``jax.distributed.initialize``: joins this process to a multi-process run.

    Call it first in every process, before any other JAX call. With no arguments JAX reads the
    coordinator from the environment (TPU pods, SLURM, Open MPI); on one machine, or on hosts
    without such a cluster manager, give all three (every process the same address and count,
    its own id). On CPU the processes reduce gradients over gloo collectives.

    Args:
      coordinator_address: ``host:port`` of process 0 (None: auto-detected).
      num_processes: the number of processes (None: auto-detected).
      process_id: this process's id in ``[0, num_processes)`` (None: auto-detected).

    Raises:
      ValueError: if only some of the three are given, or the id is out of range.

    Example:
      >>> from pruneax import lab
      >>> callable(lab.initialize_distributed)  # not called here: one host
      True
    """
    given = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in given) and any(v is None for v in given):
        raise ValueError(
            "initialize_distributed: give coordinator_address, num_processes and process_id "
            f"together (or none of them); got {coordinator_address!r}, {num_processes!r}, "
            f"{process_id!r}"
        )
    if num_processes is not None and not (0 <= process_id < num_processes):
        raise ValueError(
            f"initialize_distributed: process_id must be in [0, {num_processes}); got {process_id}"
        )
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def to_host(tree: Any) -> Any:
    """Every array leaf of ``tree`` as a NumPy array holding the whole (global) value.

    In a multi-process run an array sharded over several processes' devices cannot be read
    with ``np.asarray`` (each process holds only its shards); such leaves are gathered from
    every process (``process_allgather``), so every process must call this together. On one
    process it is ``np.asarray``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import lab
      >>> lab.to_host({"a": jnp.arange(3)})["a"].tolist()
      [0, 1, 2]
    """
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all devices).

    Example:
      >>> import jax
      >>> from pruneax import lab
      >>> mesh = lab.data_mesh()
      >>> mesh.axis_names, mesh.shape["data"] == len(jax.devices())
      (('data',), True)
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def model_mesh(model: int, devices: list | None = None) -> Mesh:
    """A 2-D mesh ``("data", "model")``: ``model`` devices per model-parallel group.

    Raises:
      ValueError: if ``model`` does not divide the number of devices.

    Example:
      >>> import jax
      >>> from pruneax import lab
      >>> mesh = lab.model_mesh(1, jax.devices()[:1])
      >>> dict(mesh.shape)
      {'data': 1, 'model': 1}
    """
    devices = jax.devices() if devices is None else devices
    if isinstance(model, bool) or not isinstance(model, int) or model < 1:
        raise ValueError(f"model_mesh: model must be a positive int; got {model!r}")
    if len(devices) % model:
        raise ValueError(
            f"model_mesh: model={model} must divide the number of devices ({len(devices)})"
        )
    grid = np.asarray(devices).reshape(len(devices) // model, model)
    return Mesh(grid, ("data", "model"))


def llm_param_specs(params: Any, mesh: Mesh) -> Any:
    """``PartitionSpec`` per leaf of a pruneax model's parameter state: the package's one
    layout, ``pruneax.models.partition_spec`` (Megatron-style over the ``"model"`` axis, and
    ``"fsdp"`` when the mesh has it), applied to each leaf's path name.

    A leaf whose sharded dimension is not a multiple of the axis size (e.g. 2 KV heads on 4
    devices) is replicated along it; so is every leaf no rule names (norm scales, biases of
    o / down). Works on any pytree whose paths carry these names (``LlamaLM``, ``ViT``,
    ``MambaLM``, ``VLM``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax import lab
      >>> params = {"q_proj": {"kernel": jnp.zeros((4, 8))}, "norm": {"scale": jnp.ones(4)}}
      >>> specs = lab.llm_param_specs(params, lab.model_mesh(1, jax.devices()[:1]))
      >>> tuple(specs["q_proj"]["kernel"]), tuple(specs["norm"]["scale"])
      ((None, None), (None,))
    """
    from pruneax.models import partition_spec  # the models import pruneax.weights, not lab

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: partition_spec(path_name(path), np.shape(leaf), mesh), params
    )


def shard_params(params: Any, mesh: Mesh, specs: Any) -> Any:
    """``params`` placed with ``NamedSharding(mesh, spec)`` leaf by leaf.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax import lab
      >>> mesh = lab.model_mesh(1, jax.devices()[:1])
      >>> params = {"q_proj": {"kernel": jnp.zeros((4, 8))}}
      >>> placed = lab.shard_params(params, mesh, lab.llm_param_specs(params, mesh))
      >>> tuple(placed["q_proj"]["kernel"].sharding.spec)
      (None, None)
    """
    return jax.tree.map(
        lambda x, p: jax.device_put(x, NamedSharding(mesh, p)),
        params,
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf fully replicated over ``mesh``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import lab
      >>> lab.replicate(jnp.ones(3), lab.data_mesh()).sharding.is_fully_replicated
      True
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def batch_multiple(mesh: Mesh) -> int:
    """Global batch sizes must be a multiple of this (the devices along ``"data"``).

    Example:
      >>> import jax
      >>> from pruneax import lab
      >>> lab.batch_multiple(lab.data_mesh()) == len(jax.devices())
      True
    """
    return mesh.shape["data"]


def constrain_batch(x: Any, mesh: Mesh) -> Any:
    """Inside jit: ask for every leaf to be sharded along axis 0 over ``"data"``.

    For batches built inside a jitted loop (e.g. gathered from a replicated training set in a
    ``lax.scan``). A leaf whose batch size does not divide is left to the compiler.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax import lab
      >>> mesh = lab.data_mesh()
      >>> jax.jit(lambda x: lab.constrain_batch(x, mesh) * 2)(jnp.ones((8, 2))).shape
      (8, 2)
    """
    n = batch_multiple(mesh)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, sharding) if a.shape[0] % n == 0 else a, x
    )


def shard_batch(x: Any, mesh: Mesh) -> Any:
    """Shards every leaf of a (global) batch along axis 0 over the ``"data"`` axis (replicated
    along ``"model"`` on a 2-D mesh; multi-host runs keep each model group within one host).

    Raises:
      ValueError: if a leaf's batch size is not a multiple of the number of devices.

    Example:
      >>> import numpy as np
      >>> from pruneax import lab
      >>> x = lab.shard_batch(np.zeros((8, 3), np.float32), lab.data_mesh())
      >>> x.shape, tuple(x.sharding.spec)
      ((8, 3), ('data',))
    """
    n = batch_multiple(mesh)
    sharding = NamedSharding(mesh, PartitionSpec("data"))

    def put(a):
        if a.shape[0] % n:
            raise ValueError(
                f"shard_batch: batch size {a.shape[0]} is not a multiple of the {n} devices "
                "along the mesh's data axis; choose a batch size divisible by that count"
            )
        if jax.process_count() == 1:
            return jax.device_put(a, sharding)
        per_host = a.shape[0] // jax.process_count()
        i = jax.process_index()
        local = np.asarray(a[i * per_host : (i + 1) * per_host])
        return jax.make_array_from_process_local_data(sharding, local, a.shape)

    return jax.tree.map(put, x)
