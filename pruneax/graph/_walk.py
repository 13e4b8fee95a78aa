"""Phase 1 of the dependency graph: the coupling constraints of every primitive in a jaxpr.

A node of the graph is one axis of one value, keyed ``((frame, var), axis)``: ``frame`` numbers
each instantiation of a (sub-)jaxpr, so a function called twice (two layers sharing one
``jit``-ed helper) gets two independent frames. Virtual keys ``("v", n)`` stand for axes that
exist only in the analysis (the head and group axes of a split channel axis).

Each primitive contributes constraints between axes:
- ``same(a, b)``: the axes are one index space (an elementwise op, the contraction of
  ``dot_general``, the residual ``add``);
- ``merge(A, B)``: the row-major product of the axes ``A`` equals that of ``B`` (``reshape``
  splitting channels into heads, a grouped convolution's feature axis);
- ``pin(a, reason)``: the axis may not be pruned (data inputs, outputs, the window of a
  convolution, the sorted axis of ``cumsum``, any axis of a primitive not followed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from jax.extend import core as jcore

from pruneax.graph._rules import SHAPE_RULES, elementwise, unfollowed

# n-ary ops whose output index i reads index i of every same-shaped operand
ELEMENTWISE = frozenset(
    "abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj copy copy_p "
    "cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le "
    "lgamma digamma log log1p logistic lt max min mul ne neg nextafter not or pow real "
    "reduce_precision rem round rsqrt select_n shift_left shift_right_arithmetic "
    "shift_right_logical sign sin sinh sqrt square stop_gradient sub tan tanh xor "
    "convert_element_type optimization_barrier".split()
)
# ops that run a sub-jaxpr once on the operands (inlined by the analysis and by the runner)
CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}


def is_literal(v) -> bool:
    return isinstance(v, jcore.Literal)


def inner_jaxpr(j):
    """(jaxpr, consts) of a ClosedJaxpr or an open Jaxpr parameter."""
    if isinstance(j, jcore.ClosedJaxpr):
        return j.jaxpr, list(j.consts)
    return j, []


@dataclass
class Walk:
    """The constraints, shapes and frame structure of one traced program."""

    shapes: dict = field(default_factory=dict)  # key -> shape
    same: list = field(default_factory=list)  # (axis_ref, axis_ref)
    merge: list = field(default_factory=list)  # ([axis_ref], [axis_ref])
    pins: list = field(default_factory=list)  # (axis_ref, reason)
    frames: list = field(default_factory=list)  # frame id -> jaxpr
    children: dict = field(default_factory=dict)  # (frame, eqn index) -> tuple of frames
    unfollowed: Counter = field(default_factory=Counter)  # primitive name -> count
    n_virtual: int = 0

    def key(self, frame: int, v):
        if is_literal(v):
            return None
        k = (frame, v)
        self.shapes.setdefault(k, tuple(v.aval.shape))
        return k

    def virtual(self, shape: tuple[int, ...]):
        k = ("v", self.n_virtual)
        self.n_virtual += 1
        self.shapes[k] = tuple(shape)
        return k

    def new_frame(self, jaxpr) -> int:
        self.frames.append(jaxpr)
        return len(self.frames) - 1

    def couple(self, a, b) -> None:
        if a[0] is not None and b[0] is not None:
            self.same.append((a, b))

    def pin(self, key, axis: int, reason: str) -> None:
        if key is not None:
            self.pins.append(((key, axis), reason))

    def pin_all(self, key, reason: str) -> None:
        if key is not None:
            for a in range(len(self.shapes[key])):
                self.pin(key, a, reason)


def run_walk(jaxpr) -> tuple[Walk, int]:
    """Walks a top-level (open) jaxpr; returns the constraints and its frame id."""
    w = Walk()
    root = w.new_frame(jaxpr)
    _walk(w, root, jaxpr)
    return w, root


def _walk(w: Walk, frame: int, jaxpr) -> None:
    for v in list(jaxpr.constvars) + list(jaxpr.invars):
        w.key(frame, v)
    for i, eqn in enumerate(jaxpr.eqns):
        name = eqn.primitive.name
        ins = [w.key(frame, v) for v in eqn.invars]
        outs = [w.key(frame, v) for v in eqn.outvars]
        if name in CALLS:
            sub, _ = inner_jaxpr(eqn.params[CALLS[name]])
            child = _enter(w, frame, i, sub)
            _bind_io(w, child, sub.invars, ins)
            _bind_io(w, child, sub.outvars, outs)
        elif name in _RULES:
            _RULES[name](w, frame, i, eqn, ins, outs)
        elif name in ELEMENTWISE:
            elementwise(w, eqn, ins, outs)
        else:
            unfollowed(w, name, ins, outs)


def _enter(w: Walk, frame: int, i: int, sub) -> int:
    child = w.new_frame(sub)
    w.children[(frame, i)] = (*w.children.get((frame, i), ()), child)
    _walk(w, child, sub)
    return child


def _bind_io(w: Walk, child: int, inner_vars, outer_keys, offset: int = 0) -> None:
    """Couples the inner variables of a sub-jaxpr with the outer values, axis by axis;
    ``offset`` skips leading outer axes (a scan's stacked axis)."""
    for v, k in zip(inner_vars, outer_keys, strict=True):
        ik = w.key(child, v)
        if ik is None or k is None:
            continue
        for a in range(len(w.shapes[ik])):
            w.couple((ik, a), (k, a + offset))


def _scan(w, frame, i, eqn, ins, outs) -> None:
    p = eqn.params
    body, _ = inner_jaxpr(p["jaxpr"])
    nc, ncarry = p["num_consts"], p["num_carry"]
    child = _enter(w, frame, i, body)
    bin_ = body.invars
    _bind_io(w, child, bin_[:nc], ins[:nc])
    _bind_io(w, child, bin_[nc : nc + ncarry], ins[nc : nc + ncarry])
    _bind_io(w, child, body.outvars[:ncarry], ins[nc : nc + ncarry])
    _bind_io(w, child, body.outvars[:ncarry], outs[:ncarry])
    _bind_io(w, child, bin_[nc + ncarry :], ins[nc + ncarry :], offset=1)
    _bind_io(w, child, body.outvars[ncarry:], outs[ncarry:], offset=1)
    for k in (*ins[nc + ncarry :], *outs[ncarry:]):
        w.pin(k, 0, "the scanned (stacked) axis of a scan")


def _while(w, frame, i, eqn, ins, outs) -> None:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond, _ = inner_jaxpr(p["cond_jaxpr"])
    body, _ = inner_jaxpr(p["body_jaxpr"])
    carry = ins[cn + bn :]
    cf = _enter(w, frame, i, cond)
    _bind_io(w, cf, cond.invars[:cn], ins[:cn])
    _bind_io(w, cf, cond.invars[cn:], carry)
    bf = _enter(w, frame, i, body)
    _bind_io(w, bf, body.invars[:bn], ins[cn : cn + bn])
    _bind_io(w, bf, body.invars[bn:], carry)
    _bind_io(w, bf, body.outvars, carry)
    _bind_io(w, bf, body.outvars, outs)


def _cond(w, frame, i, eqn, ins, outs) -> None:
    for br in eqn.params["branches"]:
        sub, _ = inner_jaxpr(br)
        f = _enter(w, frame, i, sub)
        _bind_io(w, f, sub.invars, ins[1:])
        _bind_io(w, f, sub.outvars, outs)


_RULES = {
    **SHAPE_RULES,
    "scan": _scan,
    "while": _while,
    "cond": _cond,
}
