"""Index-for-index parity between pruneax.tokens and independent NumPy oracles.

The oracles (``tests/oracles.py``) transcribe the published algorithms from the spec; here every
selector is called as a user calls it (the public, jit-compiled function) on continuous random
float32 inputs (Gaussian features; attention-like scores from a softmax of Gaussian logits) and
must return exactly the oracle's indices.

Greedy selectors recompute floating-point gains at every step, and over hundreds of steps two
float32 implementations (NumPy/BLAS here, XLA in pruneax) meet decisions whose best and
runner-up differ by less than their rounding. ``_assert_greedy`` lets the oracle follow pruneax
through such near-ties only (relative gap below ``TOL_*``); every clear decision must agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pruneax.tokens as T

try:  # tests/ as a package, or tests/ on sys.path (pytest's default rootdir-less import)
    from tests import oracles as O
except ImportError:
    import oracles as O

# (N, D, k, seeds, min_full): seeds are few for the big shapes to bound the runtime;
# min_full = how many seeds must be verified index for index (see _assert_greedy), the rest at
# least up to their first float32 near-tie. Runs of 320 greedy steps on 2880 tokens meet dozens
# of near-ties (late gaps shrink to ~1e-7 relative); when the oracle cannot recover pruneax's
# order through them, only the prefix is checked, hence min_full = 0 there.
SMALL = (40, 8, 6, 20, 20)
MEDIUM = (196, 64, 20, 12, 12)
LLAVA = (576, 1024, 64, 6, 3)  # LLaVA-1.5: 576 projector outputs, budget 64
NEXT = (2880, 1024, 320, 1, 0)  # LLaVA-NeXT: 5 x 576 tokens, budget 320
FEATURE_SHAPES = [SMALL, MEDIUM, LLAVA, NEXT]


def _ids(shapes):
    return [f"N{s[0]}-D{s[1]}-k{s[2]}" for s in shapes]


def _features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.standard_normal((n, d)).astype(np.float32)


def _scores(rng: np.random.Generator, n: int, scale: float = 2.0) -> np.ndarray:
    """Attention-like scores: softmax of Gaussian logits (continuous, no ties)."""
    z = scale * rng.standard_normal(n)
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32)


def _attention(rng: np.random.Generator, heads: int, length: int) -> np.ndarray:
    z = rng.standard_normal((heads, length, length)).astype(np.float32) * 2.0
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _assert_same(got, want, what: str) -> None:
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape or not np.array_equal(got, want):
        only_got = sorted(set(got.tolist()) - set(want.tolist()))
        only_want = sorted(set(want.tolist()) - set(got.tolist()))
        raise AssertionError(
            f"{what}: pruneax and oracle differ; only in pruneax {only_got}, "
            f"only in oracle {only_want} (shapes {got.shape} vs {want.shape})"
        )
    np.testing.assert_array_equal(got, want)


# Relative gap below which a greedy float32 decision counts as a near-tie, which XLA and NumPy
# may legitimately round either way. Measured: 1 - cos distances agree to ~1e-7 relative;
# MMTok's gains only to ~1e-5 (exp(cos / 0.02) amplifies rounding of the logits, and late
# gains are small differences of large coverage values).
TOL_DIST = 2e-6
TOL_COVER = 3e-5


def _assert_greedy(got, oracle, tol: float, what: str) -> int | None:
    """Parity with a greedy oracle, robust to float32 near-ties; returns how much was checked.

    ``oracle(trace)`` runs with ``trace = {"prefer": set(got), "tol": tol}``: at a decision
    whose runner-up is within ``tol`` (relative) of the best it takes a near-tied candidate
    that pruneax kept (``oracles._pick``); every clear decision is its own.

    1. If the result equals ``got`` index for index, the whole run is verified: returns None.
    2. Otherwise pruneax's order through its near-ties was not recoverable from its sorted
       output. If the oracle met no near-tie at all, that is a real mismatch (raise). If it
       did, every pick BEFORE the first near-tie (where the guided and the plain oracle agree)
       must be in ``got``, greedy selection being prefix-consistent: returns that step.
    """
    got = np.asarray(got)
    trace = {"prefer": set(got.tolist()), "tol": tol}
    want = oracle(trace)
    if np.array_equal(got, want):
        return None
    margins = np.asarray(trace["margins"])
    near = np.flatnonzero(margins < tol)
    if near.size == 0:
        _assert_same(got, want, f"{what} (no near-tie on the oracle's path)")
    first = int(near[0])
    missing = sorted(set(trace["order"][:first].tolist()) - set(got.tolist()))
    assert not missing, (
        f"{what}: oracle picks {missing} made before the first near-tie (step {first}, "
        f"relative gap {margins[first]:.1e}) are missing from pruneax's selection"
    )
    return first


def _assert_mostly_full(results: list, min_full: int, what: str) -> None:
    """At least ``min_full`` runs verified index for index (``None`` from _assert_greedy)."""
    full = sum(r is None for r in results)
    assert full >= min_full, (
        f"{what}: only {full} of {len(results)} runs verified in full; the others only up to "
        f"their first float32 near-tie, at steps {[r for r in results if r is not None]}"
    )


def _check_index_output(idx, k: int, n: int) -> None:
    idx = np.asarray(idx)
    assert idx.dtype == np.int32, idx.dtype
    assert idx.shape == (k,)
    assert np.all(np.diff(idx) > 0), "indices must be unique and sorted ascending"
    assert idx.min() >= 0 and idx.max() < n


# ---------------------------------------------------------------------------------------------
# Top-k
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", [(40, 6), (576, 144), (576, 29), (2880, 320)])
def test_topk(n, k):
    for seed in range(15):
        s = _scores(np.random.default_rng(seed), n)
        got = T.topk(s, k)
        _check_index_output(got, k, n)
        _assert_same(got, O.np_topk(s, k), f"topk n={n} k={k} seed={seed}")


# ---------------------------------------------------------------------------------------------
# DivPrune (max-min diversity)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d,k,seeds,min_full", FEATURE_SHAPES, ids=_ids(FEATURE_SHAPES))
def test_maxmin_diversity(n, d, k, seeds, min_full):
    results = []
    for seed in range(seeds):
        x = _features(np.random.default_rng(seed), n, d)
        got = T.maxmin_diversity(x, k)
        _check_index_output(got, k, n)
        results.append(
            _assert_greedy(
                got,
                lambda tr, x=x: O.np_maxmin_diversity(x, k, trace=tr),
                TOL_DIST,
                f"maxmin n={n} d={d} k={k} seed={seed}",
            )
        )
        # On continuous inputs the published (unmasked) code returns unique picks, the same.
        pub = O.np_divprune_published(x, k)
        assert len(np.unique(pub)) == k
        want = O.np_maxmin_diversity(x, k)
        _assert_same(np.sort(pub).astype(np.int32), want, f"published divprune seed={seed}")
    _assert_mostly_full(results, min_full, f"maxmin n={n}")


def test_maxmin_default_budget_576():
    """DivPrune's default budget round(0.098 * 576) = 56 on LLaVA-sized inputs."""
    k = T.budget(576, 0.098)
    assert k == 56
    for seed in range(2):
        x = _features(np.random.default_rng(100 + seed), 576, 1024)
        _assert_greedy(
            T.maxmin_diversity(x, k),
            lambda tr, x=x: O.np_maxmin_diversity(x, k, trace=tr),
            TOL_DIST,
            f"default budget seed={seed}",
        )


