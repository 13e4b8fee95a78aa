"""ECoFLaP's first stage: a global importance per group of weight matrices -> per-group sparsity.

Zeroth-order importance (MeZO, the published ``MEZO-GradOnly`` setting): for every matrix
theta_k separately and every calibration batch, one Gaussian direction z of theta_k's shape and
the central difference ``g = (L(theta_k + eps z) - L(theta_k - eps z)) / (2 eps)`` with every
other weight fixed; the matrix's score is the sum of ``|g|`` over batches (and ``num_noise``
directions). The perturbed value is a COPY swapped into the tree: the parameters are never
perturbed and restored in place (the published code's ``+eps z, -2 eps z, +eps z`` sequence
drifts by rounding). A group's score is the sum of its matrices' scores (``"sum"``, the
published default) or that sum over the group's parameter count (``"avg"``). A first-order
alternative (``first_order_scores``: ``sum W^2 * mean_b g_b^2``, the published
``GradMagSquare``) is offered too.

Allocation (``allocate_keep`` / ``allocate_sparsity``): keep budget
``K = int(P_total (1 - sparsity))``; each group first keeps ``ceil(P_g (1 - max_sparsity))``;
the rest is shared in proportion to score and capped at ``P_g``. The published loop
(``compute_the_sparsity_per_group``) adds ``ceil`` shares repeatedly with fix-up loops and can
stall; here it is a closed-form water-filling (sort the saturation points, solve for the
level) followed by largest-remainder rounding, so the total kept is exactly K and it always
terminates.

Reference: Sung et al., "ECoFLaP: Efficient Coarse-to-Fine Layer-wise Pruning for
Vision-Language Models", ICLR 2024; code ylsung/ECoFLaP
``LAVIS/lavis/compression/pruners/layer_single_base_pruner.py::LayerSparsity``
(read, not copied).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.weights import _checks
from pruneax.weights._paths import path_name


def _flat(params: Any, names: Iterable[str], where: str):
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    index = {path_name(p): i for i, (p, _) in enumerate(flat)}
    leaves = [leaf for _, leaf in flat]
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"{where}: groups name leaves not in params: {missing[:3]}")
    return leaves, treedef, index


def _check_groups(groups: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"{where}: groups must be a non-empty {{group: [leaf names]}} mapping")
    out = {}
    for g, names in groups.items():
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise ValueError(f"{where}: groups[{g!r}] must be a non-empty list of leaf names")
        out[g] = list(names)
    return out


def _check_batches(batches: Any, where: str) -> list:
    batches = _checks.items(batches, "batches", where) if batches is not None else []
    if not batches:
        raise ValueError(f"{where}: batches is empty: no calibration data")
    for i, batch in enumerate(batches):  # each is an argument of a jitted call: arrays only
        for leaf in jax.tree.leaves(batch):
            _checks.numeric(leaf, f"batches[{i}]", where)
    return batches


@functools.partial(jax.jit, static_argnames=("loss_fn", "treedef", "members"))
def _central(loss_fn, treedef, members, leaves, pos, w, z, eps, batch):
    """(L(w + eps z) - L(w - eps z)) / 2 eps with ``w`` swapped in at ``members[pos]``: one
    compilation per class of same-shaped leaves, the slot chosen by a traced ``jnp.where``."""

    def loss_at(value):
        new = list(leaves)
        for t, j in enumerate(members):
            new[j] = jnp.where(pos == t, value, leaves[j])
        return loss_fn(jax.tree.unflatten(treedef, new), batch)

    wide = jnp.promote_types(w.dtype, jnp.float32)
    step = eps * z.astype(wide)
    up, down = (
        loss_at((w.astype(wide) + step).astype(w.dtype)),
        loss_at((w.astype(wide) - step).astype(w.dtype)),
    )
    wide = jnp.promote_types(up.dtype, jnp.float32)
    return (up.astype(wide) - down.astype(wide)) / (2 * eps)


def zeroth_order_scores(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    groups: Mapping[str, Sequence[str]],
    batches: Iterable[Any],
    *,
    key: jax.Array,
    eps: float = 1e-3,
    num_noise: int = 1,
    progress: Callable[[int, int, str, float], None] | None = None,
    done: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """ECoFLaP's zeroth-order (MeZO) importance: one scalar per weight matrix.

    For leaf k (position ``k`` in ``jax.tree.leaves(params)`` order), batch b and direction n:
    ``z = jax.random.normal(fold_in(fold_in(fold_in(key, k), b), n), shape, float32)``,
    ``g = (loss_fn(params with leaf k -> w + eps z, batch) - loss_fn(params with leaf k ->
    w - eps z, batch)) / (2 eps)`` (``w +- eps z`` formed in at least float32, then cast to the
    leaf's dtype; every other leaf as given). The score is ``sum_b sum_n |g|`` (a
    finite-difference estimate of ``|<grad_k L, z>|``).

    Args:
      loss_fn: ``(params, batch) -> scalar`` loss; hashable (it is a static jit argument: keep
        one function object to reuse compilations).
      params: the parameter pytree (not modified).
      groups: ``{group: [leaf names]}`` (names as ``leaf_names`` gives them); every listed leaf
        is scored.
      batches: an iterable of calibration batches, each passed to ``loss_fn`` as is.
      key: a ``jax.random`` key.
      eps: the perturbation size, > 0.
      num_noise: directions per batch, >= 1.
      progress: called as ``progress(done, total, leaf name, score)`` after each leaf (long
        runs: two forwards per leaf, batch and direction); with ``done``, a way to save partial
        results.
      done: ``{leaf name: score}`` already computed by an interrupted call with the same
        ``key``, ``batches``, ``eps`` and ``num_noise``: those leaves are not scored again. A
        leaf's directions depend only on the key, its index, the batch and the direction
        number, so the result equals an uninterrupted call's.

    Returns:
      ``{leaf name: score}`` (Python floats) for every leaf named in ``groups``.

    Raises:
      ValueError: for empty / malformed ``groups``, names not in ``params``, no ``batches``,
        ``eps`` <= 0, ``num_noise`` < 1.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"a": jnp.ones((2, 2)), "b": jnp.zeros((2, 2))}
      >>> loss = lambda p, x: jnp.sum((x @ p["a"]) ** 2)
      >>> s = W.zeroth_order_scores(loss, params, {"g": ["a", "b"]}, [jnp.ones((1, 2))],
      ...                           key=jax.random.key(0))
      >>> s["b"], s["a"] > 0
      (0.0, True)
    """
    where = "zeroth_order_scores"
    groups = _check_groups(groups, where)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise ValueError(f"{where}: eps must be a float > 0; got {eps!r}")
    if isinstance(num_noise, bool) or not isinstance(num_noise, int) or num_noise < 1:
        raise ValueError(f"{where}: num_noise must be an int >= 1; got {num_noise!r}")
    batches = _check_batches(batches, where)
    names = list(dict.fromkeys(n for ns in groups.values() for n in ns))
    leaves, treedef, index = _flat(params, names, where)
    leaves = [jnp.asarray(x) for x in leaves]
    classes: dict[tuple, list[int]] = {}
    for n in names:
        leaf = leaves[index[n]]
        classes.setdefault((leaf.shape, str(leaf.dtype)), []).append(index[n])
    done = {} if done is None else dict(_checks.mapping(done, "done", where))
    done = {n: _checks.real(v, f"done[{n!r}]", where) for n, v in done.items()}
    if unknown := [n for n in done if n not in names]:
        raise ValueError(f"{where}: done names leaves not in groups: {unknown[:3]}")
    _checks.function(loss_fn, "loss_fn", where)
    _checks.prng_key(key, "key", where)
    if progress is not None:
        _checks.function(progress, "progress", where)
    out = {}
    for n in names:
        if n in done:
            out[n] = done[n]
            continue
        k = index[n]
        w = leaves[k]
        members = tuple(classes[(w.shape, str(w.dtype))])
        pos = jnp.int32(members.index(k))
        total = 0.0
        for b, batch in enumerate(batches):
            for j in range(num_noise):
                sub = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, k), b), j)
                z = jax.random.normal(sub, w.shape, jnp.float32)
                g = _central(loss_fn, treedef, members, leaves, pos, w, z, float(eps), batch)
                total += abs(float(g))
        out[n] = total
        if progress is not None:
            progress(len(out), len(names), n, total)
    return out


def first_order_scores(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    groups: Mapping[str, Sequence[str]],
    batches: Iterable[Any],
) -> dict[str, float]:
    """ECoFLaP's first-order alternative (published ``GradMagSquare``, a diagonal Fisher):
    ``sum(W^2 * mean_b g_b^2)`` per matrix, ``g_b = jax.grad(loss_fn)(params, batch_b)``.

    Args:
      loss_fn: ``(params, batch) -> scalar`` loss.
      params: the parameter pytree.
      groups: ``{group: [leaf names]}``.
      batches: an iterable of calibration batches.

    Returns:
      ``{leaf name: score}`` (Python floats) for every leaf named in ``groups``.

    Raises:
      ValueError: for empty / malformed ``groups``, names not in ``params``, no ``batches``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"a": jnp.full((1, 1), 2.0)}
      >>> loss = lambda p, x: jnp.sum(x @ p["a"])  # gradient x = 3
      >>> W.first_order_scores(loss, params, {"g": ["a"]}, [jnp.full((1, 1), 3.0)])
      {'a': 36.0}
    """
    where = "first_order_scores"
    groups = _check_groups(groups, where)
    batches = _check_batches(batches, where)
    names = list(dict.fromkeys(n for ns in groups.values() for n in ns))
    leaves, _, index = _flat(params, names, where)
    _checks.function(loss_fn, "loss_fn", where)
    grad = jax.jit(jax.grad(loss_fn))
    acc = [jnp.zeros(jnp.shape(leaves[index[n]]), jnp.float32) for n in names]
    for batch in batches:
        gl = jax.tree.leaves(grad(params, batch))
        acc = [
            a + jnp.square(gl[index[n]].astype(jnp.float32))
            for a, n in zip(acc, names, strict=True)
        ]
    return {
        n: float(jnp.sum(jnp.square(jnp.asarray(leaves[index[n]], jnp.float32)) * a / len(batches)))
        for a, n in zip(acc, names, strict=True)
    }


def group_scores(
    leaf_scores: Mapping[str, float],
    groups: Mapping[str, Sequence[str]],
    params: Any,
    *,
    reduce: str = "sum",
) -> np.ndarray:
    """One score per group from per-matrix scores: their sum (``"sum"``, ECoFLaP's published
    default) or that sum over the group's parameter count (``"avg"``).

    Args:
      leaf_scores: ``{leaf name: score}`` (``zeroth_order_scores`` / ``first_order_scores``).
      groups: ``{group: [leaf names]}``.
      params: the parameter pytree (for the sizes).
      reduce: ``"sum"`` or ``"avg"``.

    Returns:
      float64 [num_groups] in ``groups`` order.

    Raises:
      ValueError: for an unknown ``reduce``, malformed ``groups`` or a leaf without a score.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> W.group_scores({"a": 4.0, "b": 2.0}, {"g": ["a", "b"]}, params, reduce="avg")
      array([1.])
    """
    where = "group_scores"
    _checks.choice(reduce, ("sum", "avg"), "reduce", where)
    groups = _check_groups(groups, where)
    names = [n for ns in groups.values() for n in ns]
    leaves, _, index = _flat(params, names, where)
    _checks.mapping(leaf_scores, "leaf_scores", where)
    missing = [n for n in names if n not in leaf_scores]
    if missing:
        raise ValueError(f"{where}: leaf_scores has no score for {missing[:3]}")
    scores = {n: _checks.real(leaf_scores[n], f"leaf_scores[{n!r}]", where) for n in names}
    out = []
    for ns in groups.values():
        s = float(sum(scores[n] for n in ns))
        size = sum(int(np.size(leaves[index[n]])) for n in ns)
        out.append(s / size if reduce == "avg" and size else s)
    return np.asarray(out, np.float64)
