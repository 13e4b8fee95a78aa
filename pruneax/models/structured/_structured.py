"""Structured pruning of transformers: remove whole attention heads and MLP channels.

Shapes really shrink: ``prune_structured`` builds a smaller ``ViT`` / ``LlamaLM`` whose config
records the surviving sizes per layer (``layer_heads`` / ``layer_kv_heads`` / ``layer_mlp``)
and copies the kept slices of every weight, in their original order. Units are

- a ViT attention head: its ``hd`` columns of ``query`` / ``key`` / ``value`` (kernel and bias)
  and its ``hd`` rows of ``out``'s kernel;
- a Llama GQA group (heads are removed a whole group at a time so that grouped-query attention
  stays grouped): one key / value head (``hd`` columns of ``k_proj`` / ``v_proj``) with its
  ``num_groups`` query heads (``num_groups * hd`` columns of ``q_proj``, rows of ``o_proj``);
- an MLP channel: a column of ``fc1`` (kernel and bias) and a row of ``fc2``'s kernel (ViT), or
  a column of ``gate_proj`` and ``up_proj`` and a row of ``down_proj`` (SwiGLU).

Biases of the output projections (``out``, ``o_proj``, ``fc2``, ``down_proj``) belong to no unit
and stay; a layer left with no head (no channel) adds just that bias.

Scores (``head_importance`` / ``mlp_importance``): ``"magnitude"`` is the L2 norm of all the
unit's weights; ``"taylor"`` is the first-order Taylor estimate of the loss change when the
unit is removed, ``|sum_w w * dL/dw|`` over the unit's weights, with ``dL/dw`` averaged over
calibration batches (``taylor_grads``).

``allocate_units`` distributes a parameter or FLOPs budget over the layers GLOBALLY: every unit of
every layer is ranked by normalised score per unit cost and the lowest are removed until the
model fits the budget (see ``allocate_units`` for the normalisation).

References: Michel et al., "Are Sixteen Heads Really Better than One?", NeurIPS 2019
(arXiv:1905.10650); Molchanov et al., "Pruning Convolutional Neural Networks for Resource
Efficient Inference", ICLR 2017 (arXiv:1611.06440) and "Importance Estimation for Neural
Network Pruning", CVPR 2019 (arXiv:1906.10771); Ma et al., "LLM-Pruner: On the Structural
Pruning of Large Language Models", NeurIPS 2023 (arXiv:2305.11627).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models.llama._model import LlamaConfig, LlamaLM
from pruneax.models.vit._model import ViT, ViTConfig
from pruneax.weights import leaf_names
from pruneax.weights._paths import by_name

METHODS = ("magnitude", "taylor")
COSTS = ("params", "flops")
NORMALIZATIONS = ("kind", "layer", "none")
_CONFIGS = {"ViTConfig": ViTConfig, "LlamaConfig": LlamaConfig}

Config = ViTConfig | LlamaConfig
Model = ViT | LlamaLM


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
    """

    heads: tuple[tuple[int, ...] | None, ...] | None = None
    mlp: tuple[tuple[int, ...] | None, ...] | None = None

    def __post_init__(self):
        for name in ("heads", "mlp"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_seq(value) or not all(v is None or _is_seq(v) for v in value):
                raise ValueError(
                    f"StructuredKeep: {name} must be None or one sequence of int indices per "
                    f"layer; got {value!r}"
                )
            layers = []
            for i, idx in enumerate(value):
                if idx is None:
                    layers.append(None)
                    continue
                if not all(_is_int(j) for j in idx):
                    raise ValueError(f"StructuredKeep: {name}[{i}] must hold ints; got {idx!r}")
                idx = [int(j) for j in idx]
                dup = sorted({j for j in idx if idx.count(j) > 1})
                if dup:
                    raise ValueError(f"StructuredKeep: {name}[{i}] has duplicate indices {dup}")
                layers.append(tuple(sorted(idx)))
            object.__setattr__(self, name, tuple(layers))


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_seq(x: object) -> bool:
    return isinstance(x, Sequence | np.ndarray) and not isinstance(x, str)


# ------------------------------------------------------------------------------ unit layout


class _Slice(NamedTuple):
    """The part of leaf ``name`` that belongs to the units of a layer: unit ``u`` owns the
    entries ``[u * width, (u + 1) * width)`` along ``axis``."""

    name: str
    axis: int
    width: int


def _check_model(model: Any, where: str) -> Config:
    if not isinstance(model, ViT | LlamaLM):
        raise ValueError(f"{where}: model must be a ViT or a LlamaLM; got {type(model).__name__}")
    return model.config


def _check_config(config: Any, where: str) -> Config:
    if not isinstance(config, ViTConfig | LlamaConfig):
        raise ValueError(
            f"{where}: config must be a ViTConfig or a LlamaConfig; got {type(config).__name__}"
        )
    return config


def _layout(config: Config) -> tuple[list[list[_Slice]], list[list[_Slice]]]:
    """Per layer, the ``_Slice``s of the head (GQA group) units and of the MLP channels."""
    heads, mlp = [], []
    for i in range(config.num_layers):
        if isinstance(config, ViTConfig):
            p, hd = f"blocks/{i}", config.head_dim
            h = [_Slice(f"{p}/attn/{n}/kernel", 1, hd) for n in ("query", "key", "value")]
            if config.qkv_bias:
                h += [_Slice(f"{p}/attn/{n}/bias", 0, hd) for n in ("query", "key", "value")]
            h.append(_Slice(f"{p}/attn/out/kernel", 0, hd))
            m = [
                _Slice(f"{p}/mlp/fc1/kernel", 1, 1),
                _Slice(f"{p}/mlp/fc1/bias", 0, 1),
                _Slice(f"{p}/mlp/fc2/kernel", 0, 1),
            ]
        else:
            p, hd, g = f"layers/{i}", config.head_dim, config.num_groups
            widths = {"q_proj": g * hd, "k_proj": hd, "v_proj": hd}
            h = [_Slice(f"{p}/self_attn/{n}/kernel", 1, w) for n, w in widths.items()]
            if config.attention_bias:
                h += [_Slice(f"{p}/self_attn/{n}/bias", 0, w) for n, w in widths.items()]
            h.append(_Slice(f"{p}/self_attn/o_proj/kernel", 0, g * hd))
            m = [_Slice(f"{p}/mlp/{n}/kernel", 1, 1) for n in ("gate_proj", "up_proj")]
            if config.mlp_bias:
                m += [_Slice(f"{p}/mlp/{n}/bias", 0, 1) for n in ("gate_proj", "up_proj")]
            m.append(_Slice(f"{p}/mlp/down_proj/kernel", 0, 1))
        heads.append(h)
        mlp.append(m)
    return heads, mlp


def unit_counts(config: Config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(heads, mlp)``: prunable head units (ViT heads; Llama GQA groups = key / value heads)
    and MLP channels of every layer of a model with this config.

    Raises:
      ValueError: if ``config`` is not a ``ViTConfig`` or a ``LlamaConfig``.
    """
    config = _check_config(config, "unit_counts")
    heads = config.heads_per_layer if isinstance(config, ViTConfig) else config.kv_heads_per_layer
    return tuple(heads), tuple(config.mlp_per_layer)


def _units_of(x: jax.Array, s: _Slice) -> jax.Array:
    """[units, entries per unit] view of the slice ``s`` of leaf ``x``."""
    x = jnp.moveaxis(jnp.asarray(x), s.axis, 0)
    n = x.shape[0] // s.width
    return x.reshape(n, s.width * int(np.prod(x.shape[1:])))


# ------------------------------------------------------------------------------ importance


def _importance(model: Any, method: str, grads: Any, which: int, where: str):
    config = _check_model(model, where)
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {list(METHODS)}; got {method!r}")
    params = by_name(nnx.state(model, nnx.Param))
    if method == "taylor":
        if grads is None:
            raise ValueError(
                f"{where}: method='taylor' needs grads (the mean gradient of the loss, e.g. "
                "from taylor_grads)"
            )
        g = by_name(grads)
        missing = sorted(set(params) - set(g))
        if missing:
            raise ValueError(
                f"{where}: grads must have the model's parameter leaves; missing {missing[:4]}"
            )
    elif grads is not None:
        raise ValueError(f"{where}: grads is only used by method='taylor'; got method={method!r}")
    counts = unit_counts(config)[which]
    out = []
    for i, slices in enumerate(_layout(config)[which]):
        total = jnp.zeros((counts[i],), jnp.float32)
        for s in slices:
            w = _units_of(params[s.name], s).astype(jnp.float32)
            if method == "magnitude":
                total = total + jnp.sum(w * w, axis=1)
            else:
                d = _units_of(g[s.name], s).astype(jnp.float32)
                total = total + jnp.sum(w * d, axis=1)
        out.append(jnp.sqrt(total) if method == "magnitude" else jnp.abs(total))
    return tuple(out)


def head_importance(
    model: Model, *, method: str = "magnitude", grads: Any = None
) -> tuple[jax.Array, ...]:
    """Importance of every attention head (ViT) or GQA group (``LlamaLM``) of every layer.

    ``"magnitude"``: the L2 norm of the unit's weights (the query / key / value columns and
    their biases, the output-projection rows). ``"taylor"``: ``|sum_w w * g_w|`` over the same
    weights, with ``g`` the loss gradient (averaged over calibration batches): the first-order
    Taylor estimate of the loss change when the unit is set to zero.

    Args:
      model: a ``ViT`` or a ``LlamaLM`` (pruned or not).
      method: ``"magnitude"`` or ``"taylor"``.
      grads: for ``"taylor"``, gradients with the leaves of ``nnx.state(model, nnx.Param)``
        (``taylor_grads``).

    Returns:
      One float32 array per layer, [heads of that layer] (ViT) or [key / value heads] (Llama).

    Raises:
      ValueError: for a model that is neither, an unknown method, or missing / unexpected
        ``grads``.

    References: Michel et al., NeurIPS 2019; Molchanov et al., "Importance Estimation for
      Neural Network Pruning", CVPR 2019, Eq. 3-4 (first-order Taylor, group sum); Ma et al.,
      "LLM-Pruner", NeurIPS 2023, Sec. 3.2 (vector-wise first-order importance).
    """
    return _importance(model, method, grads, 0, "head_importance")


def mlp_importance(
    model: Model, *, method: str = "magnitude", grads: Any = None
) -> tuple[jax.Array, ...]:
    """Importance of every MLP channel of every layer (same methods as ``head_importance``).

    A channel's weights: the ``fc1`` column and bias and the ``fc2`` row (ViT); the
    ``gate_proj`` and ``up_proj`` columns (and biases) and the ``down_proj`` row (SwiGLU).

    Returns:
      One float32 array per layer, [MLP width of that layer].

    Raises:
      ValueError: as ``head_importance``.

    References: Molchanov et al., CVPR 2019; Ma et al., "LLM-Pruner", NeurIPS 2023.
    """
    return _importance(model, method, grads, 1, "mlp_importance")


def taylor_grads(
    model: Model, loss_fn: Callable[[Any, Any], jax.Array], batches: Iterable[Any]
) -> nnx.State:
    """The gradient of ``loss_fn`` w.r.t. the model's parameters, averaged over ``batches``.

    Pure ``jax.grad`` over the ``nnx.Param`` state (the model is not modified); one jitted
    gradient function, retraced only for batches of a new shape.

    Args:
      model: any Flax NNX module (a ``ViT`` or a ``LlamaLM`` for the importance functions).
      loss_fn: ``loss_fn(model, batch) -> scalar`` (e.g. cross-entropy of the logits).
      batches: an iterable of at least one batch (any pytree ``loss_fn`` accepts).

    Returns:
      An ``nnx.State`` of the mean gradients, with the structure of ``nnx.state(model,
      nnx.Param)``.

    Raises:
      ValueError: if ``batches`` is empty or ``loss_fn`` does not return a scalar.

    References: Molchanov et al., CVPR 2019 (importance accumulated over mini-batches).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, batch):
        value = loss_fn(nnx.merge(graphdef, p, rest), batch)
        if jnp.shape(value) != ():
            raise ValueError(
                f"taylor_grads: loss_fn must return a scalar; got shape {jnp.shape(value)}"
            )
        return value

    grad = jax.jit(jax.grad(loss))
    total, n = None, 0
    for batch in batches:
        g = grad(params, batch)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
        n += 1
    if n == 0:
        raise ValueError("taylor_grads: batches must hold at least one batch; got none")
    return jax.tree.map(lambda x: x / n, total)