@pytest.mark.parametrize("seed", range(6))
def test_maxmin_gaussian_duplicates(seed):
    """Exact duplicate rows: unique output; equal to the published code where it is unique."""
    rng = np.random.default_rng(seed)
    n_distinct, n = 30, 60
    base = _features(rng, n_distinct, 16)
    owner = np.concatenate([np.arange(n_distinct), rng.integers(0, n_distinct, n - n_distinct)])
    owner = rng.permutation(owner)
    x = base[owner]
    # k <= number of distinct points: the published picks are unique and must agree.
    for k in (5, 25):
        pub = O.np_divprune_published(x, k)
        want = O.np_maxmin_diversity(x, k)
        got = T.maxmin_diversity(x, k)
        _check_index_output(got, k, n)
        if len(np.unique(pub)) == k:
            _assert_same(np.sort(pub).astype(np.int32), want, f"oracle vs published k={k}")
            _assert_same(got, np.sort(pub).astype(np.int32), f"pruneax vs published k={k}")
        _assert_same(got, want, f"duplicates k={k} seed={seed}")
    # k beyond the distinct points: pruneax still returns unique indices covering every point.
    for k in (45, n):
        got = np.asarray(T.maxmin_diversity(x, k))
        _check_index_output(got, k, n)
        assert set(owner[got].tolist()) == set(range(n_distinct))


