"""Physically smaller models: the kept heads (GQA groups) and MLP channels copied, per-layer
sizes in the config; saved and loaded with their config.

Biases of the output projections belong to no unit and stay; a layer left with no head (no
channel) adds just that bias.

References: Michel et al., NeurIPS 2019; Ma et al., "LLM-Pruner", NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models._shared.checkpoint import read_safetensors
from pruneax.models._shared.loader import abstract_leaves
from pruneax.models._shared.safetensors_write import atomic_write, write_safetensors
from pruneax.models.structured._arch import (
    StructuredKeep,
    arch_by_name,
    arch_of_config,
    arch_of_model,
)
from pruneax.weights._paths import by_name


def _check_keep(keep: StructuredKeep, counts: tuple[int, ...], name: str) -> list[np.ndarray]:
    value = getattr(keep, name)
    if value is None:
        return [np.arange(n) for n in counts]
    if len(value) != len(counts):
        raise ValueError(
            f"prune_structured: keep.{name} has {len(value)} layers; the model has {len(counts)}"
        )
    out = []
    for i, (idx, n) in enumerate(zip(value, counts, strict=True)):
        if idx is None:
            out.append(np.arange(n))
            continue
        bad = [j for j in idx if not 0 <= j < n]
        if bad:
            raise ValueError(
                f"prune_structured: keep.{name}[{i}] has indices {bad} out of range [0, {n})"
            )
        out.append(np.asarray(idx, np.int64))
    return out


def _param_dtype(model: nnx.Module) -> Any:
    return jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype


def _fill(model_type: type, cfg: Any, values: dict[str, Any], dtype: Any, param_dtype: Any):
    """A model of ``model_type(cfg)`` whose variables are ``values`` (by leaf name); no random
    initialisation (abstract model, then filled)."""
    names, abstract, merge = abstract_leaves(
        lambda: model_type(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    leaves = []
    for name, leaf in zip(names, abstract, strict=True):
        if name not in values:
            raise ValueError(f"missing variable {name!r}")
        v = jnp.asarray(values[name])
        if v.shape != leaf.shape:
            raise ValueError(f"variable {name!r} has shape {v.shape}; expected {leaf.shape}")
        leaves.append(v.astype(leaf.dtype))
    extra = sorted(set(values) - set(names))
    if extra:
        raise ValueError(f"unexpected variables {extra[:4]}")
    return merge(leaves)


def prune_structured(model: nnx.Module, keep: StructuredKeep) -> nnx.Module:
    """A smaller copy of ``model`` with only the kept heads (GQA groups) and MLP channels.

    The new config has ``layer_heads`` (and ``layer_kv_heads``) and ``layer_mlp``; every
    weight slice of a kept unit is copied in its original order, every other variable (norms,
    embeddings, output biases, classifier) unchanged. The result computes exactly what
    ``model`` computes with the removed units' weights set to zero (up to float rounding), with
    smaller matmuls. ``model`` is not modified. Works on an already pruned model (indices then
    refer to its current units).

    Args:
      model: a ``ViT`` or a ``LlamaLM``.
      keep: a ``StructuredKeep`` (``allocate_units``, or hand-made): per layer the indices of the
        kept heads / GQA groups and MLP channels.

    Returns:
      The pruned model (same type, compute dtype and parameter dtype).

    Raises:
      ValueError: if ``model`` is not a ``ViT`` / ``LlamaLM``, ``keep`` is not a
        ``StructuredKeep``, or ``keep`` has the wrong number of layers or indices out of range
        (duplicates are rejected by ``StructuredKeep``).

    References: Michel et al., NeurIPS 2019; Ma et al., "LLM-Pruner", NeurIPS 2023.

    Example:
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> model = M.ViT(M.vit_config("mnist/4", num_layers=2), rngs=nnx.Rngs(0))
      >>> small = M.prune_structured(model, M.StructuredKeep(heads=((0, 2), None)))
      >>> small.config.heads_per_layer
      (2, 4)
    """
    arch = arch_of_model(model, "prune_structured")
    cfg = model.config
    if not isinstance(keep, StructuredKeep):
        raise ValueError(
            f"prune_structured: keep must be a StructuredKeep; got {type(keep).__name__}"
        )
    counts = arch.unit_counts(cfg)
    kept = [_check_keep(keep, counts[0], "heads"), _check_keep(keep, counts[1], "mlp")]
    values = dict(by_name(nnx.state(model)))
    for k, layout in enumerate(arch.layout(cfg)):
        for i, slices in enumerate(layout):
            idx = kept[k][i]
            for s in slices:
                elem = (idx[:, None] * s.width + np.arange(s.width)[None]).reshape(-1)
                values[s.name] = jnp.take(values[s.name], jnp.asarray(elem, jnp.int32), axis=s.axis)
    new_cfg = arch.pruned(cfg, [len(k) for k in kept[0]], [len(k) for k in kept[1]])
    return _fill(type(model), new_cfg, values, model.dtype, _param_dtype(model))


def config_to_json(config: Any) -> str:
    """A JSON string of ``config`` (``{"type": "ViTConfig" | "LlamaConfig", "config": {...}}``)
    with every field, per-layer sizes included; ``config_from_json`` reads it back equal.

    Args:
      config: a config of a registered architecture.

    Returns:
      The JSON text.

    Raises:
      ValueError: if ``config`` is not a ``ViTConfig`` or a ``LlamaConfig``.

    Example:
      >>> import pruneax.models as M
      >>> cfg = M.vit_config("mnist/4", num_layers=2, layer_heads=(1, 4))
      >>> M.config_from_json(M.config_to_json(cfg)) == cfg
      True
    """
    cfg = config
    fields = arch_of_config(cfg, "config_to_json").to_json(cfg)
    return json.dumps({"type": type(cfg).__name__, "config": fields}, indent=1)


def config_from_json(text: str) -> Any:
    """The ``ViTConfig`` / ``LlamaConfig`` that ``config_to_json`` wrote.

    Args:
      text: what ``config_to_json`` wrote.

    Returns:
      The config.

    Raises:
      ValueError: for text that is not such JSON, an unknown type or unknown fields, or an
        invalid config.

    Example:
      >>> import pruneax.models as M
      >>> M.config_from_json(M.config_to_json(M.vit_config("mnist/4"))).hidden_size
      128
    """
    try:
        data = json.loads(text)
        name, fields = data["type"], data["config"]
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(
            f"config_from_json: text must be the JSON of config_to_json; got {str(text)[:80]!r}"
        ) from e
    cls = arch_by_name(name, "config_from_json").config_type
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"config_from_json: unknown {name} fields {unknown}")
    return cls(**fields)


def save_pruned(directory: str | pathlib.Path, model: nnx.Module) -> None:
    """Writes ``model.safetensors`` (every variable by leaf name, in its own dtype) and
    ``config.json`` (``config_to_json``) of a (pruned) ``ViT`` / ``LlamaLM`` to ``directory``
    (created if needed). Each file is written atomically (temporary file, then rename), the
    config last, so a crash never leaves a directory ``load_pruned`` would misread. bfloat16
    and float16 models round-trip bit for bit.

    Args:
      directory: where to write.
      model: the model.

    Returns:
      None.

    Raises:
      ValueError: if ``model`` is not a ``ViT`` / ``LlamaLM``.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> model = M.ViT(M.vit_config("mnist/4", num_layers=2), rngs=nnx.Rngs(0))
      >>> small = M.prune_structured(model, M.StructuredKeep(mlp=((0, 1, 2), None)))
      >>> d = tempfile.mkdtemp()
      >>> M.save_pruned(d, small)
      >>> M.load_pruned(d).config.mlp_per_layer
      (3, 256)
    """
    arch_of_model(model, "save_pruned")
    cfg = model.config
    path = pathlib.Path(directory)
    arrays = {name: np.asarray(v) for name, v in by_name(nnx.state(model)).items()}
    write_safetensors(path / "model.safetensors", arrays, metadata={"format": "pruneax"})
    atomic_write(path / "config.json", [config_to_json(cfg).encode("utf-8")])


def load_pruned(directory: str | pathlib.Path, *, dtype: Any = "auto") -> nnx.Module:
    """The model ``save_pruned`` wrote: a ``ViT`` / ``LlamaLM`` of the saved config (per-layer
    sizes included) with the saved variables, each in its saved dtype (the parameter dtype).

    Reads ``model.safetensors``; a directory written by pruneax before it (``variables.npz``)
    is still read.

    Args:
      directory: what ``save_pruned`` wrote.
      dtype: the computation dtype of the model; ``"auto"`` (default) is the saved parameters'
        dtype (a bfloat16 model computes in bfloat16).

    Returns:
      The model (``ViT`` or ``LlamaLM``).

    Raises:
      FileNotFoundError: if ``config.json`` or the variables are missing.
      ValueError: for a bad config or variables that do not fit it.

    Example:
      >>> import tempfile
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> d = tempfile.mkdtemp()
      >>> cfg = M.vit_config("mnist/4", num_layers=1)
      >>> vit = M.ViT(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
      >>> M.save_pruned(d, vit)
      >>> back = M.load_pruned(d)
      >>> type(back).__name__, back.blocks[0].mlp.fc1.kernel[...].dtype
      ('ViT', dtype(bfloat16))
    """
    path = pathlib.Path(directory)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"load_pruned: no config.json in {str(path)!r}")
    cfg = config_from_json(config_file.read_text())
    if (path / "model.safetensors").is_file():
        values = dict(read_safetensors(path / "model.safetensors"))
    elif (path / "variables.npz").is_file():
        with np.load(path / "variables.npz") as f:
            values = {name: f[name] for name in f.files}
    else:
        raise FileNotFoundError(f"load_pruned: no model.safetensors in {str(path)!r}")
    floats = [v.dtype for v in values.values() if jnp.issubdtype(v.dtype, jnp.floating)]
    param_dtype = floats[0] if floats else jnp.float32
    if isinstance(dtype, str) and dtype == "auto":
        dtype = param_dtype
    model_type = arch_of_config(cfg, "load_pruned").model_type
    try:
        return _fill(model_type, cfg, values, dtype, param_dtype)
    except ValueError as e:
        raise ValueError(f"load_pruned: {directory}: {e}") from None
