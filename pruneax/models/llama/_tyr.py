"""Týr-the-Pruner on a ``LlamaLM``, part 1: the supernet (every block's ``o_proj`` and
``down_proj`` pruned at several sparsity levels by the local OBS pruner) and a genome's model.

Units ("groups"): the ``o_proj`` input rows of one GQA group (``num_groups * head_dim`` rows:
the query heads that share a key / value head) and the ``down_proj`` input rows of one MLP
channel. A removed group's producers (its ``q_proj`` / ``k_proj`` / ``v_proj`` columns, the
channel's ``gate_proj`` / ``up_proj`` columns) are dead and are sliced out by
``prune_structured``; nothing else changes (no update outside ``o_proj`` / ``down_proj``).

Supernet (``tyr_supernet``; AMD-AGI/Tyr-the-Pruner ``src/pruner.py``, ``prune_to_supernet.py``):
for each block in order, ONE forward of the block (earlier blocks already pruned) over the
calibration sequences gives the Hessians ``X^T X`` of the ``o_proj`` and ``down_proj`` inputs;
each of the two layers is pruned by ``tyr_local_prune`` at every level ``k`` of
``[-min(base // step, L // 2), min((units - base) // step, L // 2)]`` (``base + k * step`` groups
removed; L = ``num_levels``); the candidates are kept in memory; the level-0 candidates become
the block's live weights (the published "median" error accumulation) before the block's output
is computed for the next block. The published defaults: L = 9, 1 round for attention, 16 for
the MLP, a step of 4 heads and 1376 channels on Llama-2-7B (1/8 of each kind).

Deviations from the published code:

- GQA: the published code prunes single query heads (``num_attention_heads`` groups) and is run
  on models without GQA; pruneax's ``LlamaLM`` keeps grouped attention grouped
  (``StructuredKeep`` removes whole GQA groups), so an ``o_proj`` group here is a GQA group. With
  ``num_kv_heads == num_heads`` (Llama-2) it is one head, as published.
- Levels and start are whole numbers of groups (the published sparsities
  ``s + k * delta / numel`` are floats, and ``int(n * (1 - s))`` can round two levels onto the
  same count); ``start`` as a float uses the published ``int(n * (1 - s))`` kept groups.
- Layers are identified by (block, kind), stored explicitly, not by the parity of sorted names.
- Candidates stay in memory (published: one ``.pth`` file per level); float64 NumPy.

References: "Týr-the-Pruner: Structural Pruning of LLMs through Global Sparsity Distribution
Optimization" (AMD, 2025); code AMD-AGI/Tyr-the-Pruner @ c69d040.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pruneax.models.llama._calibrate import _block_stats, _forward, _linear
from pruneax.models.llama._model import LlamaLM
from pruneax.models.llama._nirvana import _check_ids
from pruneax.models.structured._arch import StructuredKeep
from pruneax.weights import tyr_local_prune
from pruneax.weights._tyr import SCORES

KINDS = ("o_proj", "down_proj")
_NAMES = {"o_proj": "self_attn/o_proj", "down_proj": "mlp/down_proj"}
_SLACK = 1e-9  # int() of a count that is integral in exact arithmetic must not drop by one


@dataclasses.dataclass(frozen=True, eq=False)
class TyrSupernet:
    """Týr-the-Pruner's supernet of a ``LlamaLM`` (built by ``tyr_supernet``).

    Slot ``2 i`` is block ``i``'s ``o_proj``, slot ``2 i + 1`` its ``down_proj``; a genome is one
    integer level per slot, level ``k`` removing ``base + k * step`` groups of that slot.

    Attributes:
      model: the dense model the candidates replace weights of (not modified).
      kinds: per slot, ``"o_proj"`` or ``"down_proj"``.
      units: per slot, its groups (GQA groups / MLP channels).
      group_size: per slot, the input rows of one group.
      base: per slot, the groups removed at level 0.
      step: per slot, the groups one level adds.
      low / high: per slot, the lowest / highest level.
      kernels: per slot, ``{level: kernel}`` ([d_in, d_out], the model's parameter dtype,
        removed groups' rows zero).
      kept: per slot, ``{level: kept group indices}``.

    Example:
      >>> from pruneax.models import TyrSupernet
      >>> TyrSupernet.__name__
      'TyrSupernet'
    """

    model: LlamaLM
    kinds: tuple[str, ...]
    units: tuple[int, ...]
    group_size: tuple[int, ...]
    base: tuple[int, ...]
    step: tuple[int, ...]
    low: tuple[int, ...]
    high: tuple[int, ...]
    kernels: tuple[Mapping[int, Any], ...]
    kept: tuple[Mapping[int, tuple[int, ...]], ...]

    def check_genome(self, genome: Any, where: str) -> tuple[int, ...]:
        """``genome`` as a tuple of ints, one per slot within ``[low, high]`` (ValueError else)."""
        g = tuple(genome) if isinstance(genome, Sequence | np.ndarray) else None
        if g is None or len(g) != len(self.kinds) or not all(_is_int(v) for v in g):
            raise ValueError(f"{where}: genome must hold {len(self.kinds)} int levels (one per "
                             f"o_proj / down_proj); got {genome!r}")  # fmt: skip
        for i, (v, lo, hi) in enumerate(zip(g, self.low, self.high, strict=True)):
            if not lo <= v <= hi:
                raise ValueError(f"{where}: genome[{i}] = {v} is outside [{lo}, {hi}]")
        return tuple(int(v) for v in g)

    def pruned_units(self, genome: Any) -> tuple[int, ...]:
        """Per slot, the groups the genome's levels remove."""
        g = self.check_genome(genome, "TyrSupernet.pruned_units")
        return tuple(b + k * s for b, k, s in zip(self.base, g, self.step, strict=True))

    def leaf(self, slot: int) -> str:
        """The leaf name of slot's kernel (``layers/{i}/self_attn/o_proj/kernel`` ...)."""
        return f"layers/{slot // 2}/{_NAMES[self.kinds[slot]]}/kernel"


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | np.integer)


