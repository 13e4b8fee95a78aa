"""Property tests of pruneax.tokens: the selector contract, approximation bounds, ops, ToMe.

Every selector is a pure function of one example returning int32 [k] indices that are unique,
sorted ascending, in range and exactly k; it is jit-compiled with k static, vmappable, does not
retrace on a second call with the same shapes, computes in float32 whatever the input dtype and
never selects a NaN / non-finite token while a finite one remains.

Shapes are drawn from a small pool of (N, k) pairs so that jit compilations are shared between
tests (each new shape or k compiles, which dominates the run time on CPU).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import pruneax.tokens as T


def few(n: int) -> settings:
    """``n`` examples under the "ci" profile (30 examples), proportionally more under "dev"."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 30))


# --------------------------------------------------------------------------------------------
# Inputs and the selector registry
# --------------------------------------------------------------------------------------------

D = 3  # feature size of x and text
M = 2  # text tokens
DV = 2  # feature size of x_vision
GRIDS = {1: (1, 1), 6: (2, 3), 9: (3, 3)}  # N -> patch grid (rows, cols)
PAIRS = [(1, 1), (6, 1), (6, 2), (6, 6)]  # (N, k) pool shared by most tests
SMALL_PAIRS = [(6, 1), (6, 2), (9, 3)]  # for brute force over all k-subsets

FINITE = st.floats(-4, 4, width=32, allow_subnormal=False)
# Mix exact small values in, so ties and repeated rows/scores are common.
ELEMS = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]), FINITE)


# Inputs of a registered method (``pruneax.tokens.INPUTS``) from the test's arrays: the scores
# of every consumer are attention, so non-negative here (HoloV requires it).
def registry_inputs(name, a):
    n = a["s"].shape[0]
    have = {
        "scores": jnp.abs(a["s"]),
        "shallow_scores": jnp.abs(a["s2"]),
        "deep_scores": jnp.abs(a["s"]),
        "features": a["x"],
        "vision_features": a["v"],
        "text": a["t"],
        "grid": GRIDS[n],
        "key": a["key"],
    }
    return {i: v for i, v in have.items() if i in T.get_method(name).needs}


# Options the positional guarantees below need on these small grids (an anchor at k >= 3,
# FEATHER's grid at stride 2); every other method runs with its registry defaults.
TEST_OPTIONS = {"hiprune": {"alpha": 1.0}, "feather": {"stride": 2}}


def registered(name):
    """call(arrays, k) of the registered method ``name`` (``select_tokens``, needs only)."""
    return lambda a, k: T.select_tokens(
        name, k, **registry_inputs(name, a), **TEST_OPTIONS.get(name, {})
    )


