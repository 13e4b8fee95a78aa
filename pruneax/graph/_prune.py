"""Scoring groups, choosing channels under a budget, and removing them.

``group_scores`` -> ``select`` -> ``prune`` (physically smaller parameters and the function
that runs them) or ``mask`` (the dense parameters with the removed slices zeroed: the oracle
an exact group's pruned function must reproduce).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.graph._run import Runner, pruned_call, take_leaves

_BY = ("channels", "params", "flops")


def _channel_scores(x: np.ndarray, m) -> np.ndarray:
    """Sum of ``x`` over everything but the member's factor: one value per channel."""
    split = list(x.shape[: m.axis]) + list(m.layout) + list(x.shape[m.axis + 1 :])
    y = np.reshape(x, split)
    y = np.moveaxis(y, m.axis + m.factor, 0)
    return y.reshape(y.shape[0], -1).sum(axis=1)


def group_scores(graph, params, scores=None, *, leaves=None) -> dict[int, np.ndarray]:
    """Per-channel importance of every group: the sum over its member parameter slices of a
    per-element score.

    Args:
      graph: a ``DependencyGraph``.
      params: the parameters it was traced with.
      scores: per-element scores, a pytree like ``params`` (e.g. ``|w * grad|`` or any
        ``pruneax.weights`` score); None uses ``w ** 2`` (the group's squared L2 norm).
      leaves: predicate on a member's parameter path choosing which members count; None
        counts parameters with at least two axes (weights, not norm scales or biases) and
        falls back to all members for groups that have none.

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p, x = {"w1": jnp.arange(12.0).reshape(3, 4), "w2": jnp.ones((4, 2))}, jnp.ones((5, 3))
    >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, x)
    >>> hidden = g.prunable()[0].id  # 1: group 0 is w1's input axis, pinned
    >>> graph.group_scores(g, p)[hidden]  # column j of w1 squared + row j of w2 squared
    array([ 82., 109., 142., 181.])
    """
    values = jax.tree_util.tree_leaves(params if scores is None else scores)
    if len(values) != len(graph.paths):
        raise ValueError(
            f"scores: expected a pytree with {len(graph.paths)} leaves like params, "
            f"got {len(values)}"
        )
    out = {}
    for g in graph.groups:
        chosen = [
            m for m in g.members if (leaves(m.path) if leaves else len(graph.shapes[m.leaf]) >= 2)
        ]
        total = np.zeros(g.size, np.float64)
        for m in chosen or g.members:
            x = np.asarray(values[m.leaf], np.float64)
            total += _channel_scores(x * x if scores is None else x, m)
        out[g.id] = total
    return out


def check_keep(graph, keep: dict, allow_inexact: bool = False) -> dict[int, np.ndarray]:
    """Validates a ``{group id: kept channel indices}`` dict; returns sorted int arrays
    (groups that keep every channel are dropped).

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p, x = {"w1": jnp.arange(12.0).reshape(3, 4), "w2": jnp.ones((4, 2))}, jnp.ones((5, 3))
    >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, x)
    >>> graph.check_keep(g, {1: [3, 1]})[1]
    array([1, 3])
    >>> graph.check_keep(g, {1: [4]})
    Traceback (most recent call last):
    ...
    ValueError: keep[1]: expected 1..4 distinct indices in [0, 4), got [4]
    """
    if not isinstance(keep, dict):
        raise ValueError(f"keep: expected a dict {{group id: kept indices}}, got {type(keep)}")
    out = {}
    for gid, idx in keep.items():
        g = graph.by_id.get(gid)
        if g is None:
            raise ValueError(f"keep: {gid!r} is not a group id of this graph")
        if not g.prunable:
            raise ValueError(f"keep: group {gid} may not be pruned ({'; '.join(g.pinned)})")
        if not g.exact and not allow_inexact:
            raise ValueError(
                f"keep: removing channels of group {gid} is not exact ({'; '.join(g.inexact)});"
                " pass allow_inexact=True to prune it anyway"
            )
        a = np.unique(np.asarray(idx, np.int64).reshape(-1))
        if a.size != np.asarray(idx).size or a.size == 0 or a[0] < 0 or a[-1] >= g.size:
            raise ValueError(
                f"keep[{gid}]: expected 1..{g.size} distinct indices in [0, {g.size}), got {idx}"
            )
        if a.size < g.size:
            out[gid] = a
    return out