# ------------------------------------------------------------------------------ counts, FLOPs


def config_param_count(config: Config) -> int:
    """Analytic parameter count (``nnx.Param`` entries) of a ``ViT`` / ``LlamaLM`` with
    ``config``, per-layer sizes included: equals ``param_count(model)``.

    Raises:
      ValueError: if ``config`` is not a ``ViTConfig`` or a ``LlamaConfig``.
    """
    cfg = _check_config(config, "config_param_count")
    d = cfg.hidden_size
    if isinstance(cfg, ViTConfig):
        p, c = cfg.patch_size, cfg.num_channels
        total = c * p * p * d + d * cfg.patch_bias
        total += d * (cfg.class_token + cfg.distillation_token + cfg.num_registers)
        if cfg.pos_embed == "learned":
            total += d * (cfg.num_pos_prefix + cfg.num_patches)
        total += 2 * d * cfg.pre_norm + 2 * d * (cfg.final_norm != "none")
        hd = cfg.head_dim
        for h, m in zip(cfg.heads_per_layer, cfg.mlp_per_layer, strict=True):
            total += 4 * d  # two LayerNorms
            total += 4 * d * h * hd + 3 * h * hd * cfg.qkv_bias + d  # q, k, v, out (+ out bias)
            total += 2 * d * m + m + d  # fc1, fc2
        total += (d * d + d) * cfg.pooler
        k = cfg.num_classes
        total += (d * k + k) * ((k > 0) + (cfg.pool == "cls_dist"))
        return int(total)
    hd = cfg.head_dim
    total = cfg.vocab_size * d + d + cfg.vocab_size * d * (not cfg.tie_word_embeddings)
    for h, kv, f in zip(
        cfg.heads_per_layer, cfg.kv_heads_per_layer, cfg.mlp_per_layer, strict=True
    ):
        total += 2 * d  # two RMSNorm scales
        total += (d + cfg.attention_bias) * (h + 2 * kv) * hd + h * hd * d
        total += d * cfg.attention_out_bias
        total += 3 * d * f + (2 * f + d) * cfg.mlp_bias
    return int(total)