# name -> call(arrays, k) -> indices: every method of the registry (read when this module is
# imported; ``select`` also runs one registered later), then variants with other inputs.
SELECTORS = {name: registered(name) for name in T.METHODS} | {
    "kcenter_l2": lambda a, k: T.kcenter(a["x"], k, pivot=a["s"], metric="l2"),
    "kcenter_index": lambda a, k: T.kcenter(a["x"], k, pivot=a["x"].shape[0] // 2),
    "coverage_text": lambda a, k: T.coverage(a["x"], k, text=a["t"]),
    "coverage_vision": lambda a, k: T.coverage(a["x"], k, text=a["t"], x_vision=a["v"]),
}
MIN_N = {"holov": 2}  # holov needs num_chunks <= N // 2, so N >= 2
# The core contract runs on every selector; the variants only add compile time elsewhere.
CORE = [s for s in SELECTORS if s not in ("kcenter_index", "coverage_vision")]
FEATURE_SELECTORS = [
    "divprune",
    "kcenter",
    "kcenter_l2",
    "maxsum",
    "coverage",
    "coverage_text",
]
SCORE_SELECTORS = ["topk", "hiprune", "feather", "holov"]


def make_arrays(x, t, v, s, s2, seed):
    return {
        "x": np.asarray(x, np.float32),
        "t": np.asarray(t, np.float32),
        "v": np.asarray(v, np.float32),
        "s": np.asarray(s, np.float32),
        "s2": np.asarray(s2, np.float32),
        "key": jax.random.key(seed),
    }


@st.composite
def inputs(draw, pairs=PAIRS, elements=ELEMS, min_n=1):
    """(arrays, k) with (N, k) from ``pairs``; values from ``elements``."""
    n, k = draw(st.sampled_from([p for p in pairs if p[0] >= min_n]))
    x = draw(arrays(np.float32, (n, D), elements=elements))
    t = draw(arrays(np.float32, (M, D), elements=elements))
    v = draw(arrays(np.float32, (n, DV), elements=elements))
    s = draw(arrays(np.float32, (n,), elements=elements))
    s2 = draw(arrays(np.float32, (n,), elements=elements))
    return make_arrays(x, t, v, s, s2, draw(st.integers(0, 2**31 - 1))), k


def random_arrays(rng, n, *, ties=False):
    if ties:
        draw = lambda *shape: rng.integers(-2, 3, shape)
    else:
        draw = lambda *shape: rng.standard_normal(shape)
    return make_arrays(draw(n, D), draw(M, D), draw(n, DV), draw(n), draw(n), int(rng.integers(9)))


def to_dtype(a, dtype):
    return {name: (v if name == "key" else np.asarray(v).astype(dtype)) for name, v in a.items()}


def assert_contract(idx, n, k):
    """int32 [k], unique, sorted ascending, in [0, n)."""
    idx_np = np.asarray(idx)
    assert idx.dtype == jnp.int32, idx.dtype
    assert idx_np.shape == (k,), (idx_np.shape, k)
    assert np.all(idx_np >= 0) and np.all(idx_np < n), (idx_np, n)
    assert np.all(np.diff(idx_np) > 0), f"not unique and sorted ascending: {idx_np}"


def n_of(a):
    return a["s"].shape[0]


def select(name, a, k):
    """``SELECTORS[name]``, or the registered method ``name`` (one registered after import)."""
    return (SELECTORS[name] if name in SELECTORS else registered(name))(a, k)


# --------------------------------------------------------------------------------------------
# The core contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORE)
@given(data=st.data())
def test_contract_random_inputs(name, data):
    a, k = data.draw(inputs(min_n=MIN_N.get(name, 1)))
    assert_contract(select(name, a, k), n_of(a), k)


@st.composite
def duplicated_inputs(draw, min_n=1):
    """Inputs whose rows and scores come from a pool of 1-3 distinct values (many repeats)."""
    n, k = draw(st.sampled_from([p for p in PAIRS if p[0] >= min_n]))
    pool = draw(st.integers(1, 3))
    rows = draw(arrays(np.float32, (pool, D), elements=ELEMS))
    vrows = draw(arrays(np.float32, (pool, DV), elements=ELEMS))
    vals = draw(arrays(np.float32, (pool,), elements=ELEMS))
    which = np.asarray(draw(st.lists(st.integers(0, pool - 1), min_size=n, max_size=n)))
    t = draw(arrays(np.float32, (M, D), elements=ELEMS))
    return make_arrays(rows[which], t, vrows[which], vals[which], vals[which[::-1]], 0), k


@pytest.mark.parametrize("name", CORE)
@given(data=st.data())
@few(15)
def test_contract_duplicate_rows(name, data):
    a, k = data.draw(duplicated_inputs(min_n=MIN_N.get(name, 1)))
    assert_contract(select(name, a, k), n_of(a), k)


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("fill", ["zeros", "ones", "same_row"])
def test_contract_degenerate_inputs(name, fill):
    """All-zero rows and scores, all-equal rows: still k unique indices (the DivPrune defect)."""
    n = 6
    if fill == "zeros":
        x, s = np.zeros((n, D)), np.zeros(n)
    elif fill == "ones":
        x, s = np.ones((n, D)), np.ones(n)
    else:
        x, s = np.tile([[0.3, -1.0, 2.0]], (n, 1)), np.full(n, 0.25)
    a = make_arrays(x, x[:M], x[:, :DV], s, s, 0)
    for k in (1, 2, n):
        assert_contract(select(name, a, k), n, k)


@pytest.mark.parametrize("name", ["divprune", "kcenter", "maxsum"])
def test_duplicates_are_not_repeated_before_distinct_rows(name):
    """Two distinct rows, each repeated: k=2 keeps one of each (max-min/k-center/max-sum)."""
    x = np.array([[1.0, 0, 0]] * 4 + [[0, 1.0, 0]] * 2, np.float32)
    a = make_arrays(x, x[:M], x[:, :DV], np.arange(6.0), np.arange(6.0), 0)
    idx = np.asarray(select(name, a, 2))
    assert sorted({tuple(r) for r in x[idx]}) == sorted({tuple(r) for r in x}), idx


# --------------------------------------------------------------------------------------------
# Greedy guarantees checked by brute force on tiny inputs
# --------------------------------------------------------------------------------------------


def covering_radius(dist, subset):
    return float(np.max(np.min(dist[:, list(subset)], axis=1)))


def pairwise(x):
    x = np.asarray(x, np.float64)
    return np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, axis=-1), 0.0))


