"""``trace``: the dependency graph of any traceable ``apply(params, *args)``."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from pruneax.graph._layout import Layouts, Nodes
from pruneax.graph._walk import run_walk
from pruneax.graph._zero import ZeroAnalysis
from pruneax.weights._paths import path_name


@dataclass(frozen=True)
class Member:
    """One parameter axis (or one factor of it) in a group.

    Attributes:
      path: the parameter's key path (``"layers/0/mlp/up/kernel"``).
      leaf: its index among the flattened parameter leaves.
      axis: the axis of the parameter.
      factor: which factor of the axis the group indexes (0 unless the axis was split, e.g.
        ``[heads, head_dim]`` of a query projection's output).
      layout: the axis's factors (row-major); removing channel ``c`` removes every index whose
        ``factor``-th digit is ``c``.
    """

    path: str
    leaf: int
    axis: int
    factor: int
    layout: tuple[int, ...]


@dataclass(frozen=True)
class Group:
    """Channels that must be removed together: one index space shared by its members.

    Attributes:
      id: the group's id (keys of ``keep`` / ``scores`` dicts), numbered in the order of the
        first parameter axis each group indexes.
      size: number of channels.
      members: the parameter axes it indexes.
      prunable: False when some axis of the group may not shrink (``pinned`` says why).
      exact: True when removing channels equals zeroing their parameters (``inexact`` says
        where not, e.g. a LayerNorm statistic over a pruned hidden axis).
    """

    id: int
    size: int
    members: tuple[Member, ...]
    prunable: bool
    exact: bool
    pinned: tuple[str, ...]
    inexact: tuple[str, ...]

    def describe(self) -> str:
        names = sorted(
            {
                f"{m.path}[{m.axis}]" + (f".{m.factor}" if len(m.layout) > 1 else "")
                for m in self.members
            }
        )
        state = "prunable" if self.prunable else "pinned: " + "; ".join(self.pinned)
        exact = ""
        if self.prunable and not self.exact:
            exact = " (inexact: " + "; ".join(self.inexact) + ")"
        return f"group {self.id}: {self.size} channels, {state}{exact}\n    " + ", ".join(names)


class DependencyGraph:
    """Coupled channel groups of a traced ``apply(params, *args)``; build with ``trace``.

    Attributes:
      groups: every ``Group`` with at least one parameter axis, by id; ``by_id`` maps ids.
      paths / shapes / dtypes: the flattened parameter leaves (key paths, shapes, dtypes).
      arg_shapes: the shapes of the flattened example arguments it was traced with.
      unfollowed: primitive name -> count, for primitives whose axes were pinned because the
        graph does not know how they couple axes (never guessed).
      equations: equations walked (every instance of every sub-jaxpr).
      fn: the traced function.
    """

    def __init__(self, fn, params, args, closed, out_tree, walk, root, layouts, nodes, zero, keys):
        self.fn, self._closed, self._walk, self._root = fn, closed, walk, root
        self._out_tree = out_tree
        self._layouts, self._nodes, self._zero = layouts, nodes, zero
        self._param_keys = keys
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        self.paths = tuple(path_name(p) for p, _ in leaves)
        self.shapes = tuple(tuple(np.shape(x)) for _, x in leaves)
        self.dtypes = tuple(x.dtype for _, x in leaves)
        self.arg_shapes = tuple(tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(args))
        self.unfollowed = dict(walk.unfollowed)
        self.equations = sum(len(j.eqns) for j in walk.frames)  # every sub-jaxpr instance
        self.groups = self._collect()
        self.by_id = {g.id: g for g in self.groups}

    def _collect(self) -> tuple[Group, ...]:
        nodes, lay = self._nodes, self._layouts
        members: dict[int, list[Member]] = {}
        doubled: set[int] = set()
        for leaf, key in enumerate(self._param_keys):
            for a in range(len(self._walk.shapes[key])):
                fs = lay.lay[key][a]
                gs = nodes.group_of((key, a))
                if len(set(gs)) < len(gs):
                    doubled.update(g for g in gs if gs.count(g) > 1)
                for j, g in enumerate(gs):
                    m = Member(self.paths[leaf], leaf, a, j, tuple(fs))
                    members.setdefault(g, []).append(m)
        pins: dict[int, set[str]] = {}
        for n, reasons in nodes.pin_reasons.items():
            pins.setdefault(nodes.find(n), set()).update(reasons)
        for g in doubled:
            pins.setdefault(g, set()).add("two factors of one axis share its channels")
        out = []
        self._roots = {}  # public group id -> union-find root
        order = sorted(members, key=lambda g: min((m.leaf, m.axis, m.factor) for m in members[g]))
        for gid, g in enumerate(order):
            why = tuple(sorted(pins.get(g, ())))
            inexact = tuple(sorted(self._zero.inexact.get(g, ())))
            size = int(nodes.sizes[g])
            out.append(Group(gid, size, tuple(members[g]), not why, not inexact, why, inexact))
            self._roots[gid] = g
        return tuple(out)

    def find(self, path: str, axis: int, factor: int = 0) -> Group:
        """The group holding factor ``factor`` of axis ``axis`` of the parameter ``path``.

        >>> import jax.numpy as jnp
        >>> from pruneax import graph
        >>> p = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
        >>> g = graph.trace(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, jnp.ones((5, 3)))
        >>> g.find("w2", 0).id == g.find("w1", 1).id, g.find("w2", 0).size
        (True, 4)
        """
        for g in self.groups:
            for m in g.members:
                if (m.path, m.axis, m.factor) == (path, axis, factor):
                    return g
        if path not in self.paths:
            raise ValueError(f"path: {path!r} is not a parameter of this graph")
        raise ValueError(
            f"axis / factor: parameter {path!r} has no axis {axis} factor {factor} in a group "
            f"(its shape is {self.shapes[self.paths.index(path)]})"
        )

    def prunable(self, allow_inexact: bool = False) -> tuple[Group, ...]:
        """The groups that may be pruned (exact ones only unless ``allow_inexact``)."""
        return tuple(g for g in self.groups if g.prunable and (g.exact or allow_inexact))

    def summary(self) -> str:
        lines = [
            f"DependencyGraph: {len(self.paths)} parameters, {len(self.groups)} groups, "
            f"{len(self.prunable())} prunable exactly, {len(self.prunable(True))} in all"
        ]
        if self.unfollowed:
            lines.append(f"primitives not followed (their axes pinned): {self.unfollowed}")
        lines += [g.describe() for g in self.groups if g.prunable]
        return "\n".join(lines)


def trace(fn, params, *args, free_outputs=None) -> DependencyGraph:
    """The dependency graph of ``fn(params, *args)`` for these argument shapes.

    ``fn`` is any function JAX can trace: a Flax NNX model through ``nnx.merge`` (see
    ``from_nnx``), ``linen_module.apply``, an Equinox model combined from its arrays, plain
    JAX. ``params`` is the pytree whose axes may be pruned; ``args`` are example inputs
    (arrays or ``jax.ShapeDtypeStruct``): their axes, and the outputs' axes, are never pruned,
    except the outputs chosen by ``free_outputs`` (a predicate on an output leaf's key path,
    e.g. ``lambda path: path.startswith("1/")`` for the updated batch-norm statistics a
    training step returns beside its logits): those shrink with their channels.

    >>> import jax.numpy as jnp
    >>> from pruneax import graph
    >>> def mlp(p, x):
    ...     return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
    >>> p = {"b1": jnp.zeros(4), "w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
    >>> g = graph.trace(mlp, p, jnp.ones((5, 3)))
    >>> [(grp.size, grp.prunable, grp.exact) for grp in g.groups]
    [(4, True, True), (3, False, True), (2, False, True)]
    >>> sorted(m.path for m in g.prunable()[0].members)
    ['b1', 'w1', 'w2']
    """
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params: expected a pytree with at least one array leaf, got none")
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *args)
    out_tree = jax.tree_util.tree_structure(out_shape)
    walk, root = run_walk(closed.jaxpr)
    invars = closed.jaxpr.invars
    keys = [walk.key(root, v) for v in invars[: len(leaves)]]
    for v in invars[len(leaves) :]:
        walk.pin_all(walk.key(root, v), "an input of the function")
    out_paths = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]]
    for v, path in zip(closed.jaxpr.outvars, out_paths, strict=True):
        if free_outputs is None or not free_outputs(path):
            walk.pin_all(walk.key(root, v), "an output of the function")
    layouts = Layouts(walk)
    nodes = Nodes(walk, layouts)
    zero_in = {}
    for k in keys:
        zero_in[k] = frozenset(
            g for a in range(len(walk.shapes[k])) for g in nodes.group_of((k, a))
        )
    zero = ZeroAnalysis(walk, nodes, root, zero_in)
    graph = DependencyGraph(
        fn, params, args, closed, out_tree, walk, root, layouts, nodes, zero, keys
    )
    graph.free_outputs = free_outputs
    return graph