def config_flops(config: Config, *, tokens: int | None = None) -> int:
    """Analytic forward FLOPs (2 per multiply-add; matmuls and attention products only, no
    norms / softmax / activations) of a ``ViT`` / ``LlamaLM`` with ``config``.

    ViT: per image, with ``tokens`` = T tokens per block (default: the prefix + patch tokens):
    patch embedding, per block ``2 T D (3 + 1) H hd + 4 T^2 H hd + 4 T D M``, pooler and
    classifier. Llama: per token, attending over ``tokens`` = S keys (required: the context
    length), per layer ``2 D (H + 2 KV) hd + 2 H hd D + 4 S H hd + 6 D F``, plus the LM head
    ``2 D V``.

    Raises:
      ValueError: for a bad config or ``tokens`` (a Llama config needs it).
    """
    cfg = _check_config(config, "config_flops")
    t = _tokens(cfg, tokens, "config_flops")
    d = cfg.hidden_size
    hd = cfg.head_dim
    if isinstance(cfg, ViTConfig):
        p = cfg.patch_size
        total = 2 * cfg.num_patches * cfg.num_channels * p * p * d
        for h, m in zip(cfg.heads_per_layer, cfg.mlp_per_layer, strict=True):
            total += 8 * t * d * h * hd + 4 * t * t * h * hd + 4 * t * d * m
        total += 2 * d * d * cfg.pooler
        total += 2 * d * cfg.num_classes * ((cfg.num_classes > 0) + (cfg.pool == "cls_dist"))
        return int(total)
    total = 2 * d * cfg.vocab_size
    for h, kv, f in zip(
        cfg.heads_per_layer, cfg.kv_heads_per_layer, cfg.mlp_per_layer, strict=True
    ):
        total += 2 * d * (h + 2 * kv) * hd + 2 * h * hd * d + 4 * t * h * hd + 6 * d * f
    return int(total)