@st.composite
def nonzero_rows(draw):
    """Feature rows bounded away from zero (cosine distance is undefined for a zero row)."""
    a, k = draw(inputs(pairs=SMALL_PAIRS))
    x = a["x"]
    small = np.linalg.norm(x, axis=1) < 0.1
    x[small] = np.array([1.0, 0.5, -0.25], np.float32)
    a["x"] = x
    return a, k


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@given(data=st.data())
def test_kcenter_covering_radius_within_twice_optimum(metric, data):
    """Gonzalez: greedy radius <= 2 x the best radius over all k-subsets.

    For "cosine" the docstring states the picks equal those of L2 on normalised rows, so the
    bound holds for the chordal distance sqrt(2 - 2 cos) (1 - cos itself is not a metric).
    """
    a, k = data.draw(nonzero_rows())
    x = np.asarray(a["x"], np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        atol = 2e-3  # 1 - cos in float32 loses ~1e-7, i.e. ~5e-4 in chordal distance
    else:
        atol = 1e-4
    dist = pairwise(x)
    idx = np.asarray(T.kcenter(a["x"], k, pivot=a["s"], metric=metric))  # any pivot works
    assert_contract(idx, len(x), k)
    opt = min(covering_radius(dist, c) for c in itertools.combinations(range(len(x)), k))
    got = covering_radius(dist, idx)
    assert got <= 2 * opt + atol, (got, opt, idx)


# coverage_matrix is not jitted itself (op-by-op dispatch compiles every op per shape); one
# jitted wrapper per text/no-text keeps the test fast and checks it traces under jit.
_coverage_matrix_jit = jax.jit(lambda x, text: T.coverage_matrix(x, text=text))
_coverage_matrix_no_text_jit = jax.jit(lambda x: T.coverage_matrix(x))


def coverage_matrix(x, text=None):
    if text is None:
        return _coverage_matrix_no_text_jit(x)
    return _coverage_matrix_jit(x, text)


def coverage_value(c, subset):
    c = np.asarray(c, np.float64)
    return float(np.sum(np.max(c[:, list(subset)], axis=1)))


@pytest.mark.parametrize("with_text", [False, True])
@given(data=st.data())
def test_coverage_within_one_minus_one_over_e_of_optimum(with_text, data):
    a, k = data.draw(inputs(pairs=SMALL_PAIRS))
    text = a["t"] if with_text else None
    c = np.asarray(coverage_matrix(a["x"], text=text))
    n = a["x"].shape[0]
    assert c.shape == ((M if with_text else 0) + n, n)
    assert np.all(np.isfinite(c)) and np.all(c >= 0)
    idx = np.asarray(T.coverage(a["x"], k, text=text))
    assert_contract(idx, n, k)
    opt = max(coverage_value(c, s) for s in itertools.combinations(range(n), k))
    got = coverage_value(c, idx)
    assert got >= (1 - 1 / math.e) * opt - 1e-6, (got, opt, idx)


@pytest.mark.parametrize("with_text", [False, True])
@given(data=st.data())
@few(15)
def test_coverage_objective_monotone_in_k(with_text, data):
    """Greedy coverage of k+1 tokens covers at least as much as that of k tokens."""
    a, _ = data.draw(inputs(pairs=[(6, 1)]))
    text = a["t"] if with_text else None
    c = coverage_matrix(a["x"], text=text)
    values = [coverage_value(c, T.coverage(a["x"], k, text=text)) for k in (1, 2, 6)]
    assert all(v1 <= v2 + 1e-6 for v1, v2 in itertools.pairwise(values)), values


NESTED = [
    "topk",
    "divprune",
    "kcenter",
    "kcenter_l2",
    "maxsum",
    "coverage",
    "coverage_text",
    "feather",
]


@pytest.mark.parametrize("name", NESTED)
@given(data=st.data())
@few(10)
def test_greedy_selection_is_nested_in_k(name, data):
    """A deterministic greedy loop picks the same first k tokens whatever the budget."""
    a, _ = data.draw(inputs(pairs=[(6, 1)]))
    sets = [set(np.asarray(select(name, a, k)).tolist()) for k in (1, 2, 6)]
    assert all(s1 <= s2 for s1, s2 in itertools.pairwise(sets)), sets


@given(a_k=inputs(pairs=[(6, 2)]))
@few(15)
def test_maxsum_and_kcenter_keep_their_pivot(a_k):
    a, k = a_k
    s = a["s"]
    best = int(np.argmax(s))  # lowest index among equal maxima, as argmax
    for idx in (
        T.kcenter(a["x"], k, pivot=s),
        T.maxsum_diversity(a["x"], k, pivot=s),
        T.kcenter(a["x"], k, pivot=s, metric="l2"),
    ):
        assert best in np.asarray(idx).tolist()
    p = len(s) // 2
    assert p in np.asarray(T.maxsum_diversity(a["x"], k, pivot=p)).tolist()
    assert p in np.asarray(T.kcenter(a["x"], k, pivot=np.int32(p))).tolist()


@given(a_k=inputs(pairs=[(6, 1), (6, 2), (6, 6)]))
@few(20)
def test_feather_keeps_uniform_grid(a_k):
    a, k = a_k
    n = n_of(a)
    grid = set(T.uniform_grid(GRIDS[n], 2).tolist())
    idx = set(np.asarray(select("feather", a, k)).tolist())
    if k >= len(grid):
        assert grid <= idx
    else:
        assert idx <= grid


@given(a_k=inputs(pairs=[(6, 2), (6, 6)], elements=FINITE))
@few(20)
def test_hiprune_keeps_anchors(a_k):
    """The top round(k * alpha / 5) tokens by shallow score are always kept."""
    a, k = a_k
    s = np.abs(a["s2"])  # the registry's shallow_scores (registry_inputs)
    num = T.hiprune_anchors(k, 1.0)
    order = np.argsort(-s, kind="stable")
    anchors = set(order[:num].tolist())
    idx = set(np.asarray(select("hiprune", a, k)).tolist())
    assert anchors <= idx, (anchors, idx)


def test_hiprune_buffers_do_not_wrap_across_rows():
    """Anchor at the end of a row: its right neighbour would be the next row's first patch."""
    shallow = np.zeros(9, np.float32)
    shallow[2] = 10.0  # (row 0, col 2)
    deep = np.zeros(9, np.float32)
    idx = np.asarray(T.hiprune(shallow, deep, 5, grid=(3, 3), alpha=1.0)).tolist()
    # 1 anchor (round(5 / 5)), buffers: left 1 and down 5; 3 is (row 1, col 0), not adjacent.
    assert {1, 2, 5} <= set(idx)
    assert len(idx) == 5


def test_topk_is_top_k():
    s = np.array([0.1, 3.0, -1.0, 2.0, 2.5, 0.0], np.float32)
    np.testing.assert_array_equal(T.topk(s, 3), [1, 3, 4])
    np.testing.assert_array_equal(T.topk(np.array([1.0, 1.0, 1.0], np.float32), 2), [0, 1])


def test_random_depends_only_on_key():
    k1 = jax.random.key(0)
    a, b = T.random(k1, 6, 2), T.random(k1, 6, 2)
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, T.random(jax.random.key(i), 6, 2)) for i in range(1, 4))
    raw = jax.random.PRNGKey(0)  # raw uint32[2] keys are accepted too
    assert_contract(T.random(raw, 6, 2), 6, 2)