def _check_model(model: Any, where: str) -> None:
    if not isinstance(model, LlamaLM):
        raise ValueError(f"{where}: model must be a LlamaLM; got {type(model).__name__}")


def _slots(model: LlamaLM) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    cfg = model.config
    kinds, units, sizes = [], [], []
    for kv, f in zip(cfg.kv_heads_per_layer, cfg.mlp_per_layer, strict=True):
        kinds += list(KINDS)
        units += [kv, f]
        sizes += [cfg.num_groups * cfg.head_dim, 1]
    return tuple(kinds), tuple(units), tuple(sizes)


def start_units(model: LlamaLM, start: Any, where: str, name: str = "start") -> tuple[int, ...]:
    """Per slot, the groups removed at the start: ``n - int(n (1 - s))`` for a float ``s`` (the
    published rule), or the given counts."""
    kinds, units, _ = _slots(model)
    if not isinstance(start, bool) and isinstance(start, int | float | np.floating | np.integer):
        if not 0.0 <= start < 1.0:
            raise ValueError(f"{where}: {name} (a sparsity) must be in [0, 1); got {start!r}")
        return tuple(n - int(n * (1.0 - start) + _SLACK) for n in units)
    s = tuple(start) if isinstance(start, Sequence | np.ndarray) else None
    if s is None or len(s) != len(kinds) or not all(_is_int(v) for v in s):
        raise ValueError(f"{where}: {name} must be a float sparsity or {len(kinds)} int counts "
                         f"(removed groups per o_proj / down_proj); got {start!r}")  # fmt: skip
    for i, (v, n) in enumerate(zip(s, units, strict=True)):
        if not 0 <= v <= n:
            raise ValueError(f"{where}: {name}[{i}] = {v} must be in [0, {n}]")
    return tuple(int(v) for v in s)


def default_steps(model: LlamaLM) -> tuple[int, int]:
    """Published proportions (4 of Llama-2-7B's 32 heads, 1376 of its 11008 channels): 1/8 of
    the dense key / value heads and of the MLP width, rounded up."""
    cfg = model.config
    return math.ceil(cfg.num_kv_heads / 8), math.ceil(cfg.intermediate_size / 8)


def check_steps(steps: Any, where: str, name: str = "steps") -> tuple[int, int]:
    if (not isinstance(steps, Sequence) or len(steps) != 2
            or not all(_is_int(v) and v >= 1 for v in steps)):  # fmt: skip
        raise ValueError(f"{where}: {name} must be two positive ints (GQA groups, MLP channels "
                         f"per level); got {steps!r}")  # fmt: skip
    return int(steps[0]), int(steps[1])