@pytest.mark.parametrize("seed", range(5))
def test_maxmin_exact_duplicates_published_defect(seed):
    """Rows that are scaled basis vectors: Dist is exactly 0 / 1, so ties are exact.

    The published code (no masking) returns index 0 again once every distinct point is
    covered; pruneax and the masked oracle return the lowest unselected indices instead.
    """
    rng = np.random.default_rng(seed)
    d, n = 8, 24
    basis = rng.permutation(np.concatenate([np.arange(d), rng.integers(0, d, n - d)]))
    scale = rng.choice(np.asarray([0.5, 1.0, 2.0, 4.0], np.float32), size=n)
    x = (np.eye(d, dtype=np.float32)[basis] * scale[:, None]).astype(np.float32)
    for k in (3, d, d + 5, n):
        got = T.maxmin_diversity(x, k)
        _check_index_output(got, k, n)
        _assert_same(got, O.np_maxmin_diversity(x, k), f"basis rows k={k} seed={seed}")
        pub = O.np_divprune_published(x, k)
        if k <= d:
            assert len(np.unique(pub)) == k
            _assert_same(got, np.sort(pub).astype(np.int32), f"published k={k}")
        else:
            assert np.all(pub[d:] == 0), pub  # the documented defect


# ---------------------------------------------------------------------------------------------
# k-center and max-sum (ToDRE)
# ---------------------------------------------------------------------------------------------


KCENTER_CASES = [
    (*shape, metric, pivot_kind)
    for shape in (SMALL, MEDIUM, LLAVA)
    for metric in ("cosine", "l2")
    for pivot_kind in ("int", "scores")
] + [(*NEXT, "cosine", "scores"), (*NEXT, "l2", "int")]


@pytest.mark.parametrize(
    "n,d,k,seeds,min_full,metric,pivot_kind",
    KCENTER_CASES,
    ids=[f"N{c[0]}-D{c[1]}-k{c[2]}-{c[5]}-{c[6]}" for c in KCENTER_CASES],
)
def test_kcenter(n, d, k, seeds, min_full, metric, pivot_kind):
    results = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x = _features(rng, n, d)
        pivot = int(rng.integers(n)) if pivot_kind == "int" else _scores(rng, n)
        got = T.kcenter(x, k, pivot=pivot, metric=metric)
        _check_index_output(got, k, n)
        results.append(
            _assert_greedy(
                got,
                lambda tr, x=x, pivot=pivot: O.np_kcenter(x, k, pivot, metric, trace=tr),
                TOL_DIST,
                f"kcenter {metric} {pivot_kind} n={n} k={k} seed={seed}",
            )
        )
        assert O._pivot_index(pivot, n) in set(np.asarray(got).tolist())
    _assert_mostly_full(results, min_full, f"kcenter n={n} {metric} {pivot_kind}")


def test_kcenter_scalar_array_pivot():
    x = _features(np.random.default_rng(0), 196, 64)
    for p in (0, 77, 195):
        for pivot in (np.int32(p), jnp.asarray(p, jnp.int32)):
            _assert_same(T.kcenter(x, 20, pivot=pivot), O.np_kcenter(x, 20, p), f"pivot {p}")


MAXSUM_CASES = [(*shape, kind) for shape in (SMALL, MEDIUM, LLAVA) for kind in ("int", "scores")]
MAXSUM_CASES += [(*NEXT, "scores")]


@pytest.mark.parametrize(
    "n,d,k,seeds,min_full,pivot_kind",
    MAXSUM_CASES,
    ids=[f"N{c[0]}-D{c[1]}-k{c[2]}-{c[5]}" for c in MAXSUM_CASES],
)
def test_maxsum_diversity(n, d, k, seeds, min_full, pivot_kind):
    results = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x = _features(rng, n, d)
        pivot = int(rng.integers(n)) if pivot_kind == "int" else _scores(rng, n)
        got = T.maxsum_diversity(x, k, pivot=pivot)
        _check_index_output(got, k, n)
        results.append(
            _assert_greedy(
                got,
                lambda tr, x=x, pivot=pivot: O.np_maxsum_diversity(x, k, pivot, trace=tr),
                TOL_DIST,
                f"maxsum {pivot_kind} n={n} k={k} seed={seed}",
            )
        )
    _assert_mostly_full(results, min_full, f"maxsum n={n} {pivot_kind}")


