"""Counting a config's parameters and FLOPs, and allocating a budget over layers GLOBALLY.

``allocate_units`` ranks every unit of every layer by normalised score per unit cost and removes
the lowest until the model fits the budget (see its docstring for the normalisation).

References: Molchanov et al., ICLR 2017 (arXiv:1611.06440), Sec. 2.3; Molchanov et al., CVPR
2019 (FLOPs-regularised global ranking).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from pruneax.models._shared.fields import is_int
from pruneax.models.structured._arch import (
    StructuredArch,
    StructuredKeep,
    arch_of_config,
    is_seq,
)

COSTS = ("params", "flops")
NORMALIZATIONS = ("kind", "layer", "none")


def unit_counts(config: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(heads, mlp)``: prunable head units (ViT heads; Llama GQA groups = key / value heads)
    and MLP channels of every layer of a model with this config.

    Args:
      config: a config of a registered architecture (``ViTConfig``, ``LlamaConfig``).

    Returns:
      Two tuples with one count per layer.

    Raises:
      ValueError: if ``config`` is not a ``ViTConfig`` or a ``LlamaConfig``.

    Example:
      >>> from pruneax.models import unit_counts, vit_config
      >>> unit_counts(vit_config("mnist/4", num_layers=2))
      ((4, 4), (256, 256))
    """
    return arch_of_config(config, "unit_counts").unit_counts(config)


def config_param_count(config: Any) -> int:
    """Analytic parameter count (``nnx.Param`` entries) of a ``ViT`` / ``LlamaLM`` with
    ``config``, per-layer sizes included: equals ``param_count(model)``.

    Args:
      config: a ``ViTConfig`` / ``LlamaConfig`` (or a registered architecture's config).

    Returns:
      The number of parameters.

    Raises:
      ValueError: if ``config`` is not a ``ViTConfig`` or a ``LlamaConfig``.

    Example:
      >>> from pruneax.models import config_param_count, vit_config
      >>> config_param_count(vit_config("mnist/4", num_layers=2))
      275210
    """
    cfg = config
    return arch_of_config(cfg, "config_param_count").param_count(cfg)


def config_flops(config: Any, *, tokens: int | None = None) -> int:
    """Analytic forward FLOPs (2 per multiply-add; matmuls and attention products only, no
    norms / softmax / activations) of a ``ViT`` / ``LlamaLM`` with ``config``.

    ViT: per image, with ``tokens`` = T tokens per block (default: the prefix + patch tokens):
    patch embedding, per block ``2 T D (3 + 1) H hd + 4 T^2 H hd + 4 T D M``, pooler and
    classifier. Llama: per token, attending over ``tokens`` = S keys (required: the context
    length), per layer ``2 D (H + 2 KV) hd + 2 H hd D + 4 S H hd + 6 D F``, plus the LM head
    ``2 D V``.

    Args:
      config: a ``ViTConfig`` / ``LlamaConfig`` (or a registered architecture's config).
      tokens: tokens per block (ViT; default all) or keys per query (Llama; required).

    Returns:
      FLOPs per image (ViT) or per token (Llama).

    Raises:
      ValueError: for a bad config or ``tokens`` (a Llama config needs it).

    Example:
      >>> from pruneax.models import config_flops, vit_config
      >>> config_flops(vit_config("mnist/4", num_layers=2))
      28977664
    """
    arch = arch_of_config(config, "config_flops")
    return arch.flops(config, _tokens(arch, config, tokens, "config_flops"))


def _tokens(arch: StructuredArch, cfg: Any, tokens: Any, where: str) -> int:
    if tokens is None:
        default = arch.default_tokens(cfg)
        if default is None:
            raise ValueError(
                f"{where}: tokens (the context length each query attends over) is required "
                f"for a {type(cfg).__name__}"
            )
        return int(default)
    if not is_int(tokens) or tokens < 1:
        raise ValueError(f"{where}: tokens must be a positive int or None; got {tokens!r}")
    return int(tokens)