# --------------------------------------------------------------------------------------------
# jit / vmap / dtype / retracing
# --------------------------------------------------------------------------------------------


def all_selectors(a, k):
    return {name: select(name, a, k) for name in SELECTORS}


# Every selector inside ONE outer jit (one compilation instead of one per selector).
ALL_JIT = jax.jit(all_selectors, static_argnums=1)


@pytest.fixture(scope="module")
def batch():
    """Three examples at (N, k) = (6, 2): continuous, tied, continuous."""
    rng = np.random.default_rng(1)
    return [random_arrays(rng, 6, ties=bool(i % 2)) for i in range(3)]


@pytest.fixture(scope="module")
def vmapped(batch):
    stacked = {key: jnp.stack([e[key] for e in batch]) for key in batch[0]}
    return jax.jit(jax.vmap(lambda a: all_selectors(a, 2)))(stacked)


@pytest.mark.parametrize("name", list(SELECTORS))
def test_vmap_equals_loop(name, batch, vmapped):
    want = np.stack([np.asarray(select(name, e, 2)) for e in batch])
    assert vmapped[name].dtype == jnp.int32
    np.testing.assert_array_equal(vmapped[name], want)


@pytest.mark.parametrize("name", ["topk", "divprune", "holov"])
def test_eager_vmap_equals_loop(name, batch):
    """Plain jax.vmap, no outer jit (the batching rule of each selector's own jit)."""
    stacked = {key: jnp.stack([e[key] for e in batch]) for key in batch[0]}
    got = jax.vmap(lambda a: select(name, a, 2))(stacked)
    np.testing.assert_array_equal(got, np.stack([select(name, e, 2) for e in batch]))


@pytest.mark.parametrize("name", list(SELECTORS))
def test_inside_outer_jit(name, batch):
    for e in batch:
        got = ALL_JIT(e, 2)[name]
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, select(name, e, 2))


@pytest.mark.parametrize("name", [s for s in SELECTORS if s != "random"])
@given(data=st.data())
@few(10)
def test_bfloat16_equals_upcast_float32(name, data):
    """Computed in float32: bf16 inputs give exactly the picks of the same values in float32.

    Run inside one outer jit for all selectors (compile time); the dtype path is the same.
    """
    a, k = data.draw(inputs(pairs=[(6, 2)]))
    a16 = to_dtype(a, jnp.bfloat16)
    a32 = to_dtype(a16, np.float32)
    np.testing.assert_array_equal(ALL_JIT(a16, k)[name], ALL_JIT(a32, k)[name])


@pytest.mark.parametrize("name", ["topk", "maxsum", "feather"])
def test_bfloat16_direct_call_equals_upcast_float32(name):
    rng = np.random.default_rng(9)
    a16 = to_dtype(random_arrays(rng, 6), jnp.bfloat16)
    np.testing.assert_array_equal(select(name, a16, 2), select(name, to_dtype(a16, np.float32), 2))


