"""Independent NumPy oracles of the published token-pruning algorithms.

Each function is written from ``/work/shared/ALGORITHMS.md`` (what the published code computes)
and the public docstrings of :mod:`pruneax.tokens`, in the style of the published PyTorch code:
float32 arithmetic, Python loops over greedy steps, ``argmax`` / stable sorts so that ties go to
the lowest index. They do not import pruneax. Every oracle returns plain NumPy arrays.

Where pruneax documents a deliberate fix of a published defect (DivPrune masking, HiPrune's
row wrap, HoloV's zero padding), the oracle implements the fixed behaviour and says so; the
unfixed published behaviour is kept in a separate function where a test needs it.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=F32)


def _top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores in descending order; ties to the lowest index."""
    order = np.argsort(-_f32(scores), kind="stable")
    return order[:k]


def _l2_normalise(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """``x / max(||x||, eps)`` row-wise in float32 (``torch.nn.functional.normalize``)."""
    x = _f32(x)
    norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True, dtype=F32))
    return (x / np.maximum(norm, F32(eps))).astype(F32)


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = _f32(z)
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / np.sum(e, axis=axis, keepdims=True, dtype=F32)).astype(F32)


def _pick(values, trace=None, scale_floor: float = 0.0, maximize: bool = True) -> int:
    """One greedy decision: ``argmax`` (or ``argmin``) of ``values``, first index on ties.

    With ``trace`` (a dict) it also appends to ``trace["margins"]`` the gap between the best
    and the runner-up (infinite entries, i.e. masked candidates, ignored) divided by
    ``max(|best|, scale_floor)``. If ``trace`` holds ``"prefer"`` (a set of indices) and
    ``"tol"``, a near-tie (candidates within ``tol`` relative of the best) is resolved in
    favour of a candidate in ``prefer`` when the plain pick is not in it, and
    ``trace["followed"]`` counts those decisions. Parity tests use this to follow another
    float32 implementation (XLA) through near-ties that float32 rounding may decide either
    way, while every clear decision must agree exactly.
    """
    v32 = np.asarray(values, dtype=F32)
    j = int(np.argmax(v32) if maximize else np.argmin(v32))
    if trace is None:
        return j
    v = v32.astype(np.float64) if maximize else -v32.astype(np.float64)
    best = v[j]
    scale = max(abs(best), scale_floor, 1e-30)
    finite = np.isfinite(v)
    others = np.where(finite & (np.arange(v.size) != j), v, -np.inf)
    runner = others.max() if others.size else -np.inf
    trace.setdefault("margins", []).append(
        (best - runner) / scale if np.isfinite(runner) else np.inf
    )
    prefer = trace.get("prefer")
    if prefer is not None and j not in prefer and np.isfinite(best):
        near = np.flatnonzero(finite & (v >= best - trace.get("tol", 0.0) * scale))
        cand = [int(i) for i in near if int(i) in prefer]
        if cand:
            trace["followed"] = trace.get("followed", 0) + 1
            return max(cand, key=lambda i: (v[i], -i))
    return j


def _finish(trace, sel: list[int]) -> np.ndarray:
    """Stores the selection order in ``trace`` and returns the picks sorted, int32."""
    if trace is not None:
        trace["order"] = np.asarray(sel, dtype=np.int64)
    return np.sort(np.asarray(sel)).astype(np.int32)


def _start_trace(trace) -> None:
    """The pivot of k-center / max-sum is forced: its gap is ``inf``."""
    if trace is not None:
        trace["margins"] = [np.inf]


def _pivot_index(pivot, n: int) -> int:
    p = np.asarray(pivot)
    if p.ndim == 0:
        return int(p)
    assert p.shape == (n,)
    return int(np.argmax(_f32(p)))  # first maximum


# ---------------------------------------------------------------------------------------------
# Top-k (FasterVLM, FastV, EViT)
# ---------------------------------------------------------------------------------------------


