"""Masks for pruned filters and the iterative schedule of "Pruning by Explaining" (Yeom et al.).

Each iteration scores the filters of the current network (LRP, weight L1, Taylor or a custom
criterion from ``pruneax.weights``), masks the globally lowest ones and retrains. Filters are
masked here: a masked filter's kernel column and bias are zero, so its output is constant zero
after the ReLU. ``pruneax.models.convnets.remove_filters`` (ConvNet, LeNet300100) then removes
them physically: it takes the same ``(layer, index)`` pairs and returns a smaller model without
those filters and the next layer's matching inputs, computing the same logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.weights import _checks, _lrp, _paths
from pruneax.weights._filters import (
    DEFAULT_NORM,
    NORMS,
    Batches,
    lowest_filters,
    lrp_filter_scores,
    taylor_filter_scores,
    weight_filter_scores,
)
from pruneax.weights._masks import apply_masks


def filter_masks(params: Any, pruned: Iterable[tuple[str, int]]) -> Any:
    """A mask tree that removes the given filters: their kernel column (last axis) and bias.

    Args:
      params: the parameter pytree.
      pruned: ``(layer name, output index)`` pairs; the layer needs ``{name}/kernel``.

    Returns:
      A mask tree (bool arrays, True = kept, on the pruned layers' kernel and bias; None on
      every other leaf), for ``apply_masks`` / ``masked_optimizer``.

    Raises:
      ValueError: for an unknown layer or an index out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"c": {"kernel": jnp.ones((1, 1, 1, 3)), "bias": jnp.ones(3)}}
      >>> W.filter_masks(params, [("c", 1)])["c"]["bias"].tolist()
      [True, False, True]
    """
    flat = _paths.by_name(params)
    drop: dict[str, list[int]] = {}
    for i, item in enumerate(_checks.items(pruned, "pruned", "filter_masks")):
        layer, j = _checks.pair(item, f"pruned[{i}]", "filter_masks")
        w = flat.get(f"{layer}/kernel")
        if w is None:
            raise ValueError(f"filter_masks: params has no {layer}/kernel (pruned layer {layer!r})")
        if not _checks.shape_of(w, f"params {layer}/kernel", "filter_masks"):
            raise ValueError(f"filter_masks: params {layer}/kernel is 0-d; it has no filters")
        if not 0 <= int(j) < np.shape(w)[-1]:
            raise ValueError(f"filter_masks: index {j} out of range for {layer!r}")
        drop.setdefault(layer, []).append(int(j))

    def leaf(name, p):
        layer, _, last = name.rpartition("/")
        if layer not in drop or last not in ("kernel", "bias"):
            return None
        m = np.ones(np.shape(p), bool)
        m[..., drop[layer]] = False
        return jnp.asarray(m)

    return _paths.map_named(leaf, params)


def _fraction(v: object, name: str, hi_closed: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a float; got {type(v).__name__} {v!r}")
    ok = 0 < float(v) <= 1 if hi_closed else 0 < float(v) < 1
    if not ok:
        raise ValueError(f"{name} must be in (0, {'1]' if hi_closed else '1)'}; got {v!r}")
    return float(v)


def iterative_filter_pruning(
    params: Any,
    plan: Sequence[_lrp.LRPLayer],
    batches: Batches,
    retrain: Callable[[Any, Any], Any],
    *,
    criterion: str | Callable[..., Mapping[str, jax.Array]] = "lrp",
    pr_step: float = 0.05,
    total_pr: float = 0.9,
    eps: float = 1e-9,
    normalize: str | None = "default",
) -> tuple[Any, Any, list[list[tuple[str, int]]]]:
    """The iterative schedule of "Pruning by Explaining": score, mask, retrain, repeat.

    With ``N`` conv filters in the plan: ``k = int(N * pr_step)`` filters per iteration and
    ``int(int(N / k) * total_pr)`` iterations (as the published code; pr_step 0.05 and
    total_pr 0.9 give 18). Each iteration recomputes the scores on the current (masked)
    network, ranks the filters not yet pruned globally, masks the ``k`` lowest, then calls
    ``retrain(params, masks)`` and re-applies the masks to its result. The published code's
    final fine-tuning (15 epochs) is left to the caller.

    Args:
      params: parameter pytree with the plan's leaves.
      plan: the network as ``LRPLayer`` objects (the conv layers' filters are pruned).
      batches: the pruning set: ``(x, labels)`` pairs (re-iterable) or a zero-argument callable
        returning them (called once per iteration).
      retrain: ``(params, masks) -> params``, e.g. a few epochs with ``masked_optimizer``.
      criterion: ``"lrp"``, ``"weight"``, ``"taylor"`` or ``fn(params, plan, batches) ->
        {conv layer: [C] scores}`` (already normalised).
      pr_step: fraction of the ORIGINAL filter count pruned per iteration, in (0, 1].
      total_pr: target fraction, in (0, 1).
      eps: z+ stabiliser for ``"lrp"``.
      normalize: ``"default"`` (lrp / weight: L1, taylor: L2), ``"l1"``, ``"l2"`` or None.

    Returns:
      ``(params, masks, pruned)``: the masked, retrained parameters, the mask tree
      (``filter_masks``) and the ``(layer, index)`` pairs pruned at each iteration.

    Raises:
      ValueError: bad pr_step / total_pr (also when they give fewer than one filter or one
        iteration), eps, criterion, plan without conv layers, or labels.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> plan = (W.LRPLayer("conv", "c", padding="VALID"), W.LRPLayer("relu"),
      ...         W.LRPLayer("flatten"), W.LRPLayer("dense", "out"))
      >>> params = {"c": {"kernel": jnp.arange(1.0, 5.0).reshape(1, 1, 1, 4)},
      ...           "out": {"kernel": jnp.ones((4, 2))}}
      >>> _, masks, pruned = W.iterative_filter_pruning(
      ...     params, plan, [(jnp.ones((1, 1, 1, 1)), jnp.array([0]))], lambda p, m: p,
      ...     criterion="weight", pr_step=0.25, total_pr=0.5)
      >>> pruned
      [[('c', 0)], [('c', 1)]]
    """
    plan = _lrp.check_plan(plan, "iterative_filter_pruning")
    pr_step = _fraction(pr_step, "pr_step", hi_closed=True)
    total_pr = _fraction(total_pr, "total_pr", hi_closed=False)
    eps = _lrp.check_eps(eps)
    if not callable(retrain):
        raise ValueError(f"retrain must be callable (params, masks) -> params; got {retrain!r}")
    if callable(criterion):
        score = criterion
    elif isinstance(criterion, str) and criterion in DEFAULT_NORM:
        _checks.choice(normalize, ("default", *NORMS), "normalize", "iterative_filter_pruning")
        norm = DEFAULT_NORM[criterion] if normalize == "default" else normalize
        score = {
            "lrp": functools.partial(lrp_filter_scores, eps=eps, normalize=norm),
            "taylor": functools.partial(taylor_filter_scores, normalize=norm),
            "weight": lambda p, pl, _b: weight_filter_scores(p, pl, normalize=norm),
        }[criterion]
    else:
        raise ValueError(f"criterion must be 'lrp', 'weight', 'taylor' or a callable; got "
                         f"{criterion!r}")  # fmt: skip
    flat = _paths.by_name(params)
    convs = [layer.name for layer in plan if layer.kind == "conv"]
    if not convs:
        raise ValueError("iterative_filter_pruning: the plan has no conv layer to prune")
    n = sum(int(_lrp._param(flat, layer, "kernel").shape[-1]) for layer in plan
            if layer.kind == "conv")  # fmt: skip
    per_iter = int(n * pr_step)
    if per_iter < 1:
        raise ValueError(f"pr_step={pr_step} prunes int({n} * pr_step) = 0 of the {n} filters")
    iterations = int(int(n / per_iter) * total_pr)
    if iterations < 1:
        raise ValueError(f"total_pr={total_pr} gives 0 iterations of {per_iter} of {n} filters")
    done: list[tuple[str, int]] = []
    history = []
    masks = filter_masks(params, done)
    for _ in range(iterations):
        scores = score(params, plan, batches)
        scores = {c: scores[c] for c in convs}
        step = lowest_filters(scores, per_iter, exclude=done)
        history.append(step)
        done += step
        masks = filter_masks(params, done)
        params = apply_masks(params, masks)
        params = apply_masks(retrain(params, masks), masks)
    return params, masks, history
