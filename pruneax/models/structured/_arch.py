"""What structured pruning needs from an architecture, and the table of architectures.

An architecture plugs into ``head_importance`` / ``allocate_units`` / ``prune_structured`` /
``config_flops`` / ``save_pruned`` ... by providing a ``StructuredArch``: where each prunable unit's
weights sit (``layout``), how many units a config has, its analytic parameter and FLOP counts,
and the config of a pruned model. The ViT's and ``LlamaLM``'s live beside their models
(``pruneax/models/vit/_structured.py``, ``pruneax/models/llama/_structured.py``); a user's own
architecture joins with ``register_structured``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from pruneax.models._shared.fields import is_int


class Slice(NamedTuple):
    """The part of leaf ``name`` that belongs to the units of a layer: unit ``u`` owns the
    entries ``[u * width, (u + 1) * width)`` along ``axis``."""

    name: str
    axis: int
    width: int


@runtime_checkable
class StructuredArch(Protocol):
    """An architecture's structured-pruning hooks (all pure functions of a config).

    Attributes:
      config_type: the config class (``ViTConfig``).
      model_type: the model class, built as ``model_type(config, rngs=, dtype=,
        param_dtype=)``.
      head_unit: what one head unit is, for messages (``"head"``, ``"GQA group"``).
    """

    config_type: type
    model_type: type
    head_unit: str

    def layout(self, config: Any) -> tuple[list[list[Slice]], list[list[Slice]]]:
        """Per layer, the ``Slice``s of the head units and of the MLP channels."""
        ...

    def unit_counts(self, config: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(heads, mlp)`` prunable units of every layer."""
        ...

    def param_count(self, config: Any) -> int:
        """Analytic parameter count of a model with ``config``."""
        ...

    def flops(self, config: Any, tokens: int) -> int:
        """Analytic forward FLOPs (see ``config_flops``)."""
        ...

    def default_tokens(self, config: Any) -> int | None:
        """``tokens`` when the caller gives none (None: the caller must give it)."""
        ...

    def unit_costs(self, config: Any, kind: str, tokens: int) -> tuple[int, int]:
        """(cost of one head unit, of one MLP channel) in ``"params"`` or ``"flops"``."""
        ...

    def dense(self, config: Any) -> Any:
        """``config`` without per-layer sizes."""
        ...

    def pruned(self, config: Any, heads: Sequence[int], mlp: Sequence[int]) -> Any:
        """The config with ``heads[i]`` head units and ``mlp[i]`` channels in layer ``i``."""
        ...

    def to_json(self, config: Any) -> dict[str, Any]:
        """The config's fields, JSON-able (``config_type(**fields)`` rebuilds it)."""
        ...


_ARCHS: dict[type, StructuredArch] = {}


def register_structured(arch: StructuredArch) -> StructuredArch:
    """Makes structured pruning work on ``arch.model_type`` models.

    Args:
      arch: an object with the ``StructuredArch`` attributes and methods.

    Returns:
      ``arch``.

    Raises:
      ValueError: naming the missing members, if ``arch`` is not a ``StructuredArch``, or if
        another architecture already uses its config class name (``config_from_json`` reads
        the class back by name).

    Example:
      >>> from pruneax.models import structured
      >>> sorted(a.config_type.__name__ for a in structured.structured_archs())
      ['LlamaConfig', 'ViTConfig']
    """
    missing = [
        m
        for m in ("config_type", "model_type", "head_unit", *_METHODS)
        if not hasattr(arch, m) or (m in _METHODS and not callable(getattr(arch, m)))
    ]
    if missing:
        raise ValueError(f"register_structured: arch lacks {missing}")
    name = arch.config_type.__name__
    clash = [t for t in _ARCHS if t.__name__ == name and t is not arch.config_type]
    if clash:
        raise ValueError(f"register_structured: a config class named {name!r} is registered")
    _ARCHS[arch.config_type] = arch
    return arch


_METHODS = (
    "layout",
    "unit_counts",
    "param_count",
    "flops",
    "default_tokens",
    "unit_costs",
    "dense",
    "pruned",
    "to_json",
)


def structured_archs() -> tuple[StructuredArch, ...]:
    """The registered architectures.

    Returns:
      A tuple of ``StructuredArch``.

    Example:
      >>> from pruneax.models import structured
      >>> len(structured.structured_archs()) >= 2
      True
    """
    return tuple(_ARCHS.values())


def _names() -> str:
    return " or a ".join(a.model_type.__name__ for a in _ARCHS.values())


def arch_of_config(config: Any, where: str) -> StructuredArch:
    """The registered architecture of ``config``; ValueError naming the registered ones."""
    arch = _ARCHS.get(type(config))
    if arch is None:
        known = " or a ".join(t.__name__ for t in _ARCHS)
        raise ValueError(f"{where}: config must be a {known}; got {type(config).__name__}")
    return arch


def arch_of_model(model: Any, where: str) -> StructuredArch:
    """The registered architecture of ``model``; ValueError naming the registered ones."""
    for arch in _ARCHS.values():
        if isinstance(model, arch.model_type):
            return arch
    raise ValueError(f"{where}: model must be a {_names()}; got {type(model).__name__}")


def arch_by_name(name: str, where: str) -> StructuredArch:
    """The architecture whose config class is called ``name``."""
    for t, arch in _ARCHS.items():
        if t.__name__ == name:
            return arch
    raise ValueError(f"{where}: type must be one of {[t.__name__ for t in _ARCHS]}; got {name!r}")


def is_seq(x: object) -> bool:
    return isinstance(x, Sequence | np.ndarray) and not isinstance(x, str)


@dataclasses.dataclass(frozen=True)
class StructuredKeep:
    """Which units ``prune_structured`` keeps (frozen, hashable).

    Attributes:
      heads: per layer, the indices of the kept attention heads (ViT) or GQA groups = key /
        value heads (``LlamaLM``), in ``[0, units of that layer)``, or None for a layer that
        keeps all; None for the field keeps every head of every layer.
        Stored as sorted tuples (the order of heads does not change the function; kept units
        keep their original order).
      mlp: per layer, the indices of the kept MLP channels (None: all of that layer); None
        keeps every channel.

    Raises:
      ValueError: if a field is not None or a sequence of sequences of ints, or has duplicate
        indices in a layer. Ranges and the number of layers are checked against the model by
        ``prune_structured``.

    Example:
      >>> from pruneax.models import StructuredKeep
      >>> StructuredKeep(heads=((2, 0), None)).heads
      ((0, 2), None)
    """

    heads: tuple[tuple[int, ...] | None, ...] | None = None
    mlp: tuple[tuple[int, ...] | None, ...] | None = None

    def __post_init__(self):
        for name in ("heads", "mlp"):
            value = getattr(self, name)
            if value is None:
                continue
            if not is_seq(value) or not all(v is None or is_seq(v) for v in value):
                raise ValueError(
                    f"StructuredKeep: {name} must be None or one sequence of int indices per "
                    f"layer; got {value!r}"
                )
            layers = []
            for i, idx in enumerate(value):
                if idx is None:
                    layers.append(None)
                    continue
                if not all(is_int(j) for j in idx):
                    raise ValueError(f"StructuredKeep: {name}[{i}] must hold ints; got {idx!r}")
                idx = [int(j) for j in idx]
                seen: set[int] = set()
                dup = sorted({j for j in idx if j in seen or seen.add(j)})
                if dup:
                    raise ValueError(f"StructuredKeep: {name}[{i}] has duplicate indices {dup}")
                layers.append(tuple(sorted(idx)))
            object.__setattr__(self, name, tuple(layers))
