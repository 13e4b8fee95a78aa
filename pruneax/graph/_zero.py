"""Phase 3 of the dependency graph: which groups can be removed exactly.

Removing a group's channels is *exact* when the pruned program computes what the dense program
computes with the group's parameter slices set to zero. A forward pass over the jaxpr tracks,
for each value, the set of groups ``G`` on which it is provably zero (every entry whose ``G``
index is a removed channel is 0 once ``G``'s parameters are zeroed): parameters are zero on
their own groups; ``mul`` is zero where any operand is, ``add`` where all are; a
``dot_general`` output is zero on the free axes of a zero operand. Information leaves a
channel's index space only where the channel is summed over: a contraction or a ``reduce_sum``
over ``G`` is exact if an operand is zero on ``G`` (the removed channels contribute nothing),
and inexact otherwise - e.g. the variance of a LayerNorm over a pruned hidden axis, or a
``reduce_max``. Pinned groups are never pruned, so their exactness does not matter.
"""

from __future__ import annotations

import numpy as np

from pruneax.graph._rules import CUMULATIVE
from pruneax.graph._walk import CALLS, inner_jaxpr, is_literal

_ANY = frozenset({"mul", "and"})
_ALL = frozenset({"add", "sub", "add_any", "max", "min", "or", "xor", "concatenate"})
_FIRST = frozenset({"div", "rem"})
_KEEP = frozenset(
    "neg abs sign sin tan tanh erf sqrt cbrt square convert_element_type reduce_precision copy "
    "copy_p stop_gradient real imag floor ceil round expm1 log1p asin atan sinh asinh atanh "
    "erf_inv optimization_barrier reshape transpose squeeze slice split rev dynamic_slice gather "
    "reduce_window_max reduce_window_sum reduce_window_min".split()
)


