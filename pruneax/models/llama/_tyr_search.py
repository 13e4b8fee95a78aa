"""Týr-the-Pruner on a ``LlamaLM``, part 2: the evolutionary search of the layer-wise sparsity
over a ``TyrSupernet`` (fitness: ``_tyr_fitness``).

Search (AMD-AGI/Tyr-the-Pruner ``search_sparsity_dist.py``): the genome holds one level per
slot, starting at all zeros (the supernet's centre). Each generation makes ``offspring``
distinct mutants of the parent, each by ``min(U{1..4}, U{1..4})`` flips; a flip lowers one
slot's level by one and raises a DIFFERENT slot of the SAME kind (o_proj with o_proj,
down_proj with down_proj) by one, so every kind's removed parameters, and the model's total,
are unchanged. Selection in stages: on a fresh random minibatch of ``tokens[j]`` calibration
tokens (whole sequences drawn without replacement, the last one cut to fit), keep the
``survivors[j]`` lowest fitnesses; the parent joins before the last stage (elitist); the best
of the last stage is the next parent. Fitness (``sparse_kl``): KL(dense || pruned) over the
dense model's ``top_k`` logits of every position but each sequence's last, both sides
renormalised by a log-softmax over those ids, averaged over tokens. Published sizes: 50
generations, 128 offspring, survivors 16 / 4 / 2 on 2048 / 16384 / 131072 tokens, top-k 8192.

Deviations from the published code: a flip never pairs a slot with itself (the published
increment may pick the decremented layer, a no-op flip), and chooses the lowered slot only
among those with a partner (the published loop spins forever otherwise); offspring stop after
``50 * offspring + 100`` draws if duplicates leave too few (the published loop can spin); a
minibatch larger than the calibration set uses all of it; the parent joins before the last
stage by position (published: by the survivor count, so an earlier stage with the same count
would also add it); ties keep the earlier candidate (``np.argsort`` stable); the published
``max_level`` / ``max_total_deviation`` filters (off by default) and the periodic perplexity
evaluation are left out.

References: "Týr-the-Pruner: Structural Pruning of LLMs through Global Sparsity Distribution
Optimization" (AMD, 2025); code AMD-AGI/Tyr-the-Pruner @ c69d040.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pruneax.models.llama._nirvana import _check_ids
from pruneax.models.llama._tyr import TyrSupernet, _check_positive, _is_int
from pruneax.models.llama._tyr_fitness import _Fitness


def _check_space(genome, low, high, kinds, where) -> tuple[tuple[int, ...], ...]:
    seqs = [genome, low, high]
    if not all(isinstance(s, Sequence | np.ndarray) for s in (*seqs, kinds)):
        raise ValueError(f"{where}: genome, low, high and kinds must be sequences")
    g, lo, hi = (tuple(s) for s in seqs)
    if not (len(g) == len(lo) == len(hi) == len(kinds)) or not g:
        raise ValueError(f"{where}: genome, low, high and kinds must have one entry per slot; "
                         f"got lengths {len(g)}, {len(lo)}, {len(hi)}, {len(kinds)}")  # fmt: skip
    if not all(_is_int(v) for v in (*g, *lo, *hi)):
        raise ValueError(f"{where}: genome, low and high must hold ints")
    bad = [i for i in range(len(g)) if not lo[i] <= g[i] <= hi[i]]
    if bad:
        raise ValueError(f"{where}: genome[{bad[0]}] = {g[bad[0]]} is outside "
                         f"[{lo[bad[0]]}, {hi[bad[0]]}]")  # fmt: skip
    return tuple(int(v) for v in g), tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def _flip(g: list[int], lo, hi, kinds, rng: np.random.Generator) -> bool:
    n = len(g)
    up = [j for j in range(n) if g[j] + 1 <= hi[j]]
    down = [i for i in range(n)
            if g[i] - 1 >= lo[i] and any(j != i and kinds[j] == kinds[i] for j in up)]  # fmt: skip
    if not down:
        return False
    i = down[int(rng.integers(len(down)))]
    partners = [j for j in up if j != i and kinds[j] == kinds[i]]
    j = partners[int(rng.integers(len(partners)))]
    g[i] -= 1
    g[j] += 1
    return True


def tyr_mutate(
    genome: Sequence[int],
    low: Sequence[int],
    high: Sequence[int],
    kinds: Sequence[str],
    rng: np.random.Generator,
    *,
    num_flips: int | None = None,
) -> tuple[int, ...]:
    """One parameter-preserving mutation: ``num_flips`` times (None: ``min(U{1..4},
    U{1..4})``, the published bias to few), lower a random slot's level by one and raise a
    different slot of the same kind by one (levels kept within ``[low, high]``).

    Args:
      genome: one int level per slot.
      low / high: per slot, the lowest / highest level.
      kinds: per slot, its kind (flips pair equal kinds).
      rng: a ``np.random.Generator``.
      num_flips: flips to make (fewer when no flip is possible).

    Returns:
      The mutant genome (the sum of levels of every kind is unchanged).

    Raises:
      ValueError: for sequences of different lengths, non-int levels, a level outside its
        range, an rng that is not a ``np.random.Generator`` or a non-positive ``num_flips``.

    Example:
      >>> import numpy as np
      >>> from pruneax.models import tyr_mutate
      >>> kinds = ("o_proj", "down_proj") * 2
      >>> child = tyr_mutate((0, 0, 0, 0), (-1,) * 4, (1,) * 4, kinds, np.random.default_rng(0))
      >>> child[0] + child[2], child[1] + child[3]
      (0, 0)
    """
    where = "tyr_mutate"
    g, lo, hi = _check_space(genome, low, high, kinds, where)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{where}: rng must be a np.random.Generator; got {type(rng).__name__}")
    if num_flips is not None and (not _is_int(num_flips) or num_flips < 1):
        raise ValueError(f"{where}: num_flips must be None or a positive int; got {num_flips!r}")
    if num_flips is None:
        num_flips = int(min(rng.integers(1, 5), rng.integers(1, 5)))
    out = list(g)
    for _ in range(num_flips):
        if not _flip(out, lo, hi, tuple(kinds), rng):
            break
    return tuple(out)


def tyr_offspring(
    parent: Sequence[int],
    low: Sequence[int],
    high: Sequence[int],
    kinds: Sequence[str],
    count: int,
    rng: np.random.Generator,
) -> list[tuple[int, ...]]:
    """``count`` DISTINCT mutants of ``parent`` (``tyr_mutate``; duplicates are drawn again),
    fewer when ``50 * count + 100`` draws do not find enough (the mutant may equal the parent,
    as published).

    Args:
      parent / low / high / kinds / rng: as ``tyr_mutate``.
      count: mutants wanted (published: 128).

    Returns:
      The list of distinct genomes, in the order drawn.

    Raises:
      ValueError: as ``tyr_mutate``, or a non-positive ``count``.

    Example:
      >>> import numpy as np
      >>> from pruneax.models import tyr_offspring
      >>> kids = tyr_offspring((0, 0, 0, 0), (-1,) * 4, (1,) * 4, ("o_proj", "down_proj") * 2,
      ...                      8, np.random.default_rng(0))
      >>> len(kids), len(set(kids))
      (8, 8)
    """
    _check_space(parent, low, high, kinds, "tyr_offspring")
    _check_positive("tyr_offspring", count=count)
    out: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(50 * count + 100):
        if len(out) == count:
            break
        child = tyr_mutate(parent, low, high, kinds, rng)
        if child not in seen:
            seen.add(child)
            out.append(child)
    return out


def _draw(rng: np.random.Generator, n: int, t: int, tokens: int):
    seqs, lens, used = [], [], 0
    for s in rng.permutation(n):
        if used >= tokens:
            break
        seqs.append(int(s))
        lens.append(min(t, tokens - used))
        used += lens[-1]
    return np.asarray(seqs), np.asarray(lens)


def _check_stages(survivors: Any, tokens: Any, where: str) -> None:
    ok = lambda v: isinstance(v, Sequence) and len(v) > 0 and all(_is_int(x) and x >= 1 for x in v)
    if not ok(survivors):
        raise ValueError(f"{where}: survivors must be a non-empty sequence of positive ints; "
                         f"got {survivors!r}")  # fmt: skip
    if not ok(tokens) or len(tokens) != len(survivors):
        raise ValueError(f"{where}: tokens must hold one positive int per selection stage "
                         f"({len(survivors)}); got {tokens!r}")  # fmt: skip


def tyr_search(
    supernet: TyrSupernet,
    input_ids: Any,
    *,
    generations: int = 50,
    offspring: int = 128,
    survivors: Sequence[int] = (16, 4, 2),
    tokens: Sequence[int] = (2048, 16384, 131072),
    top_k: int = 8192,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Týr-the-Pruner's evolutionary search of the levels (module docstring), from all zeros.

    Args:
      supernet: from ``tyr_supernet``.
      input_ids: [n, t] integer calibration token ids the minibatches are drawn from.
      generations / offspring: published 50 and 128.
      survivors / tokens: per selection stage, the candidates kept and the minibatch tokens
        (published: 16 / 4 / 2 and 2048 / 16384 / 131072).
      top_k: the sparse KL's ids per position (published 8192; at most the vocabulary).
      seed: seeds the mutations and the minibatches (``np.random.default_rng``).
      batch_size: sequences per forward.

    Returns:
      ``(best, info)``: the last parent and ``info`` with ``"fitness"`` (per generation, the
      new parent's fitness on its last-stage minibatch), ``"parents"`` and ``"evaluations"``.

    Raises:
      ValueError: for a bad supernet or ``input_ids``, non-positive sizes or a ``tokens`` of
        another length than ``survivors``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import LlamaLM, llm_config, tyr_search, tyr_supernet
      >>> model = LlamaLM(llm_config("tiny", num_layers=2), rngs=nnx.Rngs(0))
      >>> ids = jnp.arange(64).reshape(4, 16)
      >>> net = tyr_supernet(model, ids, start=0.5, steps=(1, 16), num_levels=3)
      >>> best, info = tyr_search(net, ids, generations=1, offspring=3, survivors=(2, 1),
      ...                         tokens=(16, 64), top_k=32)
      >>> net.pruned_units(best)[1] + net.pruned_units(best)[3], len(info["fitness"])
      (128, 1)
    """
    where = "tyr_search"
    if not isinstance(supernet, TyrSupernet):
        raise ValueError(f"{where}: supernet must be a TyrSupernet; got "
                         f"{type(supernet).__name__}")  # fmt: skip
    ids = _check_ids(input_ids, supernet.model.config.vocab_size, where, "input_ids")
    if ids.shape[1] < 2:
        raise ValueError(f"{where}: input_ids must have >= 2 tokens per sequence (the last "
                         f"position is not scored); got shape {ids.shape}")  # fmt: skip
    _check_positive(where, generations=generations, offspring=offspring, top_k=top_k,
                    batch_size=batch_size)  # fmt: skip
    _check_stages(survivors, tokens, where)
    if not _is_int(seed):
        raise ValueError(f"{where}: seed must be an int; got {seed!r}")
    rng = np.random.default_rng(seed)
    fit = _Fitness(supernet, ids, top_k, batch_size)
    net, parent = supernet, (0,) * len(supernet.kinds)
    info: dict[str, Any] = {"fitness": [], "parents": [], "evaluations": 0}
    for _ in range(generations):
        cands = tyr_offspring(parent, net.low, net.high, net.kinds, offspring, rng)
        scores: list[float] = []
        for stage, (keep, n_tok) in enumerate(zip(survivors, tokens, strict=True)):
            if stage == len(survivors) - 1 and parent not in cands:
                cands.append(parent)  # elitist
            seqs, lens = _draw(rng, len(ids), ids.shape[1], n_tok)
            scores = [fit(c, seqs, lens) for c in cands]
            info["evaluations"] += len(cands)
            order = np.argsort(scores, kind="stable")[:keep]
            cands, scores = [cands[i] for i in order], [scores[i] for i in order]
        parent = cands[0]
        info["fitness"].append(scores[0])
        info["parents"].append(parent)
    return parent, info