def allocate_units(
    head_scores: Sequence[Any],
    mlp_scores: Sequence[Any],
    *,
    config: Any,
    budget: float,
    kind: str = "params",
    tokens: int | None = None,
    normalize: str = "kind",
    min_per_layer: int | tuple[int, int] = 0,
) -> StructuredKeep:
    """Global allocation of a parameter / FLOPs budget across layers: which units to keep.

    Every head unit (ViT head, Llama GQA group) and MLP channel of every layer gets a priority
    ``normalised score / cost`` (cost: the unit's parameters, or its FLOPs as
    ``config_flops`` counts them); units are removed in increasing priority (ties: heads before
    channels, then lower layer, then lower index) until the model's count is at most ``budget``
    times the DENSE model's (``config`` without per-layer sizes), skipping a unit when its
    layer is down to ``min_per_layer`` units of its kind.

    Normalisation (``normalize``): scores of heads and of channels are not on one scale (a head
    has ~``4 D hd`` weights, a channel ~``2 D``), while the units of one kind are alike across
    layers. ``"kind"`` (default) rescales each kind so that its total score equals its total
    cost: the average head and the average channel are then worth the same per parameter, and
    the priority of a unit is its score over the mean score of its kind over ALL layers, so a
    layer whose units all score low loses more of them (the allocation is global). ``"layer"``
    does the same per (layer, kind) (Molchanov et al. 2017's layer-wise normalisation, here by
    the mean): every layer is then pruned by its own relative ranking, about uniformly.
    ``"none"``: raw score / cost (meaningful when the scores estimate the loss change on one
    scale, as first-order Taylor scores do).

    Args:
      head_scores: one [units] array per layer (``head_importance``).
      mlp_scores: one [channels] array per layer (``mlp_importance``).
      config: the model's config (it fixes the unit counts and costs).
      budget: in (0, 1]: the kept fraction of the dense model's parameters (``kind="params"``,
        whole model, embeddings and heads included) or FLOPs (``"flops"``).
      kind: ``"params"`` or ``"flops"``.
      tokens: for ``"flops"``: tokens per block (ViT, default all) or keys per query (Llama,
        required); see ``config_flops``.
      normalize: ``"kind"``, ``"layer"`` or ``"none"`` (above).
      min_per_layer: units of each kind every layer keeps at least (an int, or ``(heads,
        mlp)``).

    Returns:
      A ``StructuredKeep`` with the kept indices of every layer (ascending).

    Raises:
      ValueError: for scores of the wrong number of layers or shape, non-finite or negative
        scores, an option out of range, or a budget that cannot be met (the error gives the
        smallest reachable fraction).

    References: Molchanov et al., ICLR 2017 (arXiv:1611.06440), Sec. 2.3 (global ranking with
      normalised scores); Molchanov et al., CVPR 2019 (FLOPs-regularised global ranking).

    Example:
      >>> from flax import nnx
      >>> import pruneax.models as M
      >>> model = M.ViT(M.vit_config("mnist/4", num_layers=2), rngs=nnx.Rngs(0))
      >>> h, m = M.head_importance(model), M.mlp_importance(model)
      >>> keep = M.allocate_units(h, m, config=model.config, budget=0.6)
      >>> M.config_param_count(M.prune_structured(model, keep).config) <= 0.6 * 275210
      True
    """
    cfg = config
    arch = arch_of_config(cfg, "allocate_units")
    if kind not in COSTS:
        raise ValueError(f"allocate_units: kind must be one of {list(COSTS)}; got {kind!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"allocate_units: normalize must be one of {list(NORMALIZATIONS)}; got {normalize!r}"
        )
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0 < budget <= 1:
        raise ValueError(f"allocate_units: budget must be a fraction in (0, 1]; got {budget!r}")
    mins = min_per_layer if isinstance(min_per_layer, tuple) else (min_per_layer,) * 2
    if len(mins) != 2 or not all(is_int(m) and m >= 0 for m in mins):
        raise ValueError(
            "allocate_units: min_per_layer must be an int >= 0 or (heads, mlp); got "
            f"{min_per_layer!r}"
        )
    t = _tokens(arch, cfg, tokens, "allocate_units") if kind == "flops" else 0
    counts = arch.unit_counts(cfg)
    scores = [
        _check_scores(s, c, name)
        for s, c, name in zip(
            (head_scores, mlp_scores), counts, ("head_scores", "mlp_scores"), strict=True
        )
    ]
    costs = arch.unit_costs(cfg, kind, t)
    measure = arch.param_count if kind == "params" else (lambda c: arch.flops(c, t))
    total, target = measure(cfg), float(budget) * measure(arch.dense(cfg))

    # priorities, one row per unit: (priority, kind, layer, index)
    rows = []
    for k in (0, 1):
        layers = scores[k]
        every = np.concatenate(layers) if layers else np.zeros(0)
        for i, s in enumerate(layers):
            if normalize == "kind":
                mean = every.mean() if every.size else 0.0
                pr = s / mean if mean > 0 else np.zeros_like(s)
            elif normalize == "layer":
                mean = s.mean() if s.size else 0.0
                pr = s / mean if mean > 0 else np.zeros_like(s)
            else:
                pr = s / costs[k]
            rows += [(float(pr[j]), k, i, j) for j in range(s.size)]
    removable = sum(
        costs[k] * max(0, counts[k][i] - mins[k]) for k in (0, 1) for i in range(cfg.num_layers)
    )
    if total - removable > target:
        dense = measure(arch.dense(cfg))
        raise ValueError(
            f"allocate_units: budget {budget} of the dense {kind} cannot be met: removing every "
            f"prunable unit (min_per_layer={min_per_layer}) leaves "
            f"{(total - removable) / dense:.4f}"
        )
    left = [list(c) for c in counts]
    removed: set[tuple[int, int, int]] = set()
    for _, k, i, j in sorted(rows):
        if total <= target:
            break
        if left[k][i] <= mins[k]:
            continue
        removed.add((k, i, j))
        left[k][i] -= 1
        total -= costs[k]
    keep = [
        tuple(
            tuple(j for j in range(counts[k][i]) if (k, i, j) not in removed)
            for i in range(cfg.num_layers)
        )
        for k in (0, 1)
    ]
    return StructuredKeep(heads=keep[0], mlp=keep[1])


def _check_scores(scores: Any, counts: tuple[int, ...], name: str) -> list[np.ndarray]:
    if not is_seq(scores) or len(scores) != len(counts):
        raise ValueError(
            f"allocate_units: {name} must hold one array per layer ({len(counts)}); got "
            f"{len(scores) if is_seq(scores) else type(scores).__name__}"
        )
    out = []
    for i, (s, n) in enumerate(zip(scores, counts, strict=True)):
        s = np.asarray(s, np.float64)
        if s.shape != (n,):
            raise ValueError(f"allocate_units: {name}[{i}] must have shape ({n},); got {s.shape}")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError(f"allocate_units: {name}[{i}] must be finite and >= 0; got {s}")
        out.append(s)
    return out