# ---------------------------------------------------------------------------------------------
# MMTok coverage
# ---------------------------------------------------------------------------------------------

# (N, D, k, seeds, min_full, text?, x_vision?); m = 8 text tokens (fixed: one compile each).
COVERAGE_CASES = [
    (*shape, use_text, use_vision)
    for shape in ((40, 8, 6, 12, 12), (196, 64, 20, 8, 8), (576, 1024, 64, 5, 2))
    for use_text in (False, True)
    for use_vision in (False, True)
] + [(2880, 1024, 320, 1, 0, True, True)]


@pytest.mark.parametrize(
    "n,d,k,seeds,min_full,use_text,use_vision",
    COVERAGE_CASES,
    ids=[
        f"N{c[0]}-D{c[1]}-k{c[2]}-{'text' if c[5] else 'notext'}-{'xvision' if c[6] else 'x'}"
        for c in COVERAGE_CASES
    ],
)
def test_coverage(n, d, k, seeds, min_full, use_text, use_vision):
    results = []
    kwargs = dict(alpha=0.5, tau_tv=0.02, tau_vv=0.2)  # MMTok's LLaVA setting
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x = _features(rng, n, d)
        text = _features(rng, 8, d) if use_text else None
        xv = _features(rng, n, max(8, d // 4)) if use_vision else None
        got = T.coverage(x, k, text=text, x_vision=xv, **kwargs)
        _check_index_output(got, k, n)
        results.append(
            _assert_greedy(
                got,
                lambda tr, x=x, text=text, xv=xv: O.np_coverage(
                    x, k, text=text, x_vision=xv, trace=tr, **kwargs
                ),
                TOL_COVER,
                f"coverage n={n} k={k} text={use_text} xv={use_vision} seed={seed}",
            )
        )
    _assert_mostly_full(results, min_full, f"coverage n={n} text={use_text} xv={use_vision}")


def test_coverage_defaults_and_matrix():
    """Function defaults (tau_tv = 0.01) and the coverage matrix itself."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = _features(rng, 100, 32)
        text = _features(rng, 7, 32)
        xv = _features(rng, 100, 16)
        _assert_greedy(
            T.coverage(x, 10, text=text),
            lambda tr, x=x, text=text: O.np_coverage(x, 10, text=text, trace=tr),
            TOL_COVER,
            "defaults",
        )
        np.testing.assert_allclose(
            np.asarray(T.coverage_matrix(x, text=text, x_vision=xv, alpha=0.7)),
            O.np_coverage_matrix(x, text, xv, alpha=0.7),
            rtol=1e-5,
            atol=1e-8,
        )
    # empty text (m = 0) is vision-only coverage
    x = _features(np.random.default_rng(9), 50, 16)
    empty = np.zeros((0, 16), np.float32)
    _assert_same(T.coverage(x, 8, text=empty), O.np_coverage(x, 8), "empty text")


# ---------------------------------------------------------------------------------------------
# HiPrune
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid,k,alpha,seeds",
    [
        ((24, 24), 64, 0.1, 15),
        ((24, 24), 128, 0.1, 10),
        ((24, 24), 192, 0.1, 10),
        ((24, 24), 64, 0.5, 10),
        ((7, 13), 20, 0.5, 15),
        ((13, 7), 30, 0.8, 15),
        ((48, 60), 320, 0.1, 3),
        ((24, 24), 8, 1.0, 10),  # 2 anchors + up to 8 buffers > k: pruneax's documented rule
        ((5, 6), 3, 1.0, 10),
        ((9, 4), 13, 1.0, 10),
    ],
)
def test_hiprune(grid, k, alpha, seeds):
    n = grid[0] * grid[1]
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        shallow, deep = _scores(rng, n), _scores(rng, n)
        got = T.hiprune(shallow, deep, k, grid=grid, alpha=alpha)
        _check_index_output(got, k, n)
        want = O.np_hiprune(shallow, deep, k, grid, alpha)
        _assert_same(got, want, f"hiprune grid={grid} k={k} alpha={alpha} seed={seed}")


def test_hiprune_edge_anchors_do_not_wrap():
    """Anchors on the grid border: neighbours across a row end or outside the grid are dropped."""
    grid = (6, 9)
    n = 54
    for anchor in (0, 8, 9, 17, 45, 53, 26):
        shallow = np.full(n, 0.001, np.float32)
        shallow[anchor] = 0.9
        deep = _scores(np.random.default_rng(anchor), n)
        k = 10
        got = T.hiprune(shallow, deep, k, grid=grid, alpha=0.5)  # round(10 * 0.5 / 5) = 1 anchor
        _assert_same(got, O.np_hiprune(shallow, deep, k, grid, 0.5), f"anchor {anchor}")


# ---------------------------------------------------------------------------------------------
# FEATHER
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid,stride,ts,seeds",
    [
        ((27, 27), 3, (218, 1, 500), 4),  # published: t = int(0.3 * 729) = 218
        ((24, 24), 3, (172, 10), 4),
        ((10, 14), 4, (42, 100), 4),
        ((48, 60), 3, (864,), 2),
    ],
)
def test_feather_equals_published_union(grid, stride, ts, seeds):
    n = grid[0] * grid[1]
    np.testing.assert_array_equal(
        np.asarray(T.uniform_grid(grid, stride)), O.np_uniform_grid(grid, stride)
    )
    for t in ts:
        for seed in range(seeds):
            s = _scores(np.random.default_rng(seed), n)
            want = O.np_feather_published_union(s, grid, stride, t)
            got = T.feather(s, len(want), grid=grid, stride=stride)
            _check_index_output(got, len(want), n)
            _assert_same(got, want, f"feather grid={grid} stride={stride} t={t} seed={seed}")


@pytest.mark.parametrize("grid,stride", [((27, 27), 3), ((10, 14), 4)])
def test_feather_fixed_budget(grid, stride):
    """Any static k: the grid plus the best other tokens, or the best grid tokens if k < |grid|."""
    n = grid[0] * grid[1]
    n_grid = len(O.np_uniform_grid(grid, stride))
    for k in (1, n_grid - 1, n_grid, n_grid + 7, n):
        for seed in range(4):
            s = _scores(np.random.default_rng(seed), n)
            want = O.np_feather(s, k, grid, stride)
            _assert_same(T.feather(s, k, grid=grid, stride=stride), want, f"k={k} seed={seed}")


# ---------------------------------------------------------------------------------------------
# HoloV
# ---------------------------------------------------------------------------------------------


def _holov_well_conditioned(trace) -> bool:
    """No chunk's ``w_c * k`` within 1e-4 of an integer, no near-tie at the remainder."""
    m = trace["margins"]
    return m[0] > 1e-4 and (len(m) < 2 or m[1] > 1e-5)


def _holov_inputs(rng, n, d, hot_chunk=None, num_chunks=16, boost=6.0):
    x = _features(rng, n, d)
    z = 2.0 * rng.standard_normal(n)
    if hot_chunk is not None:
        sizes = O.np_holov_chunks(n, num_chunks)
        lo = int(np.sum(sizes[:hot_chunk]))
        z[lo : lo + sizes[hot_chunk]] += boost
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(np.float32), x


@pytest.mark.parametrize(
    "n,d,k,c,seeds",
    [
        (576, 1024, 64, 16, 8),  # the published LLaVA setting
        (576, 64, 144, 16, 10),
        (578, 64, 64, 16, 10),  # N % C = 2: the first two chunks get one more token
        (100, 16, 17, 7, 15),
        (2880, 256, 320, 16, 2),
    ],
)
def test_holov(n, d, k, c, seeds):
    np.testing.assert_array_equal(np.asarray(T.holov_chunks(n, c)), O.np_holov_chunks(n, c))
    skipped = 0
    for seed in range(seeds):
        s, x = _holov_inputs(np.random.default_rng(seed), n, d, num_chunks=c)
        got = T.holov(s, x, k, num_chunks=c)
        _check_index_output(got, k, n)
        tr = {}
        want, published = O.np_holov(s, x, k, num_chunks=c, return_published=True, trace=tr)
        if not _holov_well_conditioned(tr):  # a budget split float32 may round either way
            skipped += 1
            continue
        _assert_same(got, want, f"holov n={n} k={k} C={c} seed={seed}")
        if len(published) == k:  # no overflow: pruneax keeps exactly the published tokens
            _assert_same(got, np.sort(published).astype(np.int32), "published holov")
    assert skipped <= seeds // 4, f"{skipped} of {seeds} inputs were near a rounding boundary"


@pytest.mark.parametrize("n,k,c", [(576, 64, 16), (578, 64, 16), (100, 30, 7)])
def test_holov_chunk_overflow(n, k, c):
    """Most attention in one chunk: its budget exceeds its size; lost budget is refilled."""
    overflowed = skipped = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        s, x = _holov_inputs(rng, n, 32, hot_chunk=int(rng.integers(c)), num_chunks=c, boost=8.0)
        got = T.holov(s, x, k, num_chunks=c)
        _check_index_output(got, k, n)
        tr = {}
        want, published = O.np_holov(s, x, k, num_chunks=c, return_published=True, trace=tr)
        if not _holov_well_conditioned(tr):
            skipped += 1
            continue
        overflowed += len(published) < k
        _assert_same(got, want, f"holov overflow n={n} k={k} C={c} seed={seed}")
        assert set(published.tolist()) <= set(np.asarray(got).tolist())
    assert skipped <= 2 and overflowed >= 5, (skipped, overflowed)


# ---------------------------------------------------------------------------------------------
# ToMe
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,d,c,r,num_protected,with_size",
    [
        (197, 64, 32, 16, 1, False),  # DeiT-S: 196 patches + CLS
        (197, 64, 32, 16, 1, True),
        (198, 32, 16, 40, 1, True),
        (50, 16, 8, 24, 1, False),  # r = (50 - 1) // 2, the published cap
        (51, 16, 8, 25, 1, True),
        (197, 64, 32, 13, 0, False),
        (64, 16, 8, 32, 0, True),
        (30, 8, 8, 0, 1, False),
    ],
)
def test_tome(n, d, c, r, num_protected, with_size):
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x = _features(rng, n, d)
        metric = _features(rng, n, c)
        size = rng.integers(1, 6, n).astype(np.float32) if with_size else None
        merged, new_size, dest = T.tome_merge(x, metric, r, size=size, num_protected=num_protected)
        tr = {}
        p_merged, p_size, out_pos, dest_pos = O.np_tome_published(
            x, metric, r, size, class_token=num_protected == 1, trace=tr
        )
        assert min(tr.get("margins", [np.inf])) > 1e-6, "near-tie in the matching: other seed"
        assert merged.shape == (n - r, d) and new_size.shape == (n - r,) and dest.shape == (n,)
        order = np.argsort(out_pos)  # pruneax keeps survivors in original order
        np.testing.assert_allclose(np.asarray(merged), p_merged[order], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(new_size), p_size[order])
        want_dest = np.searchsorted(out_pos[order], dest_pos)
        np.testing.assert_array_equal(np.asarray(dest), want_dest)
        if num_protected == 1:
            assert int(np.asarray(dest)[0]) == 0


# ---------------------------------------------------------------------------------------------
# EViT fusion and scorers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d,k", [(196, 64, 137), (576, 1024, 144), (40, 8, 1)])
def test_fuse_pruned(n, d, k):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = _features(rng, n, d)
        w = _scores(rng, n)
        idx = T.topk(w, k)
        got = T.fuse_pruned(x, idx, w)
        np.testing.assert_allclose(
            np.asarray(got), O.np_fuse_pruned(x, idx, w), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("heads,length,num_prefix", [(16, 577, 1), (12, 197, 1), (6, 69, 5)])
def test_cls_and_received_attention(heads, length, num_prefix):
    for seed in range(3):
        attn = _attention(np.random.default_rng(seed), heads, length)
        np.testing.assert_allclose(
            np.asarray(T.cls_attention(attn, num_prefix=num_prefix)),
            O.np_cls_attention(attn, 0, num_prefix),
            rtol=1e-5,
            atol=1e-8,
        )
        np.testing.assert_allclose(
            np.asarray(T.received_attention(attn, num_prefix=num_prefix)),
            O.np_received_attention(attn, num_prefix),
            rtol=1e-5,
            atol=1e-8,
        )
    # a class token in the middle (Vision Mamba style) with no prefix keys dropped
    attn = _attention(np.random.default_rng(7), 4, 33)
    np.testing.assert_allclose(
        np.asarray(T.cls_attention(attn, cls_index=16, num_prefix=0)),
        O.np_cls_attention(attn, 16, 0),
        rtol=1e-5,
        atol=1e-8,
    )


@pytest.mark.parametrize(
    "heads,length,start,stop", [(32, 700, 35, 611), (8, 64, 0, 64), (4, 50, 5, 6)]
)
def test_last_query_attention(heads, length, start, stop):
    for seed in range(3):
        attn = _attention(np.random.default_rng(seed), heads, length)
        np.testing.assert_allclose(
            np.asarray(T.last_query_attention(attn, start=start, stop=stop)),
            O.np_last_query_attention(attn, start, stop),
            rtol=1e-5,
            atol=1e-8,
        )


@pytest.mark.parametrize(
    "heads,kv_heads,n,hd", [(32, 32, 729, 128), (32, 8, 576, 128), (4, 1, 50, 16)]
)
def test_query_key_attention(heads, kv_heads, n, hd):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((heads, hd)).astype(np.float32)
        keys = rng.standard_normal((kv_heads, n, hd)).astype(np.float32)
        np.testing.assert_allclose(
            np.asarray(T.query_key_attention(q, keys)),
            O.np_query_key_attention(q, keys),
            rtol=1e-4,
            atol=1e-8,
        )


# ---------------------------------------------------------------------------------------------
# Low-precision inputs: selection runs in float32 on the upcast values
# ---------------------------------------------------------------------------------------------


def test_low_precision_inputs_select_in_float32():
    dtype = jnp.bfloat16
    rng = np.random.default_rng(0)
    x = jnp.asarray(_features(rng, 196, 64), dtype)
    x32 = np.asarray(x.astype(jnp.float32))  # the exactly representable values
    s = jnp.asarray(_scores(rng, 196), dtype)
    s32 = np.asarray(s.astype(jnp.float32))
    k = 20
    _assert_greedy(
        T.maxmin_diversity(x, k),
        lambda tr: O.np_maxmin_diversity(x32, k, trace=tr),
        TOL_DIST,
        "maxmin",
    )
    _assert_greedy(
        T.kcenter(x, k, pivot=s), lambda tr: O.np_kcenter(x32, k, s32, trace=tr), TOL_DIST, "kc"
    )
    _assert_greedy(
        T.coverage(x, k), lambda tr: O.np_coverage(x32, k, trace=tr), TOL_COVER, "coverage"
    )
    _assert_same(T.topk(s, k), O.np_topk(s32, k), "topk")
    x16 = jnp.asarray(x32, jnp.float16)
    _assert_greedy(
        T.maxmin_diversity(x16, k),
        lambda tr: O.np_maxmin_diversity(np.asarray(x16, np.float32), k, trace=tr),
        TOL_DIST,
        "maxmin float16",
    )


# ---------------------------------------------------------------------------------------------
# Batched use (vmap under jit), as the package docstring recommends
# ---------------------------------------------------------------------------------------------


def test_vmap_jit_matches_oracle_per_example():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((3, 196, 64)).astype(np.float32)
    ss = np.stack([_scores(rng, 196) for _ in range(3)])
    k = 20
    batched = {
        "maxmin": jax.jit(jax.vmap(lambda x: T.maxmin_diversity(x, k)))(xs),
        "coverage": jax.jit(jax.vmap(lambda x: T.coverage(x, k)))(xs),
        "kcenter": jax.jit(jax.vmap(lambda x, s: T.kcenter(x, k, pivot=s)))(xs, ss),
        "maxsum": jax.jit(jax.vmap(lambda x, s: T.maxsum_diversity(x, k, pivot=s)))(xs, ss),
        "holov": jax.jit(jax.vmap(lambda x, s: T.holov(s, x, k)))(xs, ss),
    }
    for b in range(3):
        x, s = xs[b], ss[b]
        _assert_greedy(
            batched["maxmin"][b],
            lambda tr, x=x: O.np_maxmin_diversity(x, k, trace=tr),
            TOL_DIST,
            "vmap maxmin",
        )
        _assert_greedy(
            batched["coverage"][b],
            lambda tr, x=x: O.np_coverage(x, k, trace=tr),
            TOL_COVER,
            "vmap coverage",
        )
        _assert_greedy(
            batched["kcenter"][b],
            lambda tr, x=x, s=s: O.np_kcenter(x, k, s, trace=tr),
            TOL_DIST,
            "vmap kcenter",
        )
        _assert_greedy(
            batched["maxsum"][b],
            lambda tr, x=x, s=s: O.np_maxsum_diversity(x, k, s, trace=tr),
            TOL_DIST,
            "vmap maxsum",
        )
        _assert_same(batched["holov"][b], O.np_holov(s, x, k), "vmap holov")