@pytest.mark.parametrize("name", ["topk", "divprune"])
def test_float16_inputs_equal_upcast_float32(name):
    rng = np.random.default_rng(3)
    a16 = to_dtype(random_arrays(rng, 6), np.float16)
    np.testing.assert_array_equal(select(name, a16, 2), select(name, to_dtype(a16, np.float32), 2))


def test_compile_counter_detects_compilation(compile_counter):
    """Canary: the counter used below does see a compilation (so those tests can fail)."""
    x = np.random.default_rng(0).standard_normal((11, 5)).astype(np.float32)
    with compile_counter() as cc:
        T.maxmin_diversity(x, 4)
    assert cc.count >= 1


@pytest.mark.parametrize("name", list(SELECTORS))
def test_no_retrace_on_second_call(name, compile_counter):
    rng = np.random.default_rng(4)
    first, second = random_arrays(rng, 6), random_arrays(rng, 6, ties=True)
    jax.block_until_ready(select(name, first, 2))
    with compile_counter() as cc:
        jax.block_until_ready(select(name, second, 2))
    assert cc.count == 0, cc.messages


def test_no_retrace_for_a_different_pivot_index(compile_counter):
    x = np.random.default_rng(5).standard_normal((6, D)).astype(np.float32)
    T.kcenter(x, 2, pivot=0)
    T.maxsum_diversity(x, 2, pivot=0)
    with compile_counter() as cc:
        T.kcenter(x, 2, pivot=4)
        T.maxsum_diversity(x, 2, pivot=np.int64(5))
    assert cc.count == 0, cc.messages


@pytest.mark.parametrize(
    ("module", "fn", "call"),
    [
        ("_topk", "_topk", lambda a: T.topk(a["s"], 2)),
        ("_diversity", "_maxmin", lambda a: T.maxmin_diversity(a["x"], 2)),
        ("_diversity", "_kcenter", lambda a: T.kcenter(a["x"], 2, pivot=a["s"])),
        ("_diversity", "_maxsum", lambda a: T.maxsum_diversity(a["x"], 2, pivot=a["s"])),
        ("_coverage", "_coverage", lambda a: T.coverage(a["x"], 2, text=a["t"])),
        ("_hiprune", "_hiprune", lambda a: SELECTORS["hiprune"](a, 2)),
        ("_feather", "_feather", lambda a: SELECTORS["feather"](a, 2)),
        ("_holov", "_holov", lambda a: SELECTORS["holov"](a, 2)),
        ("_tome", "_tome", lambda a: T.tome_merge(a["x"], a["x"], 2)),
    ],
)
def test_jit_cache_size_stable(module, fn, call):
    """The module-level jitted implementation holds one cache entry per shape, not per call."""
    import importlib

    jitted = getattr(importlib.import_module(f"pruneax.tokens.{module}"), fn)
    rng = np.random.default_rng(6)
    call(random_arrays(rng, 6))
    size = jitted._cache_size()
    for _ in range(2):
        call(random_arrays(rng, 6))
    assert jitted._cache_size() == size


# --------------------------------------------------------------------------------------------
# NaN / inf
# --------------------------------------------------------------------------------------------

BAD = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def with_invalid_tokens(draw, min_n=1, pairs=PAIRS):
    a, k = draw(inputs(pairs=pairs, elements=FINITE, min_n=min_n))
    n = n_of(a)
    invalid = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return a, k, invalid


def check_never_selected(idx, invalid, k):
    idx = np.asarray(idx).tolist()
    valid = np.flatnonzero(~invalid).tolist()
    if k <= len(valid):
        assert not set(idx) & set(np.flatnonzero(invalid).tolist()), (idx, valid)
    else:
        assert set(valid) <= set(idx), (idx, valid)


@pytest.mark.parametrize("name", FEATURE_SELECTORS)
@given(data=st.data())
@few(20)
def test_nonfinite_feature_rows_never_selected(name, data):
    a, k, invalid = data.draw(with_invalid_tokens())
    bad = data.draw(BAD, label="bad")
    col = data.draw(st.integers(0, D), label="column (D = whole row)")
    x = a["x"].copy()
    if col == D:
        x[invalid] = bad
    else:
        x[invalid, col] = bad
    a["x"] = x
    idx = select(name, a, k)
    assert_contract(idx, n_of(a), k)
    check_never_selected(idx, invalid, k)


@given(data=st.data())
@few(20)
def test_nonfinite_x_vision_rows_never_selected(data):
    a, k, invalid = data.draw(with_invalid_tokens(pairs=[(6, 1), (6, 2)]))
    v = a["v"].copy()
    v[invalid, 0] = data.draw(BAD)
    a["v"] = v
    idx = select("coverage_vision", a, k)
    assert_contract(idx, n_of(a), k)
    check_never_selected(idx, invalid, k)


