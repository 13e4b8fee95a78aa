"""Týr-the-Pruner on a ``LlamaLM``, part 3: the coarse-to-fine driver ``tyr_prune``.

Published outer loop (AMD-AGI/Tyr-the-Pruner ``script/example.sh``): 4 rounds; each builds a
supernet centred on the previous round's best distribution (the first: uniform at the target
sparsity) and searches it; the level step halves every round, floored at one head and at 32
channels (``max(weights_diff, head_dim * hidden)``, ``max(weights_diff, 32 * hidden)``). The
final model takes every layer's candidate at the last search's best level, and the removed
groups are sliced out (``prune_structured``).

Deviations: steps are whole groups and halve by integer division; the floor is
``min(min_step, step)``, so a first step below the floor never grows; the search seed is the
same every round (the published script reseeds every run with the same ``--seed``).

The sparsity: published ``--sparsity`` s is the fraction of the o_proj / down_proj weights
removed at the start (and kept by the search, which preserves every kind's total). Removing
the fraction s of o_proj's input groups kills the same fraction of q_proj / k_proj / v_proj
outputs (GQA groups here) and removing s of down_proj's channels kills s of gate_proj /
up_proj, so with the dead producers sliced out s is also the fraction of the seven projection
kernels removed, and ``s * P_kernels / P`` of the whole model (embeddings, norms and head
stay). The integer rounding of the start makes each kind's fraction ``1 - int(n (1 - s)) / n``
(``info["spec_sparsity"]`` reports the achieved one, ``info["sparsity"]`` the kernels').

References: "Týr-the-Pruner: Structural Pruning of LLMs through Global Sparsity Distribution
Optimization" (AMD, 2025); code AMD-AGI/Tyr-the-Pruner @ c69d040.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pruneax.models.llama._model import LlamaLM
from pruneax.models.llama._nirvana import _check_ids, _kernel_params
from pruneax.models.llama._tyr import (
    _check_model,
    _check_positive,
    check_steps,
    default_steps,
    start_units,
    tyr_apply,
    tyr_supernet,
)
from pruneax.models.llama._tyr_search import tyr_search
from pruneax.models.structured._prune import prune_structured


def tyr_prune(
    model: LlamaLM,
    input_ids: Any,
    *,
    sparsity: float | Sequence[int],
    search_ids: Any = None,
    outer_rounds: int = 4,
    steps: tuple[int, int] | None = None,
    min_steps: tuple[int, int] = (1, 32),
    num_levels: int = 9,
    generations: int = 50,
    offspring: int = 128,
    survivors: Sequence[int] = (16, 4, 2),
    tokens: Sequence[int] = (2048, 16384, 131072),
    top_k: int = 8192,
    attn_rounds: int = 1,
    mlp_rounds: int = 16,
    score: str = "coded",
    percdamp: float = 0.01,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[LlamaLM, dict[str, Any]]:
    """Týr-the-Pruner: ``outer_rounds`` rounds of supernet (``tyr_supernet``) and search
    (``tyr_search``), coarse to fine, then the physically smaller model (module docstring).

    Args:
      model: a ``LlamaLM`` (left unchanged).
      input_ids: [n, t] integer calibration token ids (the supernets' Hessians).
      sparsity: the start (``tyr_supernet``'s ``start``): a float s in [0, 1), the fraction
        of every o_proj's and down_proj's groups removed (``int(n (1 - s))`` kept), or one int
        per slot.
      search_ids: [n, t] token ids of the search (None: ``input_ids``; published: another
        draw from the same corpus).
      outer_rounds: supernet + search rounds (published 4).
      steps: the first round's ``(groups, channels)`` per level (None: ``tyr_supernet``'s
        default, 1/8 of each kind); halved every round.
      min_steps: the floors of the halving (published: one head, 32 channels).
      num_levels / attn_rounds / mlp_rounds / score / percdamp: ``tyr_supernet``'s.
      generations / offspring / survivors / tokens / top_k / seed: ``tyr_search``'s.
      batch_size: sequences per forward.

    Returns:
      ``(pruned_model, info)``: the smaller ``LlamaLM`` and ``info`` with ``"genome"`` (the
      last search's best), ``"pruned_units"`` (per slot), ``"keep"`` (the ``StructuredKeep``),
      ``"kv_heads"`` / ``"mlp"`` (kept units per layer), ``"sparsity"`` (the fraction of the
      q / k / v / o / gate / up / down kernel parameters removed), ``"spec_sparsity"`` (of the
      o_proj + down_proj weights), ``"rounds"`` (per round: ``"steps"``, ``"start"``,
      ``"genome"``, ``"fitness"``) and ``"supernet"`` (the last one).

    Raises:
      ValueError: for a model that is not a ``LlamaLM``, bad ids, a bad ``sparsity``, non-
        positive sizes, or any argument ``tyr_supernet`` / ``tyr_search`` reject.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from pruneax.models import LlamaLM, llm_config, tyr_prune
      >>> model = LlamaLM(llm_config("tiny", num_layers=2), rngs=nnx.Rngs(0))
      >>> small, info = tyr_prune(model, jnp.arange(64).reshape(4, 16), sparsity=0.5,
      ...                         outer_rounds=2, steps=(1, 16), min_steps=(1, 8),
      ...                         num_levels=3, generations=1, offspring=2, survivors=(1,),
      ...                         tokens=(32,), top_k=16)
      >>> [r["steps"] for r in info["rounds"]], info["sparsity"]
      ([(1, 16), (1, 8)], 0.5)
    """
    where = "tyr_prune"
    _check_model(model, where)
    _check_ids(input_ids, model.config.vocab_size, where, "input_ids")
    search = input_ids if search_ids is None else search_ids
    _check_ids(search, model.config.vocab_size, where, "search_ids")
    start = start_units(model, sparsity, where, "sparsity")
    step = check_steps(default_steps(model) if steps is None else steps, where)
    floor = check_steps(min_steps, where, "min_steps")
    _check_positive(where, outer_rounds=outer_rounds)
    rounds, net, genome = [], None, None
    for _ in range(outer_rounds):
        net = tyr_supernet(
            model, input_ids, start=start, steps=step, num_levels=num_levels,
            attn_rounds=attn_rounds, mlp_rounds=mlp_rounds, score=score, percdamp=percdamp,
            batch_size=batch_size,
        )  # fmt: skip
        genome, sinfo = tyr_search(
            net, search, generations=generations, offspring=offspring, survivors=survivors,
            tokens=tokens, top_k=top_k, seed=seed, batch_size=batch_size,
        )  # fmt: skip
        rounds.append({"steps": step, "start": start, "genome": genome,
                       "fitness": sinfo["fitness"]})  # fmt: skip
        start = net.pruned_units(genome)
        step = tuple(max(s // 2, min(f, s)) for s, f in zip(step, floor, strict=True))
    masked, keep = tyr_apply(net, genome)
    pruned = prune_structured(masked, keep)
    removed = sum(p * gs for p, gs in zip(start, net.group_size, strict=True))
    total = sum(n * gs for n, gs in zip(net.units, net.group_size, strict=True))
    info = {
        "genome": genome,
        "pruned_units": start,
        "keep": keep,
        "kv_heads": pruned.config.kv_heads_per_layer,
        "mlp": pruned.config.mlp_per_layer,
        "sparsity": 1.0 - _kernel_params(pruned.config) / _kernel_params(model.config),
        "spec_sparsity": removed / total if total else 0.0,
        "rounds": rounds,
        "supernet": net,
    }
    return pruned, info
