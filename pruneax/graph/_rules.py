"""The coupling rule of each shape / structure primitive (control flow is in ``_walk``).

Each rule reads one equation and records, on the ``Walk``, which axes of its operands and
results are one index space (``couple``), which are row-major products of others (``merge``)
and which may not shrink (``pin``, with the reason shown to the user).
"""

from __future__ import annotations

import math

CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())


REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor "
    "argmax argmin".split()
)


def unfollowed(w, name: str, ins, outs) -> None:
    w.unfollowed[name] += 1
    for k in (*ins, *outs):
        w.pin_all(k, f"primitive '{name}' is not followed by the graph")


def elementwise(w, eqn, ins, outs) -> None:
    out = outs[0]
    shape = w.shapes[out]
    for k in ins:
        if k is None or w.shapes[k] == ():
            continue
        if len(w.shapes[k]) != len(shape):
            unfollowed(w, f"{eqn.primitive.name} (operands of different ranks)", ins, outs)
            return
        for a in range(len(shape)):
            if w.shapes[k][a] == shape[a]:  # size-1 axes broadcast: not coupled
                w.couple((k, a), (out, a))
    for extra in outs[1:]:
        w.pin_all(extra, f"'{eqn.primitive.name}' has several outputs")


def _blocks(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Minimal groups of the non-unit axes of two shapes with equal products (a reshape)."""
    ai = [k for k, s in enumerate(a) if s != 1]
    bi = [k for k, s in enumerate(b) if s != 1]
    out, i, j = [], 0, 0
    while i < len(ai) and j < len(bi):
        ga, gb, pa, pb = [ai[i]], [bi[j]], a[ai[i]], b[bi[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                ga.append(ai[i])
                pa *= a[ai[i]]
                i += 1
            else:
                gb.append(bi[j])
                pb *= b[bi[j]]
                j += 1
        out.append((ga, gb))
    return out


def _reshape(w, frame, i, eqn, ins, outs) -> None:
    if eqn.params.get("dimensions") is not None:
        unfollowed(w, "reshape (with dimensions)", ins, outs)
        return
    src, dst = ins[0], outs[0]
    for ga, gb in _blocks(w.shapes[src], w.shapes[dst]):
        if len(ga) == 1 and len(gb) == 1:
            w.couple((src, ga[0]), (dst, gb[0]))
        else:
            w.merge.append(([(src, a) for a in ga], [(dst, b) for b in gb]))


def _broadcast(w, frame, i, eqn, ins, outs) -> None:
    src, dst = ins[0], outs[0]
    if src is None:
        return
    for a, b in enumerate(eqn.params["broadcast_dimensions"]):
        if w.shapes[src][a] == w.shapes[dst][b]:
            w.couple((src, a), (dst, b))


def _transpose(w, frame, i, eqn, ins, outs) -> None:
    for b, a in enumerate(eqn.params["permutation"]):
        w.couple((ins[0], a), (outs[0], b))


def _squeeze(w, frame, i, eqn, ins, outs) -> None:
    rank = len(w.shapes[ins[0]])
    dims = {d % rank for d in eqn.params["dimensions"]}
    kept = [a for a in range(rank) if a not in dims]
    for b, a in enumerate(kept):
        w.couple((ins[0], a), (outs[0], b))


def _dot_general(w, frame, i, eqn, ins, outs) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs, out = ins[0], ins[1], outs[0]
    for a, b in zip(lc, rc, strict=True):
        w.couple((lhs, a), (rhs, b))
    for a, b in zip(lb, rb, strict=True):
        w.couple((lhs, a), (rhs, b))
    free_l = [a for a in range(len(w.shapes[lhs])) if a not in lc and a not in lb]
    free_r = [b for b in range(len(w.shapes[rhs])) if b not in rc and b not in rb]
    order = [(lhs, a) for a in lb] + [(lhs, a) for a in free_l] + [(rhs, b) for b in free_r]
    for o, ref in enumerate(order):
        w.couple(ref, (out, o))


def _conv(w, frame, i, eqn, ins, outs) -> None:
    p = eqn.params
    if p["batch_group_count"] != 1:
        unfollowed(w, "conv_general_dilated (batch_group_count > 1)", ins, outs)
        return
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs, out = ins[0], ins[1], outs[0]
    why = "a convolution's window axis"
    for key, spec in ((lhs, lhs_spec), (rhs, rhs_spec), (out, out_spec)):
        for a in spec[2:]:
            w.pin(key, a, why)
    w.couple((lhs, lhs_spec[0]), (out, out_spec[0]))
    w.couple((rhs, rhs_spec[0]), (out, out_spec[1]))
    g = p["feature_group_count"]
    cin = w.shapes[lhs][lhs_spec[1]]
    cout = w.shapes[rhs][rhs_spec[0]]
    if g == 1:
        w.couple((lhs, lhs_spec[1]), (rhs, rhs_spec[1]))
        return
    vg_in = w.virtual((g, cin // g))
    vg_out = w.virtual((g, cout // g))
    w.merge.append(([(lhs, lhs_spec[1])], [(vg_in, 0), (vg_in, 1)]))
    w.merge.append(([(rhs, rhs_spec[0])], [(vg_out, 0), (vg_out, 1)]))
    w.couple((vg_in, 0), (vg_out, 0))
    w.couple((vg_in, 1), (rhs, rhs_spec[1]))


def _reduce(w, frame, i, eqn, ins, outs) -> None:
    src = ins[0]
    axes = {a % len(w.shapes[src]) for a in eqn.params["axes"]}
    kept = [a for a in range(len(w.shapes[src])) if a not in axes]
    for b, a in enumerate(kept):
        w.couple((src, a), (outs[0], b))
    if eqn.primitive.name in ("argmax", "argmin"):
        for a in axes:
            w.pin(src, a, f"'{eqn.primitive.name}' returns indices along this axis")


def _along_axis(reason: str):
    """Ops that mix values along one axis (cumsum, rev, sort): that axis pinned, others same."""

    def rule(w, frame, i, eqn, ins, outs):
        p = eqn.params
        if "axis" in p:
            fixed = {p["axis"]}
        elif "dimensions" in p:
            fixed = set(p["dimensions"])
        else:
            fixed = {p["dimension"]}
        rank = len(w.shapes[outs[0]])
        fixed = {a % rank for a in fixed}
        for k in (*ins, *outs):
            if k is None or len(w.shapes[k]) != rank:
                continue
            for a in range(rank):
                if a in fixed:
                    w.pin(k, a, reason.format(name=eqn.primitive.name))
                elif k is not outs[0]:
                    w.couple((k, a), (outs[0], a))
        for extra in outs[1:]:
            for a in range(rank):
                if a not in fixed:
                    w.couple((extra, a), (outs[0], a))

    return rule


def _pieces(w, key, axis: int, piece: int, reason: str):
    """The axis as [size / piece (pinned), piece]; returns the inner axis ref."""
    size = w.shapes[key][axis]
    if piece == size:
        return (key, axis)
    if piece == 1:
        w.pin(key, axis, reason)
        return None
    v = w.virtual((size // piece, piece))
    w.merge.append(([(key, axis)], [(v, 0), (v, 1)]))
    w.pin(v, 0, reason)
    return (v, 1)


def _segments(w, parts: list, whole, axis: int, sizes: list[int], reason: str) -> None:
    """``whole`` along ``axis`` is the concatenation of ``parts`` (sizes ``sizes``): each
    piece of size gcd(sizes) is one index space, the piece index is pinned."""
    piece = math.gcd(*sizes)
    inner = _pieces(w, whole, axis, piece, reason)
    for k in parts:
        ref = _pieces(w, k, axis, piece, reason)
        if inner is not None and ref is not None:
            w.couple(inner, ref)
    rank = len(w.shapes[whole])
    for k in parts:
        for a in range(rank):
            if a != axis:
                w.couple((k, a), (whole, a))


def _concatenate(w, frame, i, eqn, ins, outs) -> None:
    d = eqn.params["dimension"]
    sizes = [w.shapes[k][d] for k in ins]
    _segments(w, ins, outs[0], d, sizes, "concatenated along this axis in unequal pieces")


def _split(w, frame, i, eqn, ins, outs) -> None:
    d = eqn.params["axis"]
    sizes = [int(s) for s in eqn.params["sizes"]]
    _segments(w, outs, ins[0], d, sizes, "split along this axis in unequal pieces")


def _slice(w, frame, i, eqn, ins, outs) -> None:
    p = eqn.params
    src, dst = ins[0], outs[0]
    strides = p["strides"] or (1,) * len(p["start_indices"])
    for a, (s, e, st) in enumerate(
        zip(p["start_indices"], p["limit_indices"], strides, strict=True)
    ):
        size = w.shapes[src][a]
        if s == 0 and e == size and st == 1:
            w.couple((src, a), (dst, a))
            continue
        why = "sliced along this axis"
        if st != 1:
            w.pin(src, a, why + " with a stride")
            w.pin(dst, a, why + " with a stride")
            continue
        piece = math.gcd(s, e - s, size)
        inner = _pieces(w, src, a, piece, why)
        ref = _pieces(w, dst, a, piece, why)
        if inner is not None and ref is not None:
            w.couple(inner, ref)


def _pad(w, frame, i, eqn, ins, outs) -> None:
    src, dst = ins[0], outs[0]
    for a, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
        if lo == hi == interior == 0:
            w.couple((src, a), (dst, a))
        else:
            w.pin(src, a, "padded along this axis")
            w.pin(dst, a, "padded along this axis")


def _iota(w, frame, i, eqn, ins, outs) -> None:
    return None  # fresh axes; the runner computes the full iota and gathers kept indices


def _gather(w, frame, i, eqn, ins, outs) -> None:
    dn = eqn.params["dimension_numbers"]
    operand, indices, out = ins[0], ins[1], outs[0]
    shape = w.shapes[operand]
    skipped = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
    offset_src = [d for d in range(len(shape)) if d not in skipped]
    slice_sizes = eqn.params["slice_sizes"]
    for d in range(len(shape)):
        full = slice_sizes[d] == shape[d] and d not in dn.start_index_map and d not in skipped
        if full:
            w.couple((operand, d), (out, dn.offset_dims[offset_src.index(d)]))
        else:
            w.pin(operand, d, "gathered along this axis")
    batch_out = [a for a in range(len(w.shapes[out])) if a not in dn.offset_dims]
    batch_idx = list(range(len(w.shapes[indices]) - 1))
    if len(batch_out) == len(batch_idx):
        for a, b in zip(batch_idx, batch_out, strict=True):
            w.couple((indices, a), (out, b))
    else:
        w.pin_all(out, "gather with batching dimensions is not followed")


def _scatter(w, frame, i, eqn, ins, outs) -> None:
    """``x.at[idx].set / add(u)``: the result has the operand's axes; an operand axis the
    updates cover whole (a window axis not indexed) is one index space with the updates' axis;
    the indexed axes are pinned."""
    dn = eqn.params["dimension_numbers"]
    operand, updates, out = ins[0], ins[2], outs[0]
    shape = w.shapes[operand]
    for a in range(len(shape)):
        w.couple((operand, a), (out, a))
    skipped = set(dn.inserted_window_dims) | set(dn.operand_batching_dims)
    window_src = [d for d in range(len(shape)) if d not in skipped]
    for d in range(len(shape)):
        why = "scattered into along this axis"
        if d in skipped:
            w.pin(operand, d, why)
            continue
        u = dn.update_window_dims[window_src.index(d)]
        if (
            updates is not None
            and w.shapes[updates][u] == shape[d]
            and (d not in dn.scatter_dims_to_operand_dims)
        ):
            w.couple((updates, u), (out, d))
        else:
            w.pin(operand, d, why)
            w.pin(updates, u, why)


def _dynamic_slice(w, frame, i, eqn, ins, outs) -> None:
    src, dst = ins[0], outs[0]
    for a, s in enumerate(eqn.params["slice_sizes"]):
        if s == w.shapes[src][a]:
            w.couple((src, a), (dst, a))
        else:
            w.pin(src, a, "dynamically sliced along this axis")
            w.pin(dst, a, "dynamically sliced along this axis")


def _dynamic_update_slice(w, frame, i, eqn, ins, outs) -> None:
    src, upd, dst = ins[0], ins[1], outs[0]
    for a in range(len(w.shapes[src])):
        w.couple((src, a), (dst, a))
        if w.shapes[upd][a] == w.shapes[src][a]:
            w.couple((upd, a), (dst, a))
        else:
            w.pin(dst, a, "dynamically updated along this axis")
            w.pin(upd, a, "dynamically updated along this axis")


def _reduce_window(w, frame, i, eqn, ins, outs) -> None:
    p = eqn.params
    n = len(p["window_dimensions"])
    for k in ins[: len(ins) // 2 or 1]:
        for a in range(n):
            plain = (
                p["window_dimensions"][a] == 1
                and p["window_strides"][a] == 1
                and tuple(p["padding"][a]) == (0, 0)
                and p["base_dilation"][a] == 1
                and p["window_dilation"][a] == 1
            )
            if plain:
                w.couple((k, a), (outs[0], a))
            else:
                w.pin(k, a, "pooled along this axis")
                w.pin(outs[0], a, "pooled along this axis")


SHAPE_RULES = {
    "reshape": _reshape,
    "broadcast_in_dim": _broadcast,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "concatenate": _concatenate,
    "split": _split,
    "slice": _slice,
    "pad": _pad,
    "iota": _iota,
    "gather": _gather,
    "dynamic_slice": _dynamic_slice,
    "scatter": _scatter,
    "scatter-add": _scatter,
    "scatter_add": _scatter,
    "dynamic_update_slice": _dynamic_update_slice,
    "reduce_window_max": _reduce_window,
    "reduce_window_min": _reduce_window,
    "reduce_window_sum": _reduce_window,
    **dict.fromkeys(REDUCTIONS, _reduce),
    **dict.fromkeys(CUMULATIVE, _along_axis("'{name}' runs along this axis")),
    "rev": _along_axis("reversed along this axis"),
    "sort": _along_axis("sorted along this axis"),
}