@given(data=st.data())
@few(15)
def test_coverage_matrix_is_not_poisoned_by_nonfinite_rows(data):
    a, _, invalid = data.draw(with_invalid_tokens(pairs=[(6, 2)]))
    invalid[data.draw(st.integers(0, len(invalid) - 1), label="a valid token")] = False
    x = a["x"].copy()
    x[invalid] = np.nan
    t = a["t"].copy()
    t[0] = data.draw(BAD)
    c = np.asarray(coverage_matrix(x, text=t))
    assert np.all(np.isfinite(c))
    assert np.all(c[:, invalid] == 0), "an invalid token must cover nothing"
    assert np.all(c[M:][invalid] == 0), "an invalid token must be covered by nothing"
    assert np.all(c[0] == 0), "a non-finite text row must contribute a zero row"


def test_coverage_matrix_with_every_token_nonfinite_has_no_nan():
    """No finite visual token: text rows are covered by nothing, so C is all zero (not NaN)."""
    x = np.full((6, D), np.nan, np.float32)
    t = np.ones((M, D), np.float32)
    assert_contract(T.coverage(x, 2, text=t), 6, 2)
    c = np.asarray(coverage_matrix(x, text=t))
    assert np.all(np.isfinite(c)), c


@pytest.mark.parametrize("name", SCORE_SELECTORS)
@given(data=st.data())
@few(20)
def test_nan_scores_never_selected(name, data):
    """A token whose score is NaN is never kept on its score while a finite token remains.

    Position-based picks are exempt by design: FEATHER's uniform grid and HiPrune's anchors'
    grid neighbours are kept whatever their scores (documented in both docstrings).
    """
    a, k, invalid = data.draw(with_invalid_tokens(min_n=MIN_N.get(name, 1)))
    s, s2 = a["s"].copy(), a["s2"].copy()
    s[invalid] = np.nan
    s2[invalid] = np.nan  # hiprune: both of its scores are NaN
    a["s"], a["s2"] = s, s2
    idx = select(name, a, k)
    assert_contract(idx, n_of(a), k)
    exempt = positional_picks(name, a, k)
    by_score = np.array([i not in exempt for i in range(n_of(a))])
    chosen = set(np.asarray(idx).tolist())
    if chosen & set(np.flatnonzero(invalid & by_score).tolist()):
        # a NaN token was taken on score: only allowed once every finite one is taken
        assert set(np.flatnonzero(~invalid & by_score).tolist()) <= chosen, (idx, exempt)


def positional_picks(name, a, k):
    """Tokens FEATHER / HiPrune keep by position (grid; anchors and their neighbours)."""
    n = a["s"].shape[0]
    rows, cols = GRIDS[n]
    if name == "feather":
        return set(T.uniform_grid((rows, cols), 2).tolist())
    if name != "hiprune":
        return set()
    num = T.hiprune_anchors(k, 1.0)
    shallow = np.abs(a["s2"])  # the registry's shallow_scores (registry_inputs)
    key = np.where(np.isnan(shallow), -np.inf, shallow)
    out = set()
    for t in np.argsort(-key, kind="stable")[:num].tolist():
        r, c = divmod(t, cols)
        around = ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
        out |= {t} | {y * cols + x for y, x in around if 0 <= y < rows and 0 <= x < cols}
    return out


def test_topk_nan_ranks_below_minus_inf():
    s = np.array([np.nan, -np.inf, np.nan, 1.0, np.inf], np.float32)
    np.testing.assert_array_equal(T.topk(s, 3), [1, 3, 4])
    np.testing.assert_array_equal(T.topk(s, 4), [0, 1, 3, 4])


def test_feather_keeps_grid_token_whatever_its_score():
    """The uniform grid is kept by position (the point of FEATHER), even with a NaN score."""
    s = np.ones(9, np.float32)
    s[0] = np.nan
    idx = np.asarray(T.feather(s, 2, grid=(3, 3), stride=3)).tolist()
    assert 0 in idx, idx


def test_hiprune_keeps_anchor_neighbour_whatever_its_score():
    """Token 1 neighbours the anchor 0: kept by position even when both its scores are NaN."""
    shallow = np.array([9, np.nan, 1, 1, 1, 1, 1, 1, 1], np.float32)
    deep = np.array([1, np.nan, 1, 1, 1, 1, 1, 1, 1], np.float32)
    idx = np.asarray(T.hiprune(shallow, deep, 5, grid=(3, 3), alpha=1.0)).tolist()
    assert 1 in idx, idx


def test_holov_nan_score_not_selected_when_its_chunk_overflows():
    """Chunk 0 = tokens {0, 1} gets the whole budget; token 0's attention is NaN."""
    s = np.array([np.nan, 1.0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01], np.float32)
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    idx = np.asarray(T.holov(s, x, 4, num_chunks=4)).tolist()
    assert 0 not in idx, idx