def _tokens(cfg: Config, tokens: Any, where: str) -> int:
    if tokens is None:
        if isinstance(cfg, LlamaConfig):
            raise ValueError(
                f"{where}: tokens (the context length each query attends over) is required "
                "for a LlamaConfig"
            )
        return cfg.num_prefix + cfg.num_patches
    if not _is_int(tokens) or tokens < 1:
        raise ValueError(f"{where}: tokens must be a positive int or None; got {tokens!r}")
    return int(tokens)


def _unit_costs(cfg: Config, kind: str, tokens: int) -> tuple[int, int]:
    """(cost of one head unit, cost of one MLP channel) in parameters or FLOPs."""
    d, hd = cfg.hidden_size, cfg.head_dim
    if isinstance(cfg, ViTConfig):
        if kind == "params":
            return 4 * d * hd + 3 * hd * cfg.qkv_bias, 2 * d + 1
        return 8 * tokens * d * hd + 4 * tokens * tokens * hd, 4 * tokens * d
    g = cfg.num_groups
    if kind == "params":
        head = (d + cfg.attention_bias) * (g + 2) * hd + g * hd * d
        return head, 3 * d + 2 * cfg.mlp_bias
    return 2 * d * (g + 2) * hd + 2 * g * hd * d + 4 * tokens * g * hd, 6 * d