def param_count(graph, keep: dict | None = None) -> int:
    """Number of parameter entries after removing the channels outside ``keep``.

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p, x = {"w1": jnp.arange(12.0).reshape(3, 4), "w2": jnp.ones((4, 2))}, jnp.ones((5, 3))
    >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, x)
    >>> graph.param_count(g), graph.param_count(g, {1: [0, 1]})
    (20, 10)
    """
    r = Runner(graph, keep or {})
    return sum(math.prod(r.new_shape(k)) for k in graph._param_keys)


def flops(graph, keep: dict | None = None) -> int:
    """Multiply-add FLOPs (2 per MAC) of every ``dot_general`` and convolution of the traced
    program after removing the channels outside ``keep``; a ``scan`` body counts ``length``
    times, a ``while`` body once.

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p, x = {"w1": jnp.arange(12.0).reshape(3, 4), "w2": jnp.ones((4, 2))}, jnp.ones((5, 3))
    >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, x)
    >>> graph.flops(g), graph.flops(g, {1: [0]})  # 2 * 5 * (3*4 + 4*2), then hidden 1
    (200, 50)
    """
    r = Runner(graph, keep or {})
    return _flops(graph, r, graph._root, graph._walk.frames[graph._root], 1)


def _flops(graph, r: Runner, frame: int, jaxpr, times: int) -> int:
    total = 0
    kids = graph._walk.children
    for i, eqn in enumerate(jaxpr.eqns):
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = r.new_shape((frame, eqn.invars[0]))
            out = r.new_shape((frame, eqn.outvars[0]))
            total += 2 * times * math.prod(out) * math.prod(lhs[a] for a in lc)
        elif name == "conv_general_dilated":
            _, rhs_spec, _ = eqn.params["dimension_numbers"]
            rhs = r.new_shape((frame, eqn.invars[1]))
            out = r.new_shape((frame, eqn.outvars[0]))
            per_out = math.prod(rhs) // rhs[rhs_spec[0]]
            total += 2 * times * math.prod(out) * per_out
        reps = eqn.params["length"] if name == "scan" else 1
        for child in kids.get((frame, i), ()):  # the walk recorded each sub-jaxpr instance
            total += _flops(graph, r, child, graph._walk.frames[child], times * reps)
    return total