# --------------------------------------------------------------------------------------------
# Ops: keep_mask, gather, fuse_pruned, protected tokens
# --------------------------------------------------------------------------------------------


@st.composite
def index_sets(draw, max_n=8):
    n = draw(st.integers(1, max_n))
    idx = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    return n, np.sort(np.asarray(idx, np.int32))


@given(n_idx=index_sets(max_n=8))
@few(8)
def test_keep_mask(n_idx):
    n, idx = n_idx
    mask = np.asarray(T.keep_mask(idx, n))
    assert mask.dtype == bool and mask.shape == (n,)
    np.testing.assert_array_equal(np.flatnonzero(mask), idx)


@given(n_idx=index_sets(max_n=6), d=st.integers(1, 2))
@few(6)
def test_gather_rows_columns_and_positions(n_idx, d):
    n, idx = n_idx
    x = np.arange(n * d, dtype=np.float32).reshape(n, d) - 3.5
    np.testing.assert_array_equal(T.gather(x, idx), x[idx])
    np.testing.assert_array_equal(T.gather(x.T, idx, axis=1), x.T[:, idx])
    np.testing.assert_array_equal(T.gather(x.T, idx, axis=-1), x.T[:, idx])
    # Position ids are gathered, not renumbered: kept tokens keep their original positions.
    positions = np.arange(n, dtype=np.int32) + 7
    np.testing.assert_array_equal(T.gather(positions, idx), idx + 7)
    xb = x.astype(jnp.bfloat16)
    assert T.gather(xb, idx).dtype == jnp.bfloat16


@given(n_idx=index_sets(max_n=6), data=st.data())
@few(15)
def test_fuse_pruned_is_weighted_sum_of_pruned_rows(n_idx, data):
    n, idx = n_idx
    x = data.draw(arrays(np.float32, (n, D), elements=FINITE))
    w = data.draw(arrays(np.float32, (n,), elements=st.floats(0, 1, width=32)))
    out = np.asarray(T.fuse_pruned(x, idx, w))
    assert out.shape == (len(idx) + 1, D)
    np.testing.assert_array_equal(out[:-1], x[idx])
    pruned = np.setdiff1d(np.arange(n), idx)
    want = (w[pruned, None].astype(np.float64) * x[pruned]).sum(0)
    np.testing.assert_allclose(out[-1], want, rtol=1e-5, atol=1e-5)


def test_fuse_pruned_keeps_dtype_and_uses_raw_weights():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]], np.float32)
    w = np.array([0.5, 0.25, 0.25], np.float32)
    out = T.fuse_pruned(x.astype(jnp.bfloat16), np.array([2], np.int32), w)
    assert out.dtype == jnp.bfloat16
    # not renormalised over the pruned tokens: 0.5 * [1, 0] + 0.25 * [0, 2]
    np.testing.assert_array_equal(np.asarray(out, np.float32)[-1], [0.5, 0.5])


@st.composite
def protected_cases(draw):
    n = draw(st.integers(2, 8))
    protected = draw(st.lists(st.integers(0, n - 1), max_size=n - 1, unique=True))
    rest_n = n - len(protected)
    idx = draw(st.lists(st.integers(0, rest_n - 1), min_size=1, max_size=rest_n, unique=True))
    return n, tuple(protected), np.asarray(sorted(idx), np.int32)


@given(case=protected_cases())
@few(15)
def test_with_protected_round_trip(case):
    n, protected, idx = case
    rest = T.unprotected_positions(n, protected)
    assert isinstance(rest, np.ndarray)
    np.testing.assert_array_equal(rest, sorted(set(range(n)) - set(protected)))
    keep = np.asarray(T.with_protected(idx, n, protected))
    assert keep.dtype == np.int32
    assert keep.shape == (len(protected) + len(idx),)
    assert np.all(np.diff(keep) > 0), keep  # sorted and unique
    assert set(protected) <= set(keep.tolist())
    assert set(keep.tolist()) - set(protected) == set(rest[idx].tolist())


def test_protected_with_a_selector_keeps_cls_and_middle_token():
    rng = np.random.default_rng(7)
    n = 11
    x = rng.standard_normal((n, D)).astype(np.float32)
    protected = (0, 5)
    rest = T.unprotected_positions(n, protected)
    keep = np.asarray(T.with_protected(T.maxmin_diversity(x[rest], 3), n, protected))
    assert {0, 5} <= set(keep.tolist()) and len(keep) == 5
    assert np.all(np.diff(keep) > 0)
    jitted = jax.jit(lambda x: T.with_protected(T.topk(x[rest, 0], 3), n, protected))(x)
    assert {0, 5} <= set(np.asarray(jitted).tolist())


# --------------------------------------------------------------------------------------------
# ToMe
# --------------------------------------------------------------------------------------------