def np_topk(scores, k: int) -> np.ndarray:
    """Top-``k`` by score, returned in original (ascending) order.

    Reference: FasterVLM / FastV / EViT keep ``scores.topk(k)`` and gather in original order.
    Ties go to the lower index (stable sort); torch's CPU topk does not guarantee that, which
    is why parity tests use continuous scores.
    """
    return np.sort(_top_indices(scores, k)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# DivPrune (max-min diversity)
# ---------------------------------------------------------------------------------------------


def _divprune_dist(x) -> np.ndarray:
    """``1 - cos`` as DivPrune's ``pairwise_cosine_similarity``: rows divided by their norm.

    The published code divides by the plain norm; pruneax clamps the norm at 1e-8, which only
    matters for zero rows (not produced by the tests).
    """
    xn = _l2_normalise(x, 1e-8)
    return (F32(1.0) - xn @ xn.T).astype(F32)


def np_divprune_published(x, k: int) -> np.ndarray:
    """DivPrune exactly as published (Alvar et al., CVPR 2025, ``DivPrune`` in the repo).

    ``cosine_matrix = 1 - cos``; step 0: ``scores = topk(Dist, 2, dim=0, largest=False)[1]``
    (second-smallest of each column), pick ``argmax``; step i: ``scores = min over the rows of
    the already selected tokens``, pick ``argmax``. Selected tokens are NOT masked (the
    published code relies on ``Dist[s, s] = 0``), so duplicate rows can give duplicate picks.

    Returns the picks in selection order (NOT sorted, NOT deduplicated), int64 [k].
    """
    dist = _divprune_dist(x)
    sel: list[int] = []
    for i in range(k):
        if i == 0:
            scores = np.sort(dist, axis=0)[1, :]
        else:
            scores = np.min(dist[np.asarray(sel)], axis=0)
        sel.append(int(np.argmax(scores)))
    return np.asarray(sel, dtype=np.int64)


def np_maxmin_diversity(x, k: int, trace: dict | None = None) -> np.ndarray:
    """DivPrune with pruneax's documented fix: already-selected tokens are masked (-inf).

    Identical to :func:`np_divprune_published` except that a selected column can never be
    picked again, so the result is always ``k`` unique indices. Returned sorted, int32 [k].
    Greedy trace: if ``trace`` is a dict, ``trace["order"]`` receives the picks in selection
    order and ``trace["margins"]`` the relative gap of each pick to its runner-up (aligned
    with ``order``; a forced pick, such as a pivot, gets ``inf``); see :func:`_pick` for
    following another implementation through near-ties.
    """
    dist = _divprune_dist(x)
    n = dist.shape[0]
    selected = np.zeros(n, dtype=bool)
    sel: list[int] = []
    for i in range(k):
        if i == 0:
            scores = np.sort(dist, axis=0)[1, :].copy()
        else:
            scores = np.min(dist[np.asarray(sel)], axis=0)
        scores = np.where(selected, -np.inf, scores)
        j = _pick(scores, trace, 1.0)
        sel.append(j)
        selected[j] = True
    return _finish(trace, sel)


# ---------------------------------------------------------------------------------------------
# Greedy k-center (ToDRE v1) and max-sum diversification (ToDRE v2)
# ---------------------------------------------------------------------------------------------


def np_kcenter(
    x, k: int, pivot_index, metric: str = "cosine", trace: dict | None = None
) -> np.ndarray:
    """Greedy k-center / farthest-point sampling (Gonzalez 1985; ToDRE v1).

    ``pivot_index`` is an int (the first token) or an [N] score array whose argmax is the
    first token (ToDRE: [CLS] attention). ``mind[j] = min_s dist(s, j)``; then k - 1 times
    ``argmax_j mind[j]`` over unselected tokens (ties to the lowest index) and update.
    ``metric="cosine"``: ``1 - cos`` on L2-normalised rows (norm clamped at 1e-8);
    ``"l2"``: squared Euclidean distance from explicit differences (argmax-equivalent to the
    Euclidean distance, as in the usual farthest-point-sampling code). Sorted int32 [k].
    ``trace``: as :func:`np_maxmin_diversity`.
    """
    x = _f32(x)
    n = x.shape[0]
    p = _pivot_index(pivot_index, n)
    _start_trace(trace)
    if metric == "cosine":
        xn = _l2_normalise(x)

        def dist_from(s: int) -> np.ndarray:
            return (F32(1.0) - xn @ xn[s]).astype(F32)

    elif metric == "l2":

        def dist_from(s: int) -> np.ndarray:
            d = x - x[s]
            return np.sum(d * d, axis=-1, dtype=F32)

    else:
        raise ValueError(metric)
    selected = np.zeros(n, dtype=bool)
    selected[p] = True
    sel = [p]
    mind = dist_from(p)
    for _ in range(k - 1):
        cand = np.where(selected, -np.inf, mind)
        j = _pick(cand, trace)
        sel.append(j)
        selected[j] = True
        mind = np.minimum(mind, dist_from(j))
    return _finish(trace, sel)


def np_maxsum_diversity(x, k: int, pivot_index, trace: dict | None = None) -> np.ndarray:
    """ToDRE v2 greedy max-sum diversification (from the paper; no public code).

    X row-normalised (norm clamped at 1e-8); p = pivot (int, or argmax of [N] scores);
    ``s = X x_p``, ``s_p = +inf``; then k - 1 times ``c = argmin s`` (lowest index on ties),
    ``s += X x_c``, ``s_c = +inf``. Sorted int32 [k].
    ``trace``: as :func:`np_maxmin_diversity` (gaps relative to at least 1, a cosine's scale).
    """
    xn = _l2_normalise(x)
    n = xn.shape[0]
    p = _pivot_index(pivot_index, n)
    _start_trace(trace)
    s = (xn @ xn[p]).astype(F32)
    s[p] = np.inf
    sel = [p]
    for _ in range(k - 1):
        c = _pick(s, trace, 1.0, maximize=False)
        sel.append(c)
        s = (s + xn @ xn[c]).astype(F32)
        s[c] = np.inf
    return _finish(trace, sel)


# ---------------------------------------------------------------------------------------------
# MMTok (coverage)
# ---------------------------------------------------------------------------------------------


def np_coverage_matrix(x, text=None, x_vision=None, alpha=0.5, tau_tv=0.01, tau_vv=0.2):
    """MMTok's ``C = [P; alpha * Q]`` (``mm_coverage_selection`` in ``semantic_selector.py``).

    ``P = softmax over the n vision tokens of (z x^T / tau_tv) / m`` ([m, n]),
    ``Q = row-softmax(v v^T / tau_vv) / n`` ([n, n]) with ``v = x_vision`` (``x`` when None);
    all inputs L2-normalised with the norm clamped at 1e-8; float32.
    """
    xn = _l2_normalise(x)
    n = xn.shape[0]
    v = xn if x_vision is None else _l2_normalise(x_vision)
    q = _softmax((v @ v.T) / F32(tau_vv), axis=1) / F32(n)
    rows = []
    if text is not None and np.asarray(text).shape[0] > 0:
        z = _l2_normalise(text)
        m = z.shape[0]
        rows.append((_softmax((z @ xn.T) / F32(tau_tv), axis=1) / F32(m)).astype(F32))
    rows.append((F32(alpha) * q).astype(F32))
    return np.concatenate(rows, axis=0).astype(F32)


def np_coverage(x, k, text=None, x_vision=None, alpha=0.5, tau_tv=0.01, tau_vv=0.2, trace=None):
    """MMTok greedy coverage (``greedy_merged_jit_kernel``), sorted int32 [k].

    ``best = 0``; k times: ``gain_j = sum_r max(0, C[r, j] - best[r])`` with selected columns
    at -inf, pick ``argmax`` (first maximum, as torch), ``best = max(best, C[:, j])``.
    ``trace``: as :func:`np_maxmin_diversity` (gaps relative to the best gain).
    """
    c = np_coverage_matrix(x, text, x_vision, alpha, tau_tv, tau_vv)
    n = c.shape[1]
    # Column j of C as a contiguous row, so that NumPy's sum over the m + n targets is its
    # pairwise (accurate) float32 summation rather than a sequential one.
    ct = np.ascontiguousarray(c.T)
    buf = np.empty_like(ct)
    best = np.zeros(c.shape[0], dtype=F32)
    selected = np.zeros(n, dtype=bool)
    sel = []
    for _ in range(k):
        np.subtract(ct, best[None, :], out=buf)
        np.maximum(buf, F32(0.0), out=buf)
        gain = np.sum(buf, axis=1, dtype=F32)
        gain = np.where(selected, -np.inf, gain)
        j = _pick(gain, trace)
        sel.append(j)
        selected[j] = True
        best = np.maximum(best, c[:, j])
    return _finish(trace, sel)


# ---------------------------------------------------------------------------------------------
# HiPrune
# ---------------------------------------------------------------------------------------------


def np_hiprune(shallow, deep, k: int, grid: tuple[int, int], alpha: float = 0.1) -> np.ndarray:
    """HiPrune (``encode_images`` in the HiPrune LLaVA code), with pruneax's grid fix.

    Anchors: top Python ``round(k * alpha / 5)`` patches by ``shallow``. Buffers: each anchor's
    up / down / left / right neighour on the ``(rows, cols)`` grid. Deviation from the
    published code (documented in pruneax): the published code adds flat +-1 / +-24 and
    clamps to [0, 575], so +-1 wraps across rows and edges inject 0 / 575; here neighbours do
    not wrap and out-of-grid ones are dropped. Registers: the top ``k - |U|`` patches by
    ``deep`` outside ``U = anchors | buffers`` (the published code subtracts 1.0 on U and takes
    top-k; equivalent for scores in [0, 1]). Sorted int32 [k].

    If ``|U| > k`` (the published code would fail: negative register count; possible only for
    alpha near 1), pruneax's documented rule: anchors first, then the buffers with the best
    deep scores.
    """
    rows, cols = grid
    n = rows * cols
    n_anchor = round(k * alpha / 5)
    anchors = _top_indices(shallow, n_anchor)
    union = set(int(a) for a in anchors)
    for a in anchors:
        r, c = divmod(int(a), cols)
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < rows and 0 <= cc < cols:
                union.add(rr * cols + cc)
    if len(union) > k:
        buffers = np.asarray(sorted(union - set(int(a) for a in anchors)))
        best_buffers = buffers[_top_indices(_f32(deep)[buffers], k - len(anchors))]
        return np.sort(np.concatenate([anchors, best_buffers])).astype(np.int32)
    in_u = np.zeros(n, dtype=bool)
    in_u[list(union)] = True
    masked = np.where(in_u, -np.inf, _f32(deep))
    registers = _top_indices(masked, k - len(union))
    return np.sort(np.concatenate([np.flatnonzero(in_u), registers])).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# FEATHER
# ---------------------------------------------------------------------------------------------


def np_uniform_grid(grid: tuple[int, int], stride: int = 3) -> np.ndarray:
    """Every ``stride``-th row and column from (0, 0) (FEATHER's ``[::s, ::s]`` on the grid)."""
    rows, cols = grid
    idx = np.arange(rows * cols).reshape(rows, cols)[::stride, ::stride]
    return np.sort(idx.reshape(-1)).astype(np.int32)


def np_feather_published_union(scores, grid: tuple[int, int], stride: int, t: int) -> np.ndarray:
    """FEATHER stage 1 as published: ``unique(cat(topk(scores, t), grid), sorted=True)``.

    The published code reshapes to a square ``g x g``; this takes ``(rows, cols)`` so a
    non-square grid works the same way. Variable size; sorted int32.
    """
    top = _top_indices(scores, t)
    return np.unique(np.concatenate([top, np_uniform_grid(grid, stride)])).astype(np.int32)


def np_feather(scores, k: int, grid: tuple[int, int], stride: int = 3) -> np.ndarray:
    """pruneax's fixed-budget FEATHER (its docstring): the uniform grid plus the top-scoring
    non-grid tokens up to ``k``; if ``k`` is below the grid size, the top-``k`` grid tokens.

    With ``k = len(np_feather_published_union(scores, grid, stride, t))`` this is the
    published union. Sorted int32 [k].
    """
    s = _f32(scores)
    g = np_uniform_grid(grid, stride)
    if k <= len(g):
        return np.sort(g[_top_indices(s[g], k)]).astype(np.int32)
    in_grid = np.zeros(s.shape[0], dtype=bool)
    in_grid[g] = True
    rest = _top_indices(np.where(in_grid, -np.inf, s), k - len(g))
    return np.sort(np.concatenate([g, rest])).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# HoloV
# ---------------------------------------------------------------------------------------------


def np_holov_chunks(n: int, num_chunks: int) -> np.ndarray:
    """HoloV's chunk sizes: ``n // C`` each, the FIRST ``n % C`` chunks one more."""
    base, rem = divmod(n, num_chunks)
    return np.asarray([base + (1 if p < rem else 0) for p in range(num_chunks)], dtype=np.int64)


def np_holov(scores, x, k: int, num_chunks: int = 16, return_published: bool = False, trace=None):
    """HoloV (``HoloV`` in ``obananas/HoloV:llava/model/utils.py``) with pruneax's refill.

    Per chunk of n tokens (contiguous raster slice): ``Fhat = F / (||F|| + 1e-6)``,
    ``Sm = (Fhat Fhat^T) * (1 - I)``, ``mean_i = sum_j Sm_ij / (n - 1)``,
    ``var_i = sum_j (Sm_ij - mean_i)^2 / (n - 1)`` over ALL j (the zeroed diagonal stays: the
    published quirk), ``a_s = 1e3 * attn``, ``scale = mean|a_s| / (mean|var| + 1e-6)``,
    ``token = a_s + 0.09 * var * scale``, chunk score = mean(token) (a chunk of size 1: raw
    mean attention). ``w = s / (sum s + 1e-6)``, ``alloc = floor(w * k)``, the remainder
    goes +1 to the ``min(rem, C)`` chunks of largest weight (ties to the lower chunk). A
    chunk with ``alloc >= size`` is kept whole; otherwise its top-``alloc`` by raw attention.

    Deviation (pruneax's documented fix): the published code then zero-pads to k; here the
    missing budget is refilled with the highest-attention tokens not yet kept.

    Returns sorted int32 [k]; with ``return_published=True`` also the published kept
    positions in published output order (chunks in raster order, descending attention inside
    a chunk, whole chunks in spatial order; no refill, no padding).

    ``trace``: if a dict, ``trace["margins"]`` receives the computed (rounding-sensitive)
    decisions' gaps: each chunk's distance of ``w_c * k`` to the nearest integer (the floor)
    and the relative weight gap at the remainder boundary. Token choices inside a chunk and
    the refill compare raw attention values, which are exact.
    """
    a = _f32(scores)
    x = _f32(x)
    n_tok = a.shape[0]
    sizes = np_holov_chunks(n_tok, num_chunks)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    chunk_scores = np.zeros(num_chunks, dtype=F32)
    for p in range(num_chunks):
        lo, n = int(starts[p]), int(sizes[p])
        if n == 0:
            continue
        ac = a[lo : lo + n]
        if n == 1:
            chunk_scores[p] = np.mean(ac)
            continue
        f = x[lo : lo + n]
        fn = (f / (np.sqrt(np.sum(f * f, axis=1, keepdims=True, dtype=F32)) + F32(1e-6))).astype(
            F32
        )
        sm = (fn @ fn.T) * (F32(1.0) - np.eye(n, dtype=F32))
        mean = np.sum(sm, axis=1, dtype=F32) / F32(n - 1)
        var = np.sum((sm - mean[:, None]) ** 2, axis=1, dtype=F32) / F32(n - 1)
        a_s = F32(1e3) * ac
        scale = np.mean(np.abs(a_s)) / (np.mean(np.abs(var)) + F32(1e-6))
        token = a_s + F32(0.09) * (var * scale)
        chunk_scores[p] = np.mean(token, dtype=F32)
    w = (chunk_scores / (np.sum(chunk_scores, dtype=F32) + F32(1e-6))).astype(F32)
    alloc = np.floor(w * F32(k)).astype(np.int64)
    remaining = k - int(alloc.sum())
    if trace is not None:
        wk = w.astype(np.float64) * k
        trace["margins"] = [float(np.min(np.abs(wk - np.round(wk))))]
        if 0 < remaining < num_chunks:
            ws = np.sort(w.astype(np.float64))[::-1]
            trace["margins"].append((ws[remaining - 1] - ws[remaining]) / max(ws[0], 1e-30))
    if remaining > 0:
        for p in _top_indices(w, min(remaining, num_chunks)):
            alloc[p] += 1
    published: list[int] = []
    for p in range(num_chunks):
        lo, n = int(starts[p]), int(sizes[p])
        if alloc[p] <= 0 or n == 0:
            continue
        if alloc[p] >= n:
            published.extend(range(lo, lo + n))
        else:
            published.extend(int(lo + i) for i in _top_indices(a[lo : lo + n], int(alloc[p])))
    published = published[:k]
    kept = np.zeros(n_tok, dtype=bool)
    kept[published] = True
    missing = k - int(kept.sum())
    if missing > 0:
        refill = _top_indices(np.where(kept, -np.inf, a), missing)
        kept[refill] = True
    out = np.flatnonzero(kept).astype(np.int32)
    if return_published:
        return out, np.asarray(published, dtype=np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# ToMe
# ---------------------------------------------------------------------------------------------


def np_tome_published(x, metric, r: int, size=None, class_token: bool = True, trace=None):
    """One ToMe step as published (``bipartite_soft_matching`` + ``merge_wavg``).

    ``r = min(r, (t - protected) // 2)``; metric normalised by its norm (no eps);
    ``a = metric[::2]``, ``b = metric[1::2]``, ``scores = a b^T``; with a class token row 0 of
    scores is -inf; ``node_max, node_idx = max over b``; ``edge_idx = argsort(node_max,
    descending)`` (stable here: ties to the lower A index); ``unm_idx = edge_idx[r:]`` (sorted
    ascending when ``class_token``), ``src_idx = edge_idx[:r]``, ``dst_idx = node_idx[src]``.
    ``merge_wavg``: ``x = merge(x * size, sum) / merge(size, sum)``. Output rows are the
    published order ``[unmerged A; B]``.

    Returns ``(merged [N - r, D], new_size [N - r], out_pos [N - r], dest_pos [N])``:
    ``out_pos[i]`` is the original position of published output row i (the surviving token),
    ``dest_pos[j]`` the original position of the token input j ended up in.

    ``trace``: if a dict, ``trace["margins"]`` receives the cosine gaps of the rounding-
    sensitive decisions: the edge at rank r against rank r + 1 (which A tokens merge) and,
    for every merged A token, its best B partner against the runner-up.
    """
    x = _f32(x)
    metric = _f32(metric)
    t = x.shape[0]
    size = np.ones(t, dtype=F32) if size is None else _f32(size)
    protected = 1 if class_token else 0
    r = min(r, (t - protected) // 2)
    pos = np.arange(t)
    if r <= 0:
        return x.copy(), size.copy(), pos, pos.copy()
    mn = (metric / np.sqrt(np.sum(metric * metric, axis=-1, keepdims=True, dtype=F32))).astype(F32)
    a, b = mn[::2], mn[1::2]
    scores = (a @ b.T).astype(F32)
    if class_token:
        scores[0, :] = -np.inf
    node_max = scores.max(axis=-1)
    node_idx = scores.argmax(axis=-1)
    edge_idx = np.argsort(-node_max, kind="stable")
    unm_idx = edge_idx[r:]
    src_idx = edge_idx[:r]
    dst_idx = node_idx[src_idx]
    if class_token:
        unm_idx = np.sort(unm_idx)
    if trace is not None:
        nm = node_max.astype(np.float64)
        trace["margins"] = [nm[edge_idx[r - 1]] - nm[edge_idx[r]] if r < len(nm) else np.inf]
        for i in src_idx:
            top2 = np.sort(scores[i].astype(np.float64))[::-1][:2]
            trace["margins"].append(top2[0] - top2[1] if len(top2) > 1 else np.inf)

    def merge(v: np.ndarray) -> np.ndarray:
        src, dst = v[::2], v[1::2].copy()
        unm = src[unm_idx]
        np.add.at(dst, dst_idx, src[src_idx])
        return np.concatenate([unm, dst], axis=0)

    xs = merge(x * size[:, None])
    new_size = merge(size)
    merged = (xs / new_size[:, None]).astype(F32)
    a_pos, b_pos = pos[::2], pos[1::2]
    out_pos = np.concatenate([a_pos[unm_idx], b_pos])
    dest_pos = pos.copy()
    dest_pos[a_pos[src_idx]] = b_pos[dst_idx]
    return merged, new_size.astype(F32), out_pos, dest_pos


# ---------------------------------------------------------------------------------------------
# VisionZip / VisionDrop (vision stage: dominant top-k + contextual merging)
# ---------------------------------------------------------------------------------------------


def np_visionzip(scores, x, metric, dominant: int, contextual: int):
    """VisionZip's vision stage for one example, as published (``CLIPVisionTower_VisionZip
    .forward``, reused by VisionDrop: ``Ruixxxx/VisionDrop@b9d5df9 llava/visionzip/
    clip_encoder.py``), on patches only (the CLS token, which the published code keeps in
    front of the dominant patches, is left to the caller).

    ``dominant`` patches by top score (``topk``; original order, ties to the lower index);
    ``mask`` = the other R patches, original order; their metric normalised by its norm (no
    eps); targets = every ``step = max(1, R // contextual)``-th of them, the first
    ``contextual``; every other remaining patch goes to its most cosine-similar target
    (``argmax``: ties to the first target); contextual token j = target j's hidden state + the
    mean of the hidden states assigned to it (``counts.clamp(min=1)``).

    Returns ``(tokens [contextual, D] float32, dominant indices [dominant] int32)``.
    """
    x, metric = _f32(x), _f32(metric)
    n = x.shape[0]
    dom = np_topk(scores, dominant)
    mask = np.ones(n, dtype=bool)
    mask[dom] = False
    m, h = metric[mask], x[mask]
    m = (m / np.sqrt(np.sum(m * m, axis=-1, keepdims=True, dtype=F32))).astype(F32)
    r = m.shape[0]
    step = max(1, r // contextual)
    targets = np.arange(0, r, step)[:contextual]
    others = ~np.isin(np.arange(r), targets)
    sim = (m[others] @ m[targets].T).astype(F32)  # [R - c, c]
    assign = np.zeros((int(others.sum()), contextual), dtype=F32)
    assign[np.arange(assign.shape[0]), np.argmax(sim, axis=1)] = 1.0
    counts = np.maximum(assign.sum(axis=0), F32(1.0))[:, None]
    merged = (assign.T @ h[others]).astype(F32) / counts
    return (h[targets] + merged).astype(F32), dom


# ---------------------------------------------------------------------------------------------
# EViT fusion and scorers
# ---------------------------------------------------------------------------------------------


def np_fuse_pruned(x, idx, weights) -> np.ndarray:
    """EViT's fusion (``youweiliang/evit:evit.py``, ``Block.forward``): ``[x[idx]; fused]``.

    ``fused = sum over non-kept i of w_i x_i`` with the raw weights (no renormalisation).
    EViT orders kept tokens by descending attention; here they follow ``idx`` as given.
    """
    x = _f32(x)
    w = _f32(weights)
    keep = np.zeros(x.shape[0], dtype=bool)
    keep[np.asarray(idx)] = True
    fused = np.sum(w[~keep, None] * x[~keep], axis=0, dtype=F32)
    return np.concatenate([x[np.asarray(idx)], fused[None]], axis=0)


def np_cls_attention(attn, cls_index: int = 0, num_prefix: int = 1) -> np.ndarray:
    """FasterVLM / EViT: ``attn[:, cls, num_prefix:].mean(heads)`` (not renormalised)."""
    return np.mean(_f32(attn)[:, cls_index, num_prefix:], axis=0, dtype=F32)


def np_received_attention(attn, num_prefix: int = 1) -> np.ndarray:
    """HiPrune: mean over heads, then over ALL query rows, then drop the prefix key columns."""
    return np.mean(np.mean(_f32(attn), axis=0, dtype=F32), axis=0, dtype=F32)[num_prefix:]


def np_last_query_attention(attn, start: int, stop: int) -> np.ndarray:
    """FastV: the last query row over the key span ``[start, stop)``, head-averaged."""
    return np.mean(_f32(attn)[:, -1, start:stop], axis=0, dtype=F32)


def np_query_key_attention(query, keys) -> np.ndarray:
    """FEATHER's ``calculate_attention_weight`` for the last query, keys without RoPE.

    ``repeat_kv``: key head j serves query heads ``j * rep ... (j + 1) * rep - 1``;
    ``softmax(q k^T / sqrt(head_dim))`` over the image keys only, in float32; head mean.
    """
    q = _f32(query)
    kk = _f32(keys)
    heads, hd = q.shape
    rep = heads // kk.shape[0]
    kk = np.repeat(kk, rep, axis=0)  # [heads, N, hd]
    logits = np.einsum("hd,hnd->hn", q, kk).astype(F32) / F32(np.sqrt(hd))
    return np.mean(_softmax(logits, axis=-1), axis=0, dtype=F32)


def np_random(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` of ``n`` indices uniformly at random without replacement, sorted: a NumPy
    ``Generator``'s permutation cut to ``k`` (not the same picks as ``jax.random``)."""
    return np.sort(rng.permutation(n)[:k]).astype(np.int32)


def np_uniform(k: int, grid: tuple[int, int]) -> np.ndarray:
    """The ``"uniform"`` method: ``k`` patches spread over the ``(rows, cols)`` grid, no scores.

    Every ``s``-th row and column from (0, 0) at the largest stride ``s`` whose grid still holds
    ``k`` patches; when it holds ``m > k``, its entries at ``round(linspace(0, m - 1, k))``.
    """
    rows, cols = grid
    for s in range(max(rows, cols), 0, -1):
        base = np.asarray([r * cols + c for r in range(0, rows, s) for c in range(0, cols, s)])
        if len(base) >= k:
            return base[np.round(np.linspace(0, len(base) - 1, k)).astype(np.int64)].astype(
                np.int32
            )
    raise ValueError(f"np_uniform: k={k} exceeds the {rows * cols} patches")


# ---------------------------------------------------------------------------------------------
# ViT blocks with ToMe / EViT inside (the published ToMeBlock and EViT Block)
# ---------------------------------------------------------------------------------------------


def np_layer_norm(x, scale, bias, eps: float) -> np.ndarray:
    x = _f32(x)
    mu = np.mean(x, axis=-1, keepdims=True, dtype=F32)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True, dtype=F32)
    return ((x - mu) / np.sqrt(var + F32(eps)) * _f32(scale) + _f32(bias)).astype(F32)


def _np_gelu(x) -> np.ndarray:
    """Exact (erf) GELU, ``torch.nn.GELU()``."""
    from math import erf, sqrt

    x = _f32(x)
    erf_ = np.vectorize(erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf_(x.astype(np.float64) / sqrt(2.0)))).astype(F32)


def np_vit_attention(x, w: dict, size=None, eps: float = 1e-6):
    """Attention half of a pre-norm ViT block on ONE example, as ``ToMeAttention``:
    ``x + out(softmax(q k^T / sqrt(hd) + log(size)) v)`` on ``norm1(x)``.

    ``w``: ``heads`` and (kernel [in, out], bias) pairs ``q``, ``k``, ``v``, ``out``, ``norm1``
    (scale, bias). Returns ``(x [T, D], probs [H, T, T], keys [H, T, hd])``.
    """
    x = _f32(x)
    h = np_layer_norm(x, *w["norm1"], eps)
    t, heads = x.shape[0], w["heads"]
    proj = lambda name: (h @ _f32(w[name][0]) + _f32(w[name][1])).reshape(t, heads, -1)
    q, k, v = (proj(n).transpose(1, 0, 2) for n in ("q", "k", "v"))
    logits = (q @ k.transpose(0, 2, 1)).astype(F32) * F32(q.shape[-1] ** -0.5)
    if size is not None:  # proportional attention
        logits = logits + np.log(_f32(size))[None, None, :]
    probs = _softmax(logits, axis=-1)
    o = (probs @ v).transpose(1, 0, 2).reshape(t, -1)
    return (x + o @ _f32(w["out"][0]) + _f32(w["out"][1])).astype(F32), probs, k


def np_vit_mlp(x, w: dict, eps: float = 1e-6) -> np.ndarray:
    """MLP half of a pre-norm ViT block: ``x + fc2(gelu(fc1(norm2(x))))``."""
    h = np_layer_norm(x, *w["norm2"], eps)
    h = _np_gelu(h @ _f32(w["fc1"][0]) + _f32(w["fc1"][1]))
    return (_f32(x) + h @ _f32(w["fc2"][0]) + _f32(w["fc2"][1])).astype(F32)


def np_tome_vit_blocks(x, blocks, rs, class_token: bool = True, eps: float = 1e-6, trace=None):
    """The published ToMe ViT (``tome/patch/timm.py``) over ``blocks`` on ONE example.

    Each ``ToMeBlock``: attention with proportional attention (``log size`` once tokens have
    been merged), residual, then, if its ``r > 0``, ``bipartite_soft_matching`` on the keys
    averaged over heads and ``merge_wavg`` (``np_tome_published``: output ``[unmerged A; B]``),
    then the MLP on the merged tokens.

    Returns ``(outputs, size, rep)``: the stream after every block, the final token sizes and
    ``rep`` [T_final], the input position of the token each row's survivors chain back to.
    ``trace["margins"]`` collects every step's rounding-sensitive gaps.
    """
    x = _f32(x)
    size = None
    rep = np.arange(x.shape[0])
    outputs = []
    for w, r in zip(blocks, rs, strict=True):
        x, _, keys = np_vit_attention(x, w, size, eps)
        if r > 0:
            tr = {} if trace is not None else None
            x, size, out_pos, _ = np_tome_published(
                x, keys.mean(axis=0), r, size, class_token=class_token, trace=tr
            )
            rep = rep[out_pos]
            if trace is not None:
                trace.setdefault("margins", []).extend(tr.get("margins", []))
        x = np_vit_mlp(x, w, eps)
        outputs.append(x)
    return outputs, (np.ones(x.shape[0], F32) if size is None else size), rep


def np_evit_vit_blocks(x, blocks, keep_rates, eps: float = 1e-6):
    """The published EViT (``youweiliang/evit``, ``evit.py``, ``fuse_token=True``) over
    ``blocks`` on ONE example with a CLS token at position 0.

    A block with ``keep_rate < 1`` keeps ``ceil(rate * (N - 1))`` non-CLS tokens by the
    head-averaged CLS attention (``topk``, largest first; ties to the lower index), after the
    attention residual; the rest become one token ``sum(attn_i x_i)`` appended last; the MLP
    runs on ``[CLS; kept; fused]``.

    Returns ``(outputs, label)``: the stream after every block and, per final token, the input
    position it comes from, or ``-1 - b`` for the token fused in block ``b``.
    """
    x = _f32(x)
    label = np.arange(x.shape[0])
    outputs = []
    for b, (w, rate) in enumerate(zip(blocks, keep_rates, strict=True)):
        x, probs, _ = np_vit_attention(x, w, None, eps)
        n = x.shape[0] - 1
        left = int(np.ceil(rate * n))  # math.ceil(keep_rate * (N - 1))
        if rate < 1 and left < n:
            cls_attn = np.mean(probs[:, 0, 1:], axis=0, dtype=F32)
            idx = _top_indices(cls_attn, left)
            rest = np.setdiff1d(np.arange(n), idx)
            fused = np.sum(x[1:][rest] * cls_attn[rest, None], axis=0, dtype=F32)
            x = np.concatenate([x[:1], x[1:][idx], fused[None]], axis=0)
            label = np.concatenate([label[:1], label[1:][idx], [-1 - b]])
        x = np_vit_mlp(x, w, eps)
        outputs.append(x)
    return outputs, label


def np_focal_significance(scores: np.ndarray) -> np.ndarray:
    """FoPru's published ``focal_prunning`` for one example, up to the selection: head mean,
    s1 = mean over queries (dim 0), s2 = mean over keys (dim 1), the one with the larger
    (unbiased) variance; ``>`` strict, so a tie picks s2. ``scores``: [H, N, N]."""
    a = np.asarray(scores, np.float64).mean(axis=0)
    s1, s2 = a.mean(axis=0), a.mean(axis=1)
    return s1 if np.var(s1, ddof=1) > np.var(s2, ddof=1) else s2


def np_focal_select(scores: np.ndarray, k: int) -> np.ndarray:
    """``focal_prunning``'s "rank" strategy: the ``k`` most significant patches, in their
    original order ("reorder")."""
    order = np.argsort(-np_focal_significance(scores), kind="stable")
    return np.sort(order[:k])
