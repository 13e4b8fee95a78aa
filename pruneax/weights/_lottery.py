"""Lottery-ticket steps: prune a round, rewind, random pruning at the same layerwise sparsity.

The outer loop (train, evaluate, prune, rewind, repeat) lives in ``experiments/``; these are the
pure steps it is built from. A randomly re-initialised ticket is ``apply_masks(fresh_params,
masks)`` with ``fresh_params`` from a new initialisation key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import jax
import numpy as np

from pruneax.weights import _checks, _paths
from pruneax.weights._masks import (
    _check_fraction,
    _check_real,
    _kept_by_name,
    _prune_lowest,
    _prune_pool,
    apply_masks,
)
from pruneax.weights._paths import Selector
from pruneax.weights._scores import magnitude_scores


def prune_round(
    params: Any,
    masks: Any,
    rate: float,
    *,
    scope: Literal["layerwise", "global"] = "layerwise",
    prunable: Selector = None,
    overrides: Mapping[str, float] | None = None,
    scores: Any = None,
) -> Any:
    """One round of iterative pruning: removes ``rate`` of the REMAINING weights.

    Layerwise (LTH): each prunable leaf with ``r`` remaining weights loses ``round(rate * r)``
    more, lowest scores first; ``overrides`` set other per-leaf rates (the LTH's "output layer
    10%"). Global (open_lth): the pool of non-overridden leaves loses ``round(rate * R)`` of its
    ``R`` remaining weights.

    Args:
      params: current (trained) parameters.
      masks: the current mask tree, or None for the first round (everything remaining).
      rate: fraction of the remaining weights to prune, in [0, 1).
      scope: "layerwise" or "global".
      prunable: which leaves are pruned (default: dense/conv kernels).
      overrides: ``{glob: rate}`` per-leaf rates (always layerwise).
      scores: scores to rank by (default ``magnitude_scores(params)``).

    Returns:
      the new mask tree; every weight pruned before stays pruned.

    Raises:
      ValueError: rates outside [0, 1), an unknown scope, a selection matching nothing.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> masks = W.prune_round(params, None, 0.5)  # 2 of 4 kernel weights remain
      >>> W.prune_round(params, masks, 0.5)["dense"]["kernel"].tolist()  # then 1 of 2
      [[False, True], [False, False]]
    """
    rate = _check_fraction(rate, "rate")
    _checks.choice(scope, ("layerwise", "global"), "scope", "prune_round")
    names = _paths.prunable_names(params, prunable)
    own = _paths.overridden(names, overrides, "rate")
    own = {n: _check_fraction(v, f"rate of {n!r}") for n, v in own.items()}
    scores = magnitude_scores(params) if scores is None else scores
    flat_scores = _paths.by_name(scores)
    if missing := [n for n in names if n not in flat_scores]:
        raise ValueError(f"prune_round: scores lacks the prunable leaves {missing[:3]} of params")
    _check_real(scores, names, "prune_round")
    prev = _kept_by_name(masks)
    size = {n: int(np.size(flat_scores[n])) for n in names}
    remaining = {n: int(np.sum(prev[n])) if n in prev else size[n] for n in names}
    new = {}
    pool = [n for n in names if n not in own] if scope == "global" else []
    for n in names:
        if n not in pool:
            pruned = size[n] - remaining[n] + round(own.get(n, rate) * remaining[n])
            new[n] = _prune_lowest(flat_scores[n], pruned, prev.get(n))
    if pool:
        total_remaining = sum(remaining[n] for n in pool)
        pruned = sum(size[n] for n in pool) - total_remaining + round(rate * total_remaining)
        new.update(_prune_pool(flat_scores, pool, pruned, prev))
    return _paths.map_named(lambda n, _: new.get(n), params)


def rewind(params: Any, saved: Any, masks: Any) -> Any:
    """Resets to ``saved`` (weights at iteration k; k = 0 is the original LTH), pruned weights 0.

    Every leaf takes its saved value (biases and norms too: the whole network rewinds); prunable
    leaves are then masked. ``params`` only fixes the structure and is checked against it.

    Raises:
      ValueError: if ``saved`` does not have the structure of ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> masks = W.layerwise_masks(W.magnitude_scores(params), 0.5)
      >>> saved = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}  # e.g. the init
      >>> W.rewind(params, saved, masks)["dense"]["kernel"].tolist()
      [[0.0, 1.0], [1.0, 0.0]]
    """
    if jax.tree.structure(params) != jax.tree.structure(saved):
        raise ValueError("rewind: saved must have the structure of params")
    return apply_masks(saved, masks)


def random_masks(key: jax.Array, masks: Any) -> Any:
    """Random pruning at the same layerwise sparsity: per leaf, as many weights kept as in
    ``masks``, at uniformly random positions (the LTH's random-pruning baseline).

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> import jax
      >>> masks = W.layerwise_masks(W.magnitude_scores(params), 0.5)
      >>> shuffled = W.random_masks(jax.random.key(0), masks)
      >>> int(shuffled["dense"]["kernel"].sum()), shuffled["dense"]["bias"]  # same count kept
      (2, None)
    """
    _checks.prng_key(key, "key", "random_masks")
    leaves, treedef = jax.tree.flatten(masks, is_leaf=lambda x: x is None)
    leaves = [m if m is None else _checks.mask(m, "masks", "random_masks") for m in leaves]
    keys = jax.random.split(key, max(1, len(leaves)))
    out = []
    for k, m in zip(keys, leaves, strict=False):
        if m is None:
            out.append(None)
            continue
        pruned = int(np.size(m) - np.sum(m))
        out.append(_prune_lowest(jax.random.uniform(k, np.shape(m)), pruned))
    return jax.tree.unflatten(treedef, out)