def tome_bound(n, p):
    free_a = (n + 1) // 2 - (p + 1) // 2
    free_b = n // 2 - p // 2
    return free_a if free_b > 0 else 0


@st.composite
def tome_cases(draw, elements=FINITE):
    n = 8
    p = draw(st.sampled_from([0, 1, 2]))
    r = draw(st.sampled_from([0, tome_bound(n, p)]))
    x = draw(arrays(np.float32, (n, D), elements=elements))
    metric = draw(arrays(np.float32, (n, 2), elements=elements))
    size = draw(arrays(np.float32, (n,), elements=st.sampled_from([1.0, 2.0, 3.0, 0.5])))
    return x, metric, r, size, p


@given(case=tome_cases(elements=ELEMS))
def test_tome_merge_properties(case):
    x, metric, r, size, p = case
    n = len(x)
    merged, new_size, dest = T.tome_merge(x, metric, r, size=size, num_protected=p)
    merged, new_size, dest = map(np.asarray, (merged, new_size, dest))
    s = size
    assert merged.shape == (n - r, D) and merged.dtype == np.float32
    assert new_size.shape == (n - r,) and new_size.dtype == np.float32
    assert dest.shape == (n,) and dest.dtype == np.int32
    assert set(dest.tolist()) == set(range(n - r)), "every output row receives a token"
    # Size and mass are conserved.
    np.testing.assert_allclose(new_size.sum(), s.sum(), rtol=1e-6)
    mass = (s[:, None].astype(np.float64) * x).sum(0)
    np.testing.assert_allclose((new_size[:, None] * merged).sum(0), mass, rtol=1e-4, atol=1e-4)
    for j in range(n - r):
        members = np.flatnonzero(dest == j)
        np.testing.assert_allclose(new_size[j], s[members].sum(), rtol=1e-6)
        want = (s[members, None] * x[members]).sum(0) / s[members].sum()
        np.testing.assert_allclose(merged[j], want, rtol=1e-5, atol=1e-5)
        if len(members) > 1:  # one B (odd) token receives merged A (even) tokens
            assert sum(m % 2 == 1 for m in members) == 1, members
    # Survivors keep their original order and map to their own row.
    gone = [i for i in range(n) if i % 2 == 0 and np.sum(dest == dest[i]) > 1]
    survivors = [i for i in range(n) if i not in gone]
    assert len(gone) == r
    np.testing.assert_array_equal(dest[survivors], np.arange(n - r))
    # Protected tokens are untouched.
    for i in range(p):
        assert dest[i] == i and np.sum(dest == i) == 1
        np.testing.assert_allclose(merged[i], x[i], rtol=1e-6)  # (x * size) / size
        assert new_size[i] == s[i]
    # Merged edges are the most similar ones among the mergeable A tokens.
    if r:
        m = metric / np.maximum(np.linalg.norm(metric, axis=1, keepdims=True), 1e-8)
        b_free = [j for j in range(1, n, 2) if j >= p]
        best = {i: max(float(m[i] @ m[j]) for j in b_free) for i in range(0, n, 2) if i >= p}
        lo = min(best[i] for i in gone)
        kept = [best[i] for i in best if i not in gone]
        assert not kept or max(kept) <= lo + 1e-5, (best, gone)


@given(case=tome_cases())
@few(10)
def test_tome_r_zero_is_identity(case):
    x, metric, _, size, p = case
    for sz in (None, size) if p == 1 else (size,):
        merged, new_size, dest = T.tome_merge(x, metric, 0, size=sz, num_protected=p)
        np.testing.assert_array_equal(merged, x)  # bit-exact, as ToMe's do_nothing for r=0
        np.testing.assert_array_equal(new_size, np.ones(len(x)) if sz is None else sz)
        np.testing.assert_array_equal(dest, np.arange(len(x)))


def test_tome_merge_vmap_equals_loop():
    rng = np.random.default_rng(8)
    xs = rng.standard_normal((3, 8, D)).astype(np.float32)
    ms = rng.standard_normal((3, 8, 2)).astype(np.float32)
    sizes = rng.integers(1, 4, (3, 8)).astype(np.float32)
    got = jax.vmap(lambda x, m, s: T.tome_merge(x, m, 3, size=s))(xs, ms, sizes)
    for b in range(3):
        want = T.tome_merge(xs[b], ms[b], 3, size=sizes[b])
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g[b], w)


def test_tome_protected_token_survives_nan_metric():
    """A NaN metric row must not let the protected CLS token be merged away."""
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    metric = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    metric[2] = np.nan
    merged, new_size, dest = T.tome_merge(x, metric, 1, num_protected=1)
    assert int(dest[0]) == 0 and int(np.sum(np.asarray(dest) == 0)) == 1, dest
    np.testing.assert_array_equal(np.asarray(merged)[0], x[0])
    assert float(new_size[0]) == 1.0