def select(
    graph,
    scores: dict,
    amount: float,
    *,
    by: str = "channels",
    scope: str = "global",
    normalize: str | None = "mean",
    groups=None,
    allow_inexact: bool = False,
    min_keep: int = 1,
) -> dict[int, np.ndarray]:
    """Chooses the channels to keep: the lowest-scoring ones are removed.

    Args:
      graph: a ``DependencyGraph``.
      scores: ``{group id: per-channel scores}`` (``group_scores``).
      amount: fraction in [0, 1) to remove, of the chosen groups' channels (``by="channels"``),
        of all parameter entries (``"params"``) or of the traced FLOPs (``"flops"``).
      scope: ``"global"`` ranks all channels together after dividing each group's scores by
        their mean (``normalize="mean"``), max or nothing; ``"local"`` removes ``amount`` of
        each group (``by="channels"`` only).
      groups: ids to consider (default: every prunable group; exact ones only unless
        ``allow_inexact``).
      min_keep: channels each group keeps at least.
    Returns:
      ``{group id: sorted kept indices}`` for the groups that lose channels.

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p, x = {"w1": jnp.arange(12.0).reshape(3, 4), "w2": jnp.ones((4, 2))}, jnp.ones((5, 3))
    >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, x)
    >>> graph.select(g, graph.group_scores(g, p), 0.5)
    {1: array([2, 3])}
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount: expected a fraction in [0, 1), got {amount}")
    if by not in _BY:
        raise ValueError(f"by: expected one of {_BY}, got {by!r}")
    if scope not in ("global", "local"):
        raise ValueError(f"scope: expected 'global' or 'local', got {scope!r}")
    if scope == "local" and by != "channels":
        raise ValueError(f"by: scope='local' removes a fraction of channels, got by={by!r}")
    if normalize not in ("mean", "max", None):
        raise ValueError(f"normalize: expected 'mean', 'max' or None, got {normalize!r}")
    if min_keep < 1:
        raise ValueError(f"min_keep: expected >= 1, got {min_keep}")
    allowed = {g.id for g in graph.prunable(allow_inexact)}
    chosen = sorted(allowed if groups is None else set(groups))
    for gid in chosen:
        if gid not in allowed:
            raise ValueError(f"groups: {gid!r} is not a prunable group of this graph")
        if gid not in scores or np.shape(scores[gid]) != (graph.by_id[gid].size,):
            raise ValueError(f"scores[{gid}]: expected {graph.by_id[gid].size} channel scores")
    order: dict[int, np.ndarray] = {
        gid: np.argsort(np.asarray(scores[gid]), kind="stable") for gid in chosen
    }
    if scope == "local":
        keep = {}
        for gid in chosen:
            size = graph.by_id[gid].size
            n = min(round(amount * size), size - min_keep)
            keep[gid] = np.sort(order[gid][n:])
        return {k: v for k, v in keep.items() if len(v) < graph.by_id[k].size}
    pool = []
    for gid in chosen:
        s = np.asarray(scores[gid], np.float64)
        div = {"mean": s.mean(), "max": s.max(), None: 1.0}[normalize]
        s = s / div if div > 0 else s
        size = graph.by_id[gid].size
        pool += [(s[c], gid, int(c)) for c in order[gid][: size - min_keep]]
    pool.sort(key=lambda t: (t[0], t[1], t[2]))

    def keep_after(n: int) -> dict:
        gone: dict[int, list[int]] = {}
        for _, gid, c in pool[:n]:
            gone.setdefault(gid, []).append(c)
        return {gid: np.setdiff1d(np.arange(graph.by_id[gid].size), cs) for gid, cs in gone.items()}

    if by == "channels":
        total = sum(graph.by_id[g].size for g in chosen)
        return keep_after(min(round(amount * total), len(pool)))
    metric = param_count if by == "params" else flops
    target = (1.0 - amount) * metric(graph)
    lo, hi = 0, len(pool)
    if metric(graph, keep_after(hi)) > target:
        raise ValueError(
            f"amount: removing every removable channel leaves "
            f"{metric(graph, keep_after(hi)) / metric(graph):.3f} of the {by}; "
            f"{amount} cannot be reached"
        )
    while lo < hi:
        mid = (lo + hi) // 2
        if metric(graph, keep_after(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    return keep_after(lo)


def mask(graph, params, keep: dict, *, allow_inexact: bool = False):
    """The dense parameters with every removed channel's slices set to zero.

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p, x = {"w1": jnp.arange(12.0).reshape(3, 4), "w2": jnp.ones((4, 2))}, jnp.ones((5, 3))
    >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, x)
    >>> graph.mask(g, p, {1: [1, 2, 3]})["w2"][:, 0]
    Array([0., 1., 1., 1.], dtype=float32)
    """
    keep = check_keep(graph, keep, allow_inexact)
    leaves = jax.tree_util.tree_leaves(params)
    out = list(leaves)
    for gid, idx in keep.items():
        g = graph.by_id[gid]
        for m in g.members:
            x = out[m.leaf]
            on = np.zeros(g.size, bool)
            on[idx] = True
            shape = [1] * m.axis + list(np.ones(len(m.layout), int)) + [1] * (x.ndim - m.axis - 1)
            shape[m.axis + m.factor] = g.size
            full = np.broadcast_to(
                on.reshape(shape), (*x.shape[: m.axis], *m.layout, *x.shape[m.axis + 1 :])
            )
            out[m.leaf] = x * jnp.asarray(full.reshape(x.shape), dtype=x.dtype)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), out)


class PrunedFunction:
    """``fn`` on physically pruned parameters: ``pruned(pruned_params, *args)``.

    Runs the traced program with pruned shapes (see ``pruneax.graph._run``); for arguments of
    other shapes than the traced ones it re-traces ``fn`` once per shape signature and maps
    the kept channels onto the new graph's groups by their parameter members.
    """

    def __init__(self, graph, keep: dict) -> None:
        self.graph, self.keep = graph, keep
        self._graphs = {graph.arg_shapes: (graph, keep)}

    def _for(self, args):
        shapes = tuple(tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(args))
        if shapes not in self._graphs:
            from pruneax.graph._graph import trace

            dense = jax.tree_util.tree_unflatten(
                self.graph.treedef,
                [
                    jax.ShapeDtypeStruct(s, d)
                    for s, d in zip(self.graph.shapes, self.graph.dtypes, strict=True)
                ],
            )
            g2 = trace(self.graph.fn, dense, *args, free_outputs=self.graph.free_outputs)
            keep2 = map_keep(self.graph, g2, self.keep)
            self._graphs[shapes] = (g2, keep2)
        return self._graphs[shapes]

    def __call__(self, params, *args):
        graph, keep = self._for(args)
        leaves = jax.tree_util.tree_leaves(params)
        flat_args = jax.tree_util.tree_leaves(args)
        outs = pruned_call(graph, keep, leaves, flat_args)
        return jax.tree_util.tree_unflatten(graph._out_tree, outs)


def _signature(group) -> frozenset:
    return frozenset((m.leaf, m.axis, m.factor, m.layout) for m in group.members)


def map_keep(src, dst, keep: dict) -> dict:
    """``keep`` of graph ``src`` expressed in the group ids of graph ``dst``.

    Two traces of one model (its inference and its training function, or other input shapes)
    number their groups independently; a group is recognised by its parameter members.

    Raises:
      ValueError: if a group of ``keep`` has no group with the same members in ``dst``.

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
    >>> f = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
    >>> a, b = graph.trace(f, p, jnp.ones((5, 3))), graph.trace(f, p, jnp.ones((2, 7, 3)))
    >>> graph.map_keep(a, b, {1: [0, 2]})
    {1: [0, 2]}
    """
    ids = {_signature(g): g.id for g in dst.groups}
    out = {}
    for gid, idx in keep.items():
        sig = _signature(src.by_id[gid])
        if sig not in ids:
            raise ValueError(
                f"keep: group {gid} of the source graph has no group with the same parameter "
                "members in the destination graph"
            )
        out[ids[sig]] = idx
    return out


def prune(graph, params, keep: dict, *, allow_inexact: bool = False):
    """Physically removes the channels outside ``keep``.

    Returns:
      ``(pruned_params, pruned_fn)``: a parameter pytree of the same structure with smaller
      arrays, and a ``PrunedFunction`` computing ``fn`` on them (jit-able).

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> p, x = {"w1": jnp.arange(12.0).reshape(3, 4), "w2": jnp.ones((4, 2))}, jnp.ones((5, 3))
    >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, x)
    >>> small, run = graph.prune(g, p, {1: [1, 3]})
    >>> small["w1"].shape, small["w2"].shape
    ((3, 2), (2, 2))
    >>> masked = graph.mask(g, p, {1: [1, 3]})
    >>> bool(jnp.allclose(run(small, x), jnp.tanh(x @ masked["w1"]) @ masked["w2"]))
    True
    """
    keep = check_keep(graph, keep, allow_inexact)
    leaves = jax.tree_util.tree_leaves(params)
    new = take_leaves(graph, keep, [jnp.asarray(x) for x in leaves])
    fn = PrunedFunction(graph, keep)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), new), fn