class ZeroAnalysis:
    """Zero sets per value and the groups whose removal is inexact (with the reason)."""

    def __init__(self, walk, nodes, root: int, zero_inputs: dict) -> None:
        self.walk, self.nodes = walk, nodes
        self.z: dict = dict(zero_inputs)  # key -> frozenset of group roots
        self.inexact: dict[int, set[str]] = {}
        self._memo: dict = {}
        self._frame(root, walk.frames[root], record=True)

    # -- helpers -------------------------------------------------------------------------------
    def groups(self, key, axes=None) -> set[int]:
        if key is None:
            return set()
        if axes is None:
            if key not in self._memo:
                self._memo[key] = self.groups(key, range(len(self.walk.shapes[key])))
            return self._memo[key]
        out = set()
        for a in axes:
            out.update(self.nodes.group_of((key, a)))
        return out

    def get(self, frame: int, v) -> frozenset:
        if is_literal(v):
            return frozenset()
        return self.z.get((frame, v), frozenset())

    def _lit_zero(self, v) -> bool:
        return is_literal(v) and bool(np.all(np.asarray(v.val) == 0))

    def _note(self, groups, z_a, z_b, why: str, record: bool) -> None:
        if not record:
            return
        for g in groups:
            if g not in z_a and g not in z_b:
                self.inexact.setdefault(g, set()).add(why)

    def _set(self, frame: int, v, zs) -> None:
        if not is_literal(v):
            k = (frame, v)
            self.z[k] = frozenset(zs) & frozenset(self.groups(k))

    # -- the pass ------------------------------------------------------------------------------
    def _frame(self, frame: int, jaxpr, record: bool) -> list:
        for i, eqn in enumerate(jaxpr.eqns):
            self._eqn(frame, i, eqn, record)
        return [self.get(frame, v) for v in jaxpr.outvars]

    def _enter(self, child: int, sub, in_z, record: bool) -> list:
        for v, zs in zip(sub.invars, in_z, strict=True):
            self._set(child, v, zs)
        return self._frame(child, sub, record)

    def _eqn(self, frame: int, i: int, eqn, record: bool) -> None:
        name = eqn.primitive.name
        ins = eqn.invars
        zin = [self.get(frame, v) for v in ins]
        outs = eqn.outvars
        kids = self.walk.children.get((frame, i), ())
        if name in CALLS:
            sub, _ = inner_jaxpr(eqn.params[CALLS[name]])
            res = self._enter(kids[0], sub, zin, record)
        elif name == "scan":
            res = self._scan(eqn, kids[0], zin, record)
        elif name == "while":
            res = self._while(eqn, kids, zin, record)
        elif name == "cond":
            subs = [inner_jaxpr(b)[0] for b in eqn.params["branches"]]
            per = [self._enter(k, s, zin[1:], record) for k, s in zip(kids, subs, strict=True)]
            res = [frozenset.intersection(*zs) for zs in zip(*per, strict=True)]
        elif name == "dot_general":
            res = [self._dot(frame, eqn, zin, record)]
        elif name == "conv_general_dilated":
            res = [self._conv(frame, eqn, zin, record)]
        elif name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod"):
            k = (frame, ins[0])
            axes = [a % len(self.walk.shapes[k]) for a in eqn.params["axes"]]
            why = f"summed over by {name} where the removed channels are not zero"
            if name != "reduce_sum":
                why = f"reduced by {name} (the removed zeros would take part)"
                self._note(self.groups(k, axes), (), (), why, record)
            else:
                self._note(self.groups(k, axes), zin[0], (), why, record)
            res = [zin[0]]
        elif name in _KEEP or name in CUMULATIVE:
            res = [zin[0]] * len(outs)
        elif name == "dynamic_update_slice":
            res = [zin[0] & zin[1]]
        elif name in ("scatter", "scatter-add", "scatter_add"):
            res = [zin[0] & zin[2]]  # operand and updates (ins[1] holds the indices)
        elif name == "pad":
            res = [zin[0] if self._lit_zero(ins[1]) else frozenset()]
        elif name == "broadcast_in_dim":
            res = [self._broadcast(frame, eqn, zin[0])]
        elif name == "integer_pow":
            res = [zin[0] if eqn.params["y"] > 0 else frozenset()]
        elif name in _ANY:
            res = [self._any(frame, eqn, zin)]
        elif name in _ALL or name == "select_n":
            first = 1 if name == "select_n" else 0
            res = [self._all(ins[first:], zin[first:])]
        elif name in _FIRST:
            res = [zin[0]]
        else:
            res = [frozenset()] * len(outs)
        for v, zs in zip(outs, res, strict=False):
            self._set(frame, v, zs)

    def _any(self, frame: int, eqn, zin) -> frozenset:
        if any(self._lit_zero(v) for v in eqn.invars):
            return frozenset(self.groups((frame, eqn.outvars[0])))
        return frozenset().union(*zin)

    def _all(self, ins, zin) -> frozenset:
        acc = None
        for v, zs in zip(ins, zin, strict=True):
            if is_literal(v) or not v.aval.shape:
                if not self._lit_zero(v):
                    return frozenset()
                continue
            acc = zs if acc is None else acc & zs
        return acc if acc is not None else frozenset()

    def _broadcast(self, frame: int, eqn, zs) -> frozenset:
        out = (frame, eqn.outvars[0])
        src = eqn.invars[0]
        if is_literal(src):
            return frozenset()
        shape = self.walk.shapes[(frame, src)]
        mapped = {
            b
            for a, b in enumerate(eqn.params["broadcast_dimensions"])
            if shape[a] == self.walk.shapes[out][b]
        }
        fresh = [b for b in range(len(self.walk.shapes[out])) if b not in mapped]
        return zs - self.groups(out, fresh)

    def _dot(self, frame: int, eqn, zin, record: bool) -> frozenset:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = (frame, eqn.invars[0]), (frame, eqn.invars[1])
        zl, zr = zin
        why = "contracted by dot_general where neither operand is zero on the removed channels"
        self._note(self.groups(lhs, lc), zl, zr, why, record)
        free_l = [a for a in range(len(self.walk.shapes[lhs])) if a not in lc and a not in lb]
        free_r = [b for b in range(len(self.walk.shapes[rhs])) if b not in rc and b not in rb]
        gl, gr = self.groups(lhs, free_l), self.groups(rhs, free_r)
        out = set()
        for g in zl | zr:
            if (g not in gl or g in zl) and (g not in gr or g in zr):
                out.add(g)
        return frozenset(out)

    def _conv(self, frame: int, eqn, zin, record: bool) -> frozenset:
        lhs_spec, rhs_spec, _ = eqn.params["dimension_numbers"]
        rhs = (frame, eqn.invars[1])
        zl, zk = zin
        why = "contracted by a convolution where neither operand is zero on the removed channels"
        self._note(self.groups(rhs, [rhs_spec[1]]), zl, zk, why, record)
        if eqn.params["feature_group_count"] == 1:
            return zk
        # a grouped convolution: the group index is shared by input and output features
        lhs = (frame, eqn.invars[0])
        shared = self.groups(lhs, [lhs_spec[1]]) & self.groups(rhs, [rhs_spec[0]])
        return zk | (zl & frozenset(shared))

    def _scan(self, eqn, child: int, zin, record: bool) -> list:
        p = eqn.params
        body, _ = inner_jaxpr(p["jaxpr"])
        nc, ncarry = p["num_consts"], p["num_carry"]
        carry = list(zin[nc : nc + ncarry])
        for _ in range(len(carry) + 8):
            out = self._enter(child, body, [*zin[:nc], *carry, *zin[nc + ncarry :]], False)
            new = [c & o for c, o in zip(carry, out[:ncarry], strict=True)]
            if new == carry:
                break
            carry = new
        return self._enter(child, body, [*zin[:nc], *carry, *zin[nc + ncarry :]], record)

    def _while(self, eqn, kids, zin, record: bool) -> list:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        body, _ = inner_jaxpr(p["body_jaxpr"])
        cond, _ = inner_jaxpr(p["cond_jaxpr"])
        carry = list(zin[cn + bn :])
        for _ in range(len(carry) + 8):
            out = self._enter(kids[1], body, [*zin[cn : cn + bn], *carry], False)
            new = [c & o for c, o in zip(carry, out, strict=True)]
            if new == carry:
                break
            carry = new
        self._enter(kids[0], cond, [*zin[:cn], *carry], record)
        return self._enter(kids[1], body, [*zin[cn : cn + bn], *carry], record)