def _dense(cfg: Config) -> Config:
    if isinstance(cfg, ViTConfig):
        return dataclasses.replace(cfg, layer_heads=None, layer_mlp=None)
    return dataclasses.replace(cfg, layer_heads=None, layer_kv_heads=None, layer_mlp=None)


# ------------------------------------------------------------------------------ allocation


def allocate_units(
    head_scores: Sequence[Any],
    mlp_scores: Sequence[Any],
    *,
    config: Config,
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
    """
    cfg = _check_config(config, "allocate_units")
    if kind not in COSTS:
        raise ValueError(f"allocate_units: kind must be one of {list(COSTS)}; got {kind!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"allocate_units: normalize must be one of {list(NORMALIZATIONS)}; got {normalize!r}"
        )
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0 < budget <= 1:
        raise ValueError(f"allocate_units: budget must be a fraction in (0, 1]; got {budget!r}")
    mins = min_per_layer if isinstance(min_per_layer, tuple) else (min_per_layer,) * 2
    if len(mins) != 2 or not all(_is_int(m) and m >= 0 for m in mins):
        raise ValueError(
            "allocate_units: min_per_layer must be an int >= 0 or (heads, mlp); got "
            f"{min_per_layer!r}"
        )
    t = _tokens(cfg, tokens, "allocate_units") if kind == "flops" else 0
    counts = unit_counts(cfg)
    scores = [
        _check_scores(s, c, name)
        for s, c, name in zip(
            (head_scores, mlp_scores), counts, ("head_scores", "mlp_scores"), strict=True
        )
    ]
    costs = _unit_costs(cfg, kind, t)
    measure = config_param_count if kind == "params" else (lambda c: config_flops(c, tokens=t))
    total, target = measure(cfg), float(budget) * measure(_dense(cfg))

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
        dense = measure(_dense(cfg))
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
    if not _is_seq(scores) or len(scores) != len(counts):
        raise ValueError(
            f"allocate_units: {name} must hold one array per layer ({len(counts)}); got "
            f"{len(scores) if _is_seq(scores) else type(scores).__name__}"
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


# ------------------------------------------------------------------------------ pruning


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


def _pruned_config(cfg: Config, heads: list[np.ndarray], mlp: list[np.ndarray]) -> Config:
    h = tuple(len(k) for k in heads)
    m = tuple(len(k) for k in mlp)
    if isinstance(cfg, ViTConfig):
        return dataclasses.replace(cfg, layer_heads=h, layer_mlp=m)
    return dataclasses.replace(
        cfg, layer_heads=tuple(g * cfg.num_groups for g in h), layer_kv_heads=h, layer_mlp=m
    )


def _param_dtype(model: Model) -> Any:
    return jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype


def _fill(model_type: type, cfg: Config, values: dict[str, Any], dtype: Any, param_dtype: Any):
    """A model of ``model_type(cfg)`` whose variables are ``values`` (by leaf name); no random
    initialisation (abstract model, then filled)."""
    abstract = nnx.eval_shape(
        lambda: model_type(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    )
    graphdef, state = nnx.split(abstract)
    names = leaf_names(state)
    leaves = []
    for name, leaf in zip(names, jax.tree.leaves(state), strict=True):
        if name not in values:
            raise ValueError(f"missing variable {name!r}")
        v = jnp.asarray(values[name])
        if v.shape != leaf.shape:
            raise ValueError(f"variable {name!r} has shape {v.shape}; expected {leaf.shape}")
        leaves.append(v.astype(leaf.dtype))
    extra = sorted(set(values) - set(names))
    if extra:
        raise ValueError(f"unexpected variables {extra[:4]}")
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


def prune_structured(model: Model, keep: StructuredKeep) -> Model:
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
    """
    cfg = _check_model(model, "prune_structured")
    if not isinstance(keep, StructuredKeep):
        raise ValueError(
            f"prune_structured: keep must be a StructuredKeep; got {type(keep).__name__}"
        )
    counts = unit_counts(cfg)
    kept = [_check_keep(keep, counts[0], "heads"), _check_keep(keep, counts[1], "mlp")]
    values = dict(by_name(nnx.state(model)))
    for k, layout in enumerate(_layout(cfg)):
        for i, slices in enumerate(layout):
            idx = kept[k][i]
            for s in slices:
                elem = (idx[:, None] * s.width + np.arange(s.width)[None]).reshape(-1)
                values[s.name] = jnp.take(values[s.name], jnp.asarray(elem, jnp.int32), axis=s.axis)
    new_cfg = _pruned_config(cfg, *kept)
    return _fill(type(model), new_cfg, values, model.dtype, _param_dtype(model))


# ------------------------------------------------------------------------------ save / load


def config_to_json(config: Config) -> str:
    """A JSON string of ``config`` (``{"type": "ViTConfig" | "LlamaConfig", "config": {...}}``)
    with every field, per-layer sizes included; ``config_from_json`` reads it back equal.

    Raises:
      ValueError: if ``config`` is not a ``ViTConfig`` or a ``LlamaConfig``.
    """
    cfg = _check_config(config, "config_to_json")
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, LlamaConfig):
        fields["rope_scaling"] = cfg.rope_scaling_dict
    return json.dumps({"type": type(cfg).__name__, "config": fields}, indent=1)


