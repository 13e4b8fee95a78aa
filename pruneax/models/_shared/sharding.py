"""How every pruneax model's parameters are partitioned over a device mesh.

Two mesh axes have a meaning (others are left to the data):

- ``"model"``: tensor parallelism (Megatron-LM). A projection that fans out (q / k / v, gate /
  up, ViT query / key / value / fc1, Mamba ``in_proj`` / ``dt_proj``, the VLM projector's
  first linear, the LM head) is split over its output features; the projection that fans back
  in (o / down, ViT out / fc2, Mamba ``out_proj`` / ``x_proj``, the projector's second linear)
  over its input features, so each block needs one reduction. Token embeddings are split over
  the vocabulary. Mamba's per-channel parameters follow their channel axis.
- ``"fsdp"``: fully sharded data parallelism: the other dimension of those matrices.

A dimension that the axis size does not divide (two key / value heads on four devices) stays
whole on that axis; norms, biases of fan-in projections, position embeddings, class tokens and
classifier heads are replicated. Correctness never depends on the choice: XLA's SPMD
partitioner inserts whatever communication a layout needs; only speed and memory do.

``partition_spec(name, shape, mesh)`` gives one leaf's ``PartitionSpec`` from its leaf name
(``"layers/3/self_attn/q_proj/kernel"``); ``shard_model(model, mesh)`` places a model and
records each parameter's spec in its ``out_sharding`` metadata, so
``nnx.get_partition_spec(nnx.state(model))`` returns them (Flax's own convention).

References: Shoeybi et al., "Megatron-LM", 2019 (arXiv:1909.08053); MaxText's logical axis rules;
Flax's "Scale up on multiple devices" guide (``out_sharding`` metadata).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pruneax.weights import leaf_names

# layer (the leaf's parent) -> role. "in" layers fan out (split outputs), "out" layers fan in.
_FAN_OUT = frozenset(
    "q_proj k_proj v_proj gate_proj up_proj query key value fc1 in_proj dt_proj linear_1 "
    "lm_head".split()
)
_FAN_IN = frozenset("o_proj down_proj out fc2 out_proj x_proj linear_2".split())
_CHANNELS = {"A_log": ("model", None), "D": ("model",)}  # Mamba per-channel parameters


def partition_roles(name: str, ndim: int) -> tuple[str | None, ...]:
    """The mesh axis each dimension of leaf ``name`` would like (``None``: replicated).

    Example:
      >>> partition_roles("layers/0/self_attn/q_proj/kernel", 2)
      ('fsdp', 'model')
      >>> partition_roles("layers/0/mlp/down_proj/kernel", 2), partition_roles("norm/scale", 1)
      (('model', 'fsdp'), (None,))
    """
    parts = name.split("/")
    leaf, layer = parts[-1], parts[-2] if len(parts) > 1 else ""
    roles: tuple[str | None, ...] = (None,) * ndim
    if layer in _FAN_OUT and leaf == "kernel" and ndim == 2:
        roles = ("fsdp", "model")
    elif layer in _FAN_OUT and leaf == "bias" and ndim == 1:
        roles = ("model",)
    elif layer in _FAN_IN and leaf == "kernel" and ndim == 2:
        roles = ("model", "fsdp")
    elif leaf == "embedding" and ndim == 2:
        roles = ("model", "fsdp")
    elif layer == "conv1d" and leaf == "kernel" and ndim == 3:
        roles = (None, None, "model")
    elif layer == "conv1d" and leaf == "bias" and ndim == 1:
        roles = ("model",)
    elif leaf in _CHANNELS and ndim == len(_CHANNELS[leaf]):
        roles = _CHANNELS[leaf]
    return roles


def partition_spec(name: str, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The ``PartitionSpec`` of leaf ``name`` of ``shape`` on ``mesh`` (see the module
    docstring): each dimension takes its role's axis when the mesh has it with size > 1 and
    the axis size divides the dimension.

    Example:
      >>> import jax
      >>> mesh = jax.make_mesh((1,), ("model",))
      >>> partition_spec("layers/0/self_attn/q_proj/kernel", (4, 8), mesh)
      P(None, None)
    """
    axes = []
    for dim, role in zip(shape, partition_roles(name, len(shape)), strict=True):
        size = mesh.shape.get(role, 1) if role is not None else 1
        axes.append(role if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*axes)


def check_mesh(mesh: object, loader: str) -> Mesh:
    """``mesh`` with every axis ``AxisType.Auto``; refuses one that is not a ``Mesh``.

    ``jax.make_mesh`` makes ``Explicit`` axes by default (sharding in types: every op whose
    output sharding is ambiguous must be told it). pruneax's models are written for the
    compiler's propagation (``Auto``), so parameters are placed on the same devices with the
    same layout, but typed ``Auto``.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(
            f"{loader}: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((n,), "
            f"('model',))); got {type(mesh).__name__}"
        )
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """``model`` with every variable placed on ``mesh`` by ``partition_spec``, in place.

    Each variable's ``out_sharding`` metadata records its spec, so
    ``nnx.get_partition_spec(nnx.state(model))`` and ``jax.jit`` / ``nnx.jit`` with those
    shardings work as for a Flax model declared with ``nnx.with_partitioning``. Works on every
    pruneax model (``LlamaLM``, ``ViT``, ``MambaLM``, ``VLM`` ...): the rules read leaf names.

    Args:
      model: any Flax NNX module.
      mesh: the device mesh (axes ``"model"`` and / or ``"fsdp"`` are used; ``Explicit``
        axes are placed as ``Auto``, see ``check_mesh``).

    Returns:
      The same ``model`` object, placed.

    Raises:
      ValueError: if ``mesh`` is not a ``Mesh``.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> model = M.LlamaLM(M.llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> mesh = jax.make_mesh((1,), ("model",))
      >>> spec = nnx.get_partition_spec(nnx.state(M.shard_model(model, mesh)))
      >>> spec["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
      P(None, None)
    """
    mesh = check_mesh(mesh, "shard_model")
    state = nnx.state(model)
    names = leaf_names(state)
    leaves = jax.tree.leaves(state)
    placed = [
        jax.device_put(leaf, NamedSharding(mesh, partition_spec(name, leaf.shape, mesh)))
        for name, leaf in zip(names, leaves, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(jax.tree.structure(state), placed))
    annotate(model, mesh)
    return model


def annotate(model: nnx.Module, mesh: Mesh) -> None:
    """Sets every variable's ``out_sharding`` metadata to its ``partition_spec`` axes."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable):
            name = "/".join(str(p) for p in path)
            spec = partition_spec(name, node.get_value().shape, mesh)
            node.set_metadata(out_sharding=tuple(spec))


def place(view: np.ndarray, dtype: np.dtype, mesh: Any, name: str) -> jax.Array:
    """``view`` (a memory-mapped, possibly transposed, checkpoint tensor) as a ``dtype`` array:
    on the default device, or sharded over ``mesh`` with each device's slice read and cast on
    its own (``jax.make_array_from_callback``: no host ever holds the whole tensor converted,
    and in a multi-host run each host reads only the slices of its own devices)."""
    if mesh is None:
        return jnp.asarray(np.asarray(view, dtype=dtype))
    sharding = NamedSharding(mesh, partition_spec(name, view.shape, mesh))
    return jax.make_array_from_callback(
        view.shape, sharding, lambda index: np.array(view[index], dtype=dtype)
    )
