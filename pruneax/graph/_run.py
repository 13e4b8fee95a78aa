"""Running a traced program on physically pruned parameters.

The runner evaluates the traced jaxpr equation by equation, as ``jax.core.eval_jaxpr`` does,
with the shape parameters rewritten for the pruned sizes: ``reshape``'s ``new_sizes``,
``broadcast_in_dim``'s ``shape``, the bounds of ``slice`` / ``split`` (whole pieces), the
``slice_sizes`` of ``gather`` / ``dynamic_slice``, a grouped convolution's
``feature_group_count``; an ``iota`` over a pruned axis keeps the original positions of the
kept channels; constants captured by the program are gathered like parameters. Sub-jaxprs
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``) are inlined - the pruned
function differentiates through their primal computation, not their custom rules - and
``scan`` / ``while`` / ``cond`` are rebuilt with ``lax``. Every result's shape is checked
against the analysis, so a rule that is wrong fails loudly instead of computing something
else.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pruneax.graph._layout import axis_keep
from pruneax.graph._walk import CALLS, inner_jaxpr, is_literal


class Runner:
    """Evaluates the traced program of a ``DependencyGraph`` for a given channel selection."""

    def __init__(self, graph, keep: dict) -> None:
        self.g = graph
        self.keep = {graph._roots[gid]: idx for gid, idx in keep.items()}  # by union-find root
        self.walk, self.lay, self.nodes = graph._walk, graph._layouts, graph._nodes

    # -- shapes --------------------------------------------------------------------------------
    def new_shape(self, key) -> tuple[int, ...]:
        out = []
        for a, size in enumerate(self.walk.shapes[key]):
            fs = self.lay.lay[key][a]
            gs = self.nodes.group_of((key, a))
            n = math.prod(
                len(self.keep[g]) if g in self.keep else f for f, g in zip(fs, gs, strict=True)
            )
            out.append(n if fs else size)
        return tuple(out)

    def take(self, key, x):
        """Gathers the kept channels of every pruned axis of a value (with NumPy for host
        arrays and arrays on CPU: no compilation per shape)."""
        host = isinstance(x, np.ndarray) or (
            isinstance(x, jax.Array)
            and not isinstance(x, jax.core.Tracer)
            and all(d.platform == "cpu" for d in x.devices())
        )
        for a in range(len(self.walk.shapes[key])):
            idx = axis_keep(self.lay.lay[key][a], self.nodes.group_of((key, a)), self.keep)
            if idx is not None:
                x = np.take(np.asarray(x), idx, axis=a) if host else jnp.take(x, idx, axis=a)
        return jnp.asarray(x) if host else x

    # -- evaluation ----------------------------------------------------------------------------
    def run(self, frame: int, jaxpr, consts, args) -> list:
        env = {}

        def read(v):
            return v.val if is_literal(v) else env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = self.take((frame, v), c)
        for v, x in zip(jaxpr.invars, args, strict=True):
            env[v] = x
        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            outs = self._eqn(frame, i, eqn, ins)
            if not eqn.primitive.multiple_results and eqn.primitive.name not in CALLS:
                outs = [outs]
            for v, x in zip(eqn.outvars, outs, strict=True):
                want = self.new_shape((frame, v))
                if tuple(x.shape) != want:
                    raise RuntimeError(
                        f"pruneax.graph: '{eqn.primitive.name}' produced shape {tuple(x.shape)} "
                        f"where the analysis expects {want} (equation {i} of frame {frame}); "
                        "this is a bug in the graph rules, please report it"
                    )
                env[v] = x
        return [read(v) for v in jaxpr.outvars]

    def _child(self, frame: int, i: int, k: int = 0) -> int:
        return self.walk.children[(frame, i)][k]

    def _eqn(self, frame: int, i: int, eqn, ins):
        name, p = eqn.primitive.name, dict(eqn.params)
        out_key = (frame, eqn.outvars[0]) if eqn.outvars else None
        if name in CALLS:
            sub, consts = inner_jaxpr(p[CALLS[name]])
            return self.run(self._child(frame, i), sub, consts, ins)
        if name == "scan":
            return self._scan(frame, i, p, ins)
        if name == "while":
            return self._while(frame, i, p, ins)
        if name == "cond":
            return self._cond(frame, i, p, ins)
        if name == "reshape":
            p["new_sizes"] = self.new_shape(out_key)
        elif name == "broadcast_in_dim":
            p["shape"] = self.new_shape(out_key)
        elif name == "iota":
            return self.take(out_key, eqn.primitive.bind(**p))
        elif name == "slice":
            self._slice(frame, eqn, p)
        elif name == "split":
            key = (frame, eqn.invars[0])
            old, new = self.walk.shapes[key][p["axis"]], self.new_shape(key)[p["axis"]]
            sizes = [int(s) for s in p["sizes"]]
            piece = math.gcd(*sizes)
            p["sizes"] = tuple(s // piece * (new * piece // old) for s in sizes)
        elif name in ("gather", "dynamic_slice"):
            key = (frame, eqn.invars[0])
            old, new = self.walk.shapes[key], self.new_shape(key)
            p["slice_sizes"] = tuple(
                n if s == o else s for s, o, n in zip(p["slice_sizes"], old, new, strict=True)
            )
        elif name == "conv_general_dilated" and p["feature_group_count"] > 1:
            lhs_spec, rhs_spec, _ = p["dimension_numbers"]
            cin = self.new_shape((frame, eqn.invars[0]))[lhs_spec[1]]
            per_group = self.new_shape((frame, eqn.invars[1]))[rhs_spec[1]]
            p["feature_group_count"] = cin // per_group
        return eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(p))

    def _slice(self, frame: int, eqn, p) -> None:
        key = (frame, eqn.invars[0])
        old, new = self.walk.shapes[key], self.new_shape(key)
        starts, limits = list(p["start_indices"]), list(p["limit_indices"])
        for a, (s, e) in enumerate(zip(starts, limits, strict=True)):
            if old[a] == new[a]:
                continue
            piece = math.gcd(s, e - s, old[a])
            inner = new[a] * piece // old[a]  # the pruned size of one piece
            starts[a], limits[a] = s // piece * inner, e // piece * inner
        p["start_indices"], p["limit_indices"] = tuple(starts), tuple(limits)

    def _scan(self, frame: int, i: int, p, ins) -> list:
        body, consts = inner_jaxpr(p["jaxpr"])
        child = self._child(frame, i)
        nc, ncarry = p["num_consts"], p["num_carry"]
        cvals, init, xs = ins[:nc], ins[nc : nc + ncarry], ins[nc + ncarry :]

        def step(carry, x):
            out = self.run(child, body, consts, [*cvals, *carry, *x])
            return out[:ncarry], out[ncarry:]

        carry, ys = lax.scan(
            step, init, xs, length=p["length"], reverse=p["reverse"], unroll=p["unroll"]
        )
        return [*carry, *ys]

    def _while(self, frame: int, i: int, p, ins) -> list:
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cond, cconsts = inner_jaxpr(p["cond_jaxpr"])
        body, bconsts = inner_jaxpr(p["body_jaxpr"])
        cf, bf = self._child(frame, i, 0), self._child(frame, i, 1)
        cvals, bvals, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
        return lax.while_loop(
            lambda c: self.run(cf, cond, cconsts, [*cvals, *c])[0],
            lambda c: self.run(bf, body, bconsts, [*bvals, *c]),
            list(init),
        )

    def _cond(self, frame: int, i: int, p, ins) -> list:
        fns = []
        for k, br in enumerate(p["branches"]):
            sub, consts = inner_jaxpr(br)
            child = self._child(frame, i, k)
            fns.append(lambda *ops, c=child, s=sub, cs=consts: self.run(c, s, cs, list(ops)))
        return lax.switch(ins[0], fns, *ins[1:])


def pruned_call(graph, keep: dict, leaves: list, args: list) -> list:
    """The traced program's outputs for pruned parameter leaves and (flat) arguments."""
    r = Runner(graph, keep)
    closed = graph._closed
    return r.run(graph._root, closed.jaxpr, closed.consts, [*leaves, *args])


def take_leaves(graph, keep: dict, leaves: list) -> list:
    r = Runner(graph, keep)
    keys = graph._param_keys
    return [r.take(k, x) for k, x in zip(keys, leaves, strict=True)]