def config_from_json(text: str) -> Config:
    """The ``ViTConfig`` / ``LlamaConfig`` that ``config_to_json`` wrote.

    Raises:
      ValueError: for text that is not such JSON, an unknown type or unknown fields, or an
        invalid config.
    """
    try:
        data = json.loads(text)
        name, fields = data["type"], data["config"]
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(
            f"config_from_json: text must be the JSON of config_to_json; got {str(text)[:80]!r}"
        ) from e
    if name not in _CONFIGS:
        raise ValueError(f"config_from_json: type must be one of {list(_CONFIGS)}; got {name!r}")
    cls = _CONFIGS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"config_from_json: unknown {name} fields {unknown}")
    return cls(**fields)


def save_pruned(directory: str | pathlib.Path, model: Model) -> None:
    """Writes ``config.json`` (``config_to_json``) and ``variables.npz`` (every variable by
    leaf name) of a (pruned) ``ViT`` / ``LlamaLM`` to ``directory`` (created if needed).

    Raises:
      ValueError: if ``model`` is not a ``ViT`` / ``LlamaLM``.
    """
    cfg = _check_model(model, "save_pruned")
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config_to_json(cfg))
    arrays = {name: np.asarray(v) for name, v in by_name(nnx.state(model)).items()}
    np.savez(path / "variables.npz", **arrays)


def load_pruned(directory: str | pathlib.Path, *, dtype: Any = jnp.float32) -> Model:
    """The model ``save_pruned`` wrote: a ``ViT`` / ``LlamaLM`` of the saved config (per-layer
    sizes included) with the saved variables (their dtype is the parameter dtype).

    Args:
      directory: what ``save_pruned`` wrote.
      dtype: the computation dtype of the model.

    Raises:
      ValueError: for a bad config or variables that do not fit it.
    """
    path = pathlib.Path(directory)
    cfg = config_from_json((path / "config.json").read_text())
    with np.load(path / "variables.npz") as f:
        values = {name: f[name] for name in f.files}
    param_dtype = next(iter(values.values())).dtype if values else jnp.float32
    model_type = ViT if isinstance(cfg, ViTConfig) else LlamaLM
    try:
        return _fill(model_type, cfg, values, dtype, param_dtype)
    except ValueError as e:
        raise ValueError(f"load_pruned: {directory}: {e}") from None