def _check_positive(where: str, **values: Any) -> None:
    for name, v in values.items():
        if not _is_int(v) or v < 1:
            raise ValueError(f"{where}: {name} must be a positive int; got {v!r}")


def _contexts(model: LlamaLM, ids: np.ndarray, batch_size: int):
    batches = [jnp.asarray(ids[i : i + batch_size]) for i in range(0, ids.shape[0], batch_size)]
    xs = [model.scale_inputs(model.embed(b)) for b in batches]
    ctx = {}
    for x in xs:
        b, t = x.shape[:2]
        if (b, t) not in ctx:
            cos, sin = model.rope(jnp.broadcast_to(jnp.arange(t), (b, t)))
            ctx[b, t] = (cos, sin, jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t)))
    return xs, ctx


def tyr_supernet(
    model: LlamaLM,
    input_ids: Any,
    *,
    start: float | Sequence[int],
    steps: tuple[int, int] | None = None,
    num_levels: int = 9,
    attn_rounds: int = 1,
    mlp_rounds: int = 16,
    score: str = "coded",
    percdamp: float = 0.01,
    batch_size: int = 8,
) -> TyrSupernet:
    """Týr-the-Pruner's supernet: every ``o_proj`` / ``down_proj`` pruned at several levels
    around a start, block by block, with the published "median" error accumulation (module
    docstring).

    Args:
      model: a ``LlamaLM`` (left unchanged).
      input_ids: [n, t] integer calibration token ids (published: 4,194,304 tokens, length
        4096, fineweb-edu).
      start: the level-0 distribution: a float s in [0, 1), every layer keeping
        ``int(n (1 - s))`` of its n groups (the published ``--sparsity``: a fraction of the
        o_proj / down_proj weights, which with the dead producers sliced out is the same
        fraction of all seven projection kernels); or one int per slot (``2 * num_layers``:
        block i's o_proj, then its down_proj), the groups removed (the next round's centre).
      steps: ``(groups, channels)`` one level adds (published on Llama-2-7B: 4 heads and 1376
        channels, halved every outer round); None: ``ceil(num_kv_heads / 8)`` and
        ``ceil(intermediate_size / 8)``.
      num_levels: L, at most ``L // 2`` levels on each side of the start (published: 9).
      attn_rounds / mlp_rounds: ``tyr_local_prune`` rounds (published: 1 and 16).
      score: ``"coded"`` or ``"obs"`` (``tyr_local_prune``).
      percdamp: the Hessian dampening (published: 0.01).
      batch_size: calibration sequences per forward.

    Returns:
      The ``TyrSupernet``.

    Raises:
      ValueError: for a model that is not a ``LlamaLM``, bad ``input_ids``, a bad ``start``
        (sparsity outside [0, 1) or counts of the wrong length / range), ``steps`` not two
        positive ints, non-positive ``num_levels`` / rounds / ``batch_size``, an unknown
        ``score`` or a negative ``percdamp``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import LlamaLM, llm_config, tyr_supernet
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> net = tyr_supernet(model, jnp.arange(32).reshape(2, 16), start=0.5, steps=(1, 16),
      ...                    num_levels=3)
      >>> net.kinds, net.units, net.base, net.low, net.high
      (('o_proj', 'down_proj'), (2, 128), (1, 64), (-1, -1), (1, 1))
      >>> sorted(net.kept[0]), net.kept[0][1]
      ([-1, 0, 1], ())
    """
    where = "tyr_supernet"
    _check_model(model, where)
    ids = _check_ids(input_ids, model.config.vocab_size, where, "input_ids")
    base = start_units(model, start, where)
    attn_step, mlp_step = check_steps(default_steps(model) if steps is None else steps, where)
    _check_positive(where, num_levels=num_levels, attn_rounds=attn_rounds,
                    mlp_rounds=mlp_rounds, batch_size=batch_size)  # fmt: skip
    if score not in SCORES:
        raise ValueError(f"{where}: score must be one of {SCORES}; got {score!r}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, int | float) or percdamp < 0:
        raise ValueError(f"{where}: percdamp must be a float >= 0; got {percdamp!r}")
    kinds, units, sizes = _slots(model)
    step = tuple(attn_step if k == "o_proj" else mlp_step for k in kinds)
    half = num_levels // 2
    low = tuple(-min(b // s, half) for b, s in zip(base, step, strict=True))
    high = tuple(min((n - b) // s, half) for n, b, s in zip(units, base, step, strict=True))

    live = nnx.clone(model)  # the error-accumulating copy
    xs, ctx = _contexts(live, ids, batch_size)
    kernels: list[dict[int, Any]] = []
    kept: list[dict[int, tuple[int, ...]]] = []
    for i, layer in enumerate(live.layers):
        names = [_NAMES[k] for k in KINDS if _linear(layer, _NAMES[k]).kernel.size]
        stats = _block_stats(layer, names, xs, ctx, "sparsegpt")
        for j, kind in enumerate(KINDS):
            slot = 2 * i + j
            lin = _linear(layer, _NAMES[kind])
            kernels.append({})
            kept.append({})
            if units[slot] == 0:  # nothing left to prune
                kernels[slot][0], kept[slot][0] = lin.kernel[...], ()
                continue
            dense = np.asarray(lin.kernel[...], np.float64)
            h = np.asarray(stats[_NAMES[kind]].h, np.float64)
            rounds = attn_rounds if kind == "o_proj" else mlp_rounds
            for k in range(low[slot], high[slot] + 1):
                n_keep = units[slot] - (base[slot] + k * step[slot])
                new, kk = tyr_local_prune(dense, h, units[slot], n_keep, rounds=rounds,
                                          score=score, percdamp=float(percdamp))  # fmt: skip
                kernels[slot][k] = jnp.asarray(new, lin.kernel.dtype)
                kept[slot][k] = kk
            lin.kernel[...] = kernels[slot][0]  # "median" error accumulation
        if i + 1 < len(live.layers):
            xs = [_forward(layer, x, *ctx[x.shape[:2]]) for x in xs]
    return TyrSupernet(
        model=model, kinds=kinds, units=units, group_size=sizes, base=base, step=step, low=low,
        high=high, kernels=tuple(kernels), kept=tuple(kept),
    )  # fmt: skip


def tyr_apply(supernet: TyrSupernet, genome: Any) -> tuple[LlamaLM, StructuredKeep]:
    """A genome's model: the dense model with every ``o_proj`` / ``down_proj`` replaced by its
    candidate at the genome's level (full shapes, removed groups zero), and the
    ``StructuredKeep`` of the kept GQA groups / MLP channels: ``prune_structured(model, keep)``
    is the physically smaller model computing the same function.

    Args:
      supernet: from ``tyr_supernet``.
      genome: one int level per slot, each in ``[supernet.low, supernet.high]``.

    Returns:
      ``(masked_model, keep)``.

    Raises:
      ValueError: if ``supernet`` is not a ``TyrSupernet`` or ``genome`` has the wrong length
        or a level out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import (LlamaLM, llm_config, prune_structured, tyr_apply,
      ...                             tyr_supernet)
      >>> model = LlamaLM(llm_config("tiny", num_layers=1), rngs=nnx.Rngs(0))
      >>> net = tyr_supernet(model, jnp.arange(32).reshape(2, 16), start=0.5, steps=(1, 16))
      >>> masked, keep = tyr_apply(net, (0, 1))
      >>> small = prune_structured(masked, keep)
      >>> small.config.kv_heads_per_layer, small.config.mlp_per_layer
      ((1,), (48,))
    """
    where = "tyr_apply"
    if not isinstance(supernet, TyrSupernet):
        raise ValueError(f"{where}: supernet must be a TyrSupernet; got "
                         f"{type(supernet).__name__}")  # fmt: skip
    g = supernet.check_genome(genome, where)
    masked = nnx.clone(supernet.model)
    heads, mlp = [], []
    for slot, (kind, level) in enumerate(zip(supernet.kinds, g, strict=True)):
        _linear(masked.layers[slot // 2], _NAMES[kind]).kernel[...] = supernet.kernels[slot][level]
        units = supernet.units[slot]
        kept = supernet.kept[slot][level] if units else ()
        (heads if kind == "o_proj" else mlp).append(kept)
    return masked, StructuredKeep(heads=tuple(heads), mlp=tuple(mlp))
