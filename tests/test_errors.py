"""Bad input to every public function of pruneax.tokens raises ValueError naming the argument.

Checks run on static information only (shapes, dtypes, Python ints), so the same errors must
come out at trace time under ``jax.jit``, ``jax.vmap`` and ``jax.eval_shape``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pruneax.tokens as T

N, D = 6, 3
X = np.ones((N, D), np.float32)
S = np.linspace(0.0, 1.0, N).astype(np.float32)
TEXT = np.ones((2, D), np.float32)
ATTN = np.full((2, 5, 5), 0.2, np.float32)
IDX = np.array([1, 3], np.int32)
KEY = jax.random.key(0)


def names(message: str, name: str) -> bool:
    """``name`` appears in ``message`` as a whole identifier (``x`` does not match ``x_vision``)."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message) is not None


def check(fn, name, shows=None):
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert names(message, name), f"message does not name {name!r}: {message}"
    if shows is not None:
        assert shows in message, f"message does not show {shows!r}: {message}"


def test_names_helper():
    assert names("x must have shape [N, D]", "x")
    assert not names("x_vision must have shape", "x")
    assert not names("got 3", "k")


# --------------------------------------------------------------------------------------------
# The budget k of every selector
# --------------------------------------------------------------------------------------------

SELECTORS = {
    "topk": lambda k: T.topk(S, k),
    "random": lambda k: T.random(KEY, N, k),
    "maxmin_diversity": lambda k: T.maxmin_diversity(X, k),
    "kcenter": lambda k: T.kcenter(X, k, pivot=0),
    "kcenter_l2": lambda k: T.kcenter(X, k, pivot=S, metric="l2"),
    "maxsum_diversity": lambda k: T.maxsum_diversity(X, k, pivot=S),
    "coverage": lambda k: T.coverage(X, k, text=TEXT),
    "hiprune": lambda k: T.hiprune(S, S, k, grid=(2, 3)),
    "feather": lambda k: T.feather(S, k, grid=(2, 3)),
    "holov": lambda k: T.holov(S, X, k, num_chunks=2),
}

BAD_K = [
    pytest.param(0, "0", id="zero"),
    pytest.param(-1, "-1", id="negative"),
    pytest.param(N + 1, str(N + 1), id="above_N"),
    pytest.param(3.0, "3.0", id="float"),
    pytest.param(np.float32(3), "3.0", id="np_float32"),
    pytest.param(jnp.array(3), "3", id="jax_array"),
    pytest.param(np.array([3]), "3", id="np_array"),
    pytest.param(True, "True", id="bool"),
    pytest.param("3", "3", id="str"),
    pytest.param(None, "None", id="None"),
]


@pytest.mark.parametrize("selector", list(SELECTORS))
@pytest.mark.parametrize(("k", "shows"), BAD_K)
def test_bad_k(selector, k, shows):
    check(lambda: SELECTORS[selector](k), "k", shows)


@pytest.mark.parametrize("selector", list(SELECTORS))
def test_valid_integer_k_types_are_accepted(selector):
    """np.int32 / np.int64 are concrete integers: accepted (so the checks above are not trivial)."""
    for k in (np.int32(2), np.int64(2)):
        assert np.asarray(SELECTORS[selector](k)).shape == (int(k),)


# --------------------------------------------------------------------------------------------
# Every other argument
# --------------------------------------------------------------------------------------------

CASES = [
    # topk
    ("topk-scores-rank0", lambda: T.topk(np.float32(1.0), 1), "scores", "()"),
    ("topk-scores-rank2", lambda: T.topk(X, 2), "scores", "(6, 3)"),
    ("topk-scores-empty", lambda: T.topk(np.zeros((0,), np.float32), 1), "scores", "(0,)"),
    ("topk-scores-complex", lambda: T.topk(S.astype(np.complex64), 2), "scores", "complex64"),
    ("topk-scores-bool", lambda: T.topk(S > 0.5, 2), "scores", "bool"),
    # random
    ("random-n-zero", lambda: T.random(KEY, 0, 1), "n", "0"),
    ("random-n-float", lambda: T.random(KEY, 6.0, 2), "n", "6.0"),
    ("random-key-float", lambda: T.random(jnp.zeros((2,)), N, 2), "key", None),
    ("random-key-shape", lambda: T.random(jnp.zeros((3,), jnp.uint32), N, 2), "key", None),
    # maxmin_diversity
    ("maxmin-x-rank1", lambda: T.maxmin_diversity(S, 2), "x", "(6,)"),
    ("maxmin-x-rank3", lambda: T.maxmin_diversity(X[None], 2), "x", "(1, 6, 3)"),
    ("maxmin-x-empty", lambda: T.maxmin_diversity(np.zeros((0, 3)), 1), "x", "(0, 3)"),
    ("maxmin-x-no-features", lambda: T.maxmin_diversity(np.zeros((6, 0)), 1), "x", "(6, 0)"),
    ("maxmin-x-complex", lambda: T.maxmin_diversity(X.astype(np.complex64), 2), "x", None),
    # kcenter
    ("kcenter-x-rank1", lambda: T.kcenter(S, 2, pivot=0), "x", "(6,)"),
    ("kcenter-pivot-too-big", lambda: T.kcenter(X, 2, pivot=N), "pivot", "6"),
    ("kcenter-pivot-negative", lambda: T.kcenter(X, 2, pivot=-1), "pivot", "-1"),
    ("kcenter-pivot-np-int", lambda: T.kcenter(X, 2, pivot=np.int64(N)), "pivot", "6"),
    (
        "kcenter-pivot-array-out-of-range",
        lambda: T.kcenter(X, 2, pivot=jnp.array(100)),
        "pivot",
        "100",
    ),
    ("kcenter-pivot-float", lambda: T.kcenter(X, 2, pivot=2.0), "pivot", None),
    ("kcenter-pivot-bool", lambda: T.kcenter(X, 2, pivot=True), "pivot", None),
    ("kcenter-pivot-length", lambda: T.kcenter(X, 2, pivot=S[:5]), "pivot", "(5,)"),
    ("kcenter-pivot-rank2", lambda: T.kcenter(X, 2, pivot=X), "pivot", "(6, 3)"),
    ("kcenter-pivot-float-scalar", lambda: T.kcenter(X, 2, pivot=jnp.float32(1)), "pivot", None),
    ("kcenter-pivot-missing", lambda: T.kcenter(X, 2, pivot=None), "pivot", None),
    ("kcenter-metric", lambda: T.kcenter(X, 2, pivot=0, metric="cos"), "metric", "'cos'"),
    ("kcenter-metric-None", lambda: T.kcenter(X, 2, pivot=0, metric=None), "metric", "None"),
    # maxsum_diversity
    ("maxsum-x-rank3", lambda: T.maxsum_diversity(X[None], 2, pivot=0), "x", "(1, 6, 3)"),
    ("maxsum-pivot-too-big", lambda: T.maxsum_diversity(X, 2, pivot=N), "pivot", "6"),
    ("maxsum-pivot-length", lambda: T.maxsum_diversity(X, 2, pivot=S[:4]), "pivot", "(4,)"),
    (
        "maxsum-pivot-array-out-of-range",
        lambda: T.maxsum_diversity(X, 2, pivot=jnp.array(-7)),
        "pivot",
        "-7",
    ),
    # coverage
    ("coverage-x-rank1", lambda: T.coverage(S, 2), "x", "(6,)"),
    ("coverage-text-rank1", lambda: T.coverage(X, 2, text=S), "text", "(6,)"),
    ("coverage-text-dim", lambda: T.coverage(X, 2, text=np.ones((2, 4))), "text", "(2, 4)"),
    ("coverage-text-bool", lambda: T.coverage(X, 2, text=TEXT > 0), "text", None),
    ("coverage-xv-rows", lambda: T.coverage(X, 2, x_vision=np.ones((5, 2))), "x_vision", "(5, 2)"),
    ("coverage-xv-rank1", lambda: T.coverage(X, 2, x_vision=S), "x_vision", "(6,)"),
    ("coverage-alpha-neg", lambda: T.coverage(X, 2, alpha=-0.5), "alpha", "-0.5"),
    ("coverage-alpha-str", lambda: T.coverage(X, 2, alpha="0.5"), "alpha", None),
    ("coverage-tau_tv-zero", lambda: T.coverage(X, 2, text=TEXT, tau_tv=0.0), "tau_tv", "0.0"),
    ("coverage-tau_vv-neg", lambda: T.coverage(X, 2, tau_vv=-0.2), "tau_vv", "-0.2"),
    ("coverage-tau_vv-nan", lambda: T.coverage(X, 2, tau_vv=float("nan")), "tau_vv", "nan"),
    ("coverage-tau_vv-inf", lambda: T.coverage(X, 2, tau_vv=float("inf")), "tau_vv", "inf"),
    # coverage_matrix
    ("cmatrix-x-rank3", lambda: T.coverage_matrix(X[None]), "x", "(1, 6, 3)"),
    ("cmatrix-text-dim", lambda: T.coverage_matrix(X, text=np.ones((2, 5))), "text", "(2, 5)"),
    (
        "cmatrix-xv-rows",
        lambda: T.coverage_matrix(X, x_vision=np.ones((7, 2))),
        "x_vision",
        "(7, 2)",
    ),
    ("cmatrix-tau_tv", lambda: T.coverage_matrix(X, text=TEXT, tau_tv=-1.0), "tau_tv", "-1.0"),
    ("cmatrix-alpha-nan", lambda: T.coverage_matrix(X, alpha=float("nan")), "alpha", "nan"),
    # hiprune
    (
        "hiprune-shallow-rank2",
        lambda: T.hiprune(X, S, 2, grid=(2, 3)),
        "shallow_scores",
        "(6, 3)",
    ),
    ("hiprune-deep-rank2", lambda: T.hiprune(S, X, 2, grid=(2, 3)), "deep_scores", "(6, 3)"),
    ("hiprune-deep-length", lambda: T.hiprune(S, S[:5], 2, grid=(2, 3)), "deep_scores", "(5,)"),
    ("hiprune-grid-size", lambda: T.hiprune(S, S, 2, grid=(2, 2)), "grid", "(2, 2)"),
    ("hiprune-grid-len", lambda: T.hiprune(S, S, 2, grid=(6,)), "grid", "(6,)"),
    ("hiprune-grid-float", lambda: T.hiprune(S, S, 2, grid=(2.0, 3)), "grid", "2.0"),
    ("hiprune-grid-None", lambda: T.hiprune(S, S, 2, grid=None), "grid", "None"),
    ("hiprune-alpha-big", lambda: T.hiprune(S, S, 2, grid=(2, 3), alpha=1.5), "alpha", "1.5"),
    ("hiprune-alpha-neg", lambda: T.hiprune(S, S, 2, grid=(2, 3), alpha=-0.1), "alpha", "-0.1"),
    # hiprune_anchors
    ("anchors-k-zero", lambda: T.hiprune_anchors(0, 0.1), "k", "0"),
    ("anchors-k-neg", lambda: T.hiprune_anchors(-64, 0.1), "k", "-64"),
    ("anchors-k-float", lambda: T.hiprune_anchors(64.0, 0.1), "k", "64.0"),
    ("anchors-alpha-big", lambda: T.hiprune_anchors(64, 5.0), "alpha", "5.0"),
    ("anchors-alpha-neg", lambda: T.hiprune_anchors(64, -0.1), "alpha", "-0.1"),
    # feather / uniform_grid
    ("feather-scores-rank2", lambda: T.feather(X, 2, grid=(2, 3)), "scores", "(6, 3)"),
    ("feather-grid-size", lambda: T.feather(S, 2, grid=(3, 3)), "grid", "(3, 3)"),
    ("feather-grid-missing", lambda: T.feather(S, 2, grid=None), "grid", "None"),
    ("feather-stride-zero", lambda: T.feather(S, 2, grid=(2, 3), stride=0), "stride", "0"),
    ("feather-stride-float", lambda: T.feather(S, 2, grid=(2, 3), stride=1.5), "stride", "1.5"),
    ("ugrid-grid-zero", lambda: T.uniform_grid((0, 3)), "grid", "(0, 3)"),
    ("ugrid-grid-neg", lambda: T.uniform_grid((-2, -3)), "grid", "(-2, -3)"),
    ("ugrid-grid-len", lambda: T.uniform_grid((3,)), "grid", "(3,)"),
    ("ugrid-grid-float", lambda: T.uniform_grid((2.5, 2)), "grid", "2.5"),
    ("ugrid-grid-str", lambda: T.uniform_grid("ab"), "grid", "'ab'"),
    ("ugrid-stride-zero", lambda: T.uniform_grid((3, 3), 0), "stride", "0"),
    ("ugrid-stride-neg", lambda: T.uniform_grid((3, 3), -1), "stride", "-1"),
    ("ugrid-stride-float", lambda: T.uniform_grid((3, 3), 2.0), "stride", "2.0"),
    # holov / holov_chunks
    ("holov-scores-rank2", lambda: T.holov(X, X, 2, num_chunks=2), "scores", "(6, 3)"),
    ("holov-x-rank1", lambda: T.holov(S, S, 2, num_chunks=2), "x", "(6,)"),
    ("holov-x-rows", lambda: T.holov(S, X[:5], 2, num_chunks=2), "x", "(5, 3)"),
    ("holov-chunks-zero", lambda: T.holov(S, X, 2, num_chunks=0), "num_chunks", "0"),
    ("holov-chunks-big", lambda: T.holov(S, X, 2, num_chunks=4), "num_chunks", "4"),
    ("holov-chunks-default", lambda: T.holov(S, X, 2), "num_chunks", "16"),
    ("holov-chunks-float", lambda: T.holov(S, X, 2, num_chunks=2.0), "num_chunks", "2.0"),
    ("chunks-zero", lambda: T.holov_chunks(6, 0), "num_chunks", "0"),
    ("chunks-more-than-n", lambda: T.holov_chunks(3, 5), "num_chunks", "5"),
    ("chunks-float", lambda: T.holov_chunks(6, 2.0), "num_chunks", "2.0"),
    ("chunks-n-float", lambda: T.holov_chunks(6.0, 2), "n", "6.0"),
    ("chunks-n-neg", lambda: T.holov_chunks(-3, 2), "n", "-3"),
    # gather
    ("gather-idx-rank2", lambda: T.gather(X, IDX[None]), "idx", "(1, 2)"),
    ("gather-idx-float", lambda: T.gather(X, IDX.astype(np.float32)), "idx", None),
    ("gather-axis-big", lambda: T.gather(X, IDX, axis=2), "axis", "(6, 3)"),
    ("gather-axis-neg", lambda: T.gather(X, IDX, axis=-3), "axis", "(6, 3)"),
    ("gather-axis-float", lambda: T.gather(X, IDX, axis=1.0), "axis", "1.0"),
    # keep_mask
    ("mask-n-zero", lambda: T.keep_mask(IDX, 0), "n", "0"),
    ("mask-n-float", lambda: T.keep_mask(IDX, 6.0), "n", "6.0"),
    ("mask-idx-rank2", lambda: T.keep_mask(IDX[None], 6), "idx", "(1, 2)"),
    ("mask-idx-float", lambda: T.keep_mask(IDX.astype(np.float32), 6), "idx", None),
    # contextual_merge
    ("ctx-x-rank1", lambda: T.contextual_merge(S, X, IDX, 1), "x", "(6,)"),
    ("ctx-metric-length", lambda: T.contextual_merge(X, X[:5], IDX, 1), "metric", "(5, 3)"),
    ("ctx-count-big", lambda: T.contextual_merge(X, X, IDX, 6), "num_contextual", "6"),
    ("ctx-count-float", lambda: T.contextual_merge(X, X, IDX, 1.0), "num_contextual", "float"),
    # fuse_pruned
    ("fuse-x-rank1", lambda: T.fuse_pruned(S, IDX, S), "x", "(6,)"),
    ("fuse-weights-rank2", lambda: T.fuse_pruned(X, IDX, X), "weights", "(6, 3)"),
    ("fuse-weights-length", lambda: T.fuse_pruned(X, IDX, S[:5]), "weights", "(5,)"),
    ("fuse-idx-float", lambda: T.fuse_pruned(X, IDX.astype(np.float32), S), "idx", None),
    ("fuse-idx-rank2", lambda: T.fuse_pruned(X, IDX[None], S), "idx", "(1, 2)"),
    # unprotected_positions / with_protected
    ("unprot-dup", lambda: T.unprotected_positions(6, (0, 0)), "protected", "(0, 0)"),
    ("unprot-out", lambda: T.unprotected_positions(6, (6,)), "protected", "(6,)"),
    ("unprot-neg", lambda: T.unprotected_positions(6, (-1,)), "protected", "(-1,)"),
    ("unprot-all", lambda: T.unprotected_positions(3, (0, 1, 2)), "protected", "(0, 1, 2)"),
    ("unprot-float", lambda: T.unprotected_positions(6, (0.0,)), "protected", "0.0"),
    ("unprot-int", lambda: T.unprotected_positions(6, 0), "protected", "0"),
    ("unprot-n-float", lambda: T.unprotected_positions(6.0, (0,)), "n", "6.0"),
    ("withp-idx-rank2", lambda: T.with_protected(IDX[None], 6, (0,)), "idx", "(1, 2)"),
    ("withp-idx-float", lambda: T.with_protected(IDX.astype(np.float32), 6), "idx", None),
    ("withp-protected", lambda: T.with_protected(IDX, 6, (9,)), "protected", "(9,)"),
    ("withp-n-float", lambda: T.with_protected(IDX, 6.5, (0,)), "n", "6.5"),
    # tome_merge
    ("tome-x-rank1", lambda: T.tome_merge(S, X, 1), "x", "(6,)"),
    ("tome-metric-rank1", lambda: T.tome_merge(X, S, 1), "metric", "(6,)"),
    ("tome-metric-rows", lambda: T.tome_merge(X, X[:5], 1), "metric", "(5, 3)"),
    ("tome-size-rank2", lambda: T.tome_merge(X, X, 1, size=X), "size", "(6, 3)"),
    ("tome-size-length", lambda: T.tome_merge(X, X, 1, size=S[:5]), "size", "(5,)"),
    ("tome-r-neg", lambda: T.tome_merge(X, X, -1), "r", "-1"),
    ("tome-r-big", lambda: T.tome_merge(X, X, 3), "r", "3"),  # 6 tokens, CLS: 2 mergeable
    ("tome-r-float", lambda: T.tome_merge(X, X, 1.0), "r", "1.0"),
    ("tome-r-array", lambda: T.tome_merge(X, X, jnp.array(1)), "r", None),
    ("tome-protected-big", lambda: T.tome_merge(X, X, 0, num_protected=6), "num_protected", "6"),
    ("tome-protected-neg", lambda: T.tome_merge(X, X, 0, num_protected=-1), "num_protected", "-1"),
    (
        "tome-protected-float",
        lambda: T.tome_merge(X, X, 0, num_protected=1.0),
        "num_protected",
        "1.0",
    ),
    # scorers
    ("cls-attn-rank2", lambda: T.cls_attention(ATTN[0]), "attn", "(5, 5)"),
    ("cls-index-big", lambda: T.cls_attention(ATTN, cls_index=5), "cls_index", "5"),
    ("cls-index-float", lambda: T.cls_attention(ATTN, cls_index=0.0), "cls_index", "0.0"),
    ("cls-prefix-all", lambda: T.cls_attention(ATTN, num_prefix=5), "num_prefix", "5"),
    ("cls-prefix-neg", lambda: T.cls_attention(ATTN, num_prefix=-1), "num_prefix", "-1"),
    ("recv-attn-rank4", lambda: T.received_attention(ATTN[None]), "attn", "(1, 2, 5, 5)"),
    ("recv-prefix-all", lambda: T.received_attention(ATTN, num_prefix=5), "num_prefix", "5"),
    ("last-attn-rank2", lambda: T.last_query_attention(ATTN[0], start=0, stop=2), "attn", None),
    ("last-empty-span", lambda: T.last_query_attention(ATTN, start=3, stop=3), "start", "3"),
    ("last-stop-big", lambda: T.last_query_attention(ATTN, start=1, stop=6), "stop", "6"),
    ("last-start-neg", lambda: T.last_query_attention(ATTN, start=-1, stop=2), "start", "-1"),
    ("last-start-float", lambda: T.last_query_attention(ATTN, start=1.0, stop=3), "start", "1.0"),
    ("last-stop-float", lambda: T.last_query_attention(ATTN, start=1, stop=3.0), "stop", "3.0"),
    (
        "qk-query-rank1",
        lambda: T.query_key_attention(np.ones(4), np.ones((1, 5, 4))),
        "query",
        "(4,)",
    ),
    (
        "qk-keys-rank2",
        lambda: T.query_key_attention(np.ones((2, 4)), np.ones((5, 4))),
        "keys",
        "(5, 4)",
    ),
    (
        "qk-head-dim",
        lambda: T.query_key_attention(np.ones((2, 4)), np.ones((1, 5, 3))),
        "keys",
        "(1, 5, 3)",
    ),
    (
        "qk-gqa-groups",
        lambda: T.query_key_attention(np.ones((3, 4)), np.ones((2, 5, 4))),
        "keys",
        "(2, 5, 4)",
    ),
    # budget
    ("budget-n-float", lambda: T.budget(576.0, 0.098), "n", "576.0"),
    ("budget-ratio-zero", lambda: T.budget(576, 0.0), "ratio", "0.0"),
    ("budget-ratio-big", lambda: T.budget(576, 1.5), "ratio", "1.5"),
    ("budget-ratio-neg", lambda: T.budget(576, -0.1), "ratio", "-0.1"),
    ("budget-ratio-nan", lambda: T.budget(576, float("nan")), "ratio", "nan"),
    ("budget-ratio-str", lambda: T.budget(576, "0.1"), "ratio", None),
    ("budget-keeps-none", lambda: T.budget(10, 0.01), "ratio", "0.01"),
    ("budget-n-zero", lambda: T.budget(0, 0.5), "n", "0"),
    # the registry
    ("register-not-a-method", lambda: T.register(lambda k, inp: None), "method", "function"),
    (
        "register-reserved-none",
        lambda: T.register(T.Method("none", lambda k, inp: None, {"scores"})),
        "none",
        "reserved",
    ),
    (
        "register-name-taken",
        lambda: T.register(T.Method("topk", lambda k, inp: None, {"scores"})),
        "topk",
        "replace=True",
    ),
    ("Method-unknown-input", lambda: T.Method("m", lambda k, i: None, {"pixels"}), "pixels", None),
    ("unregister-unknown", lambda: T.unregister("nope"), "nope", None),
    ("get_method-unknown", lambda: T.get_method("nope"), "method", "'nope'"),
    ("select_tokens-missing", lambda: T.select_tokens("kcenter", 2, features=X), "scores", None),
    (
        "select_tokens-option",
        lambda: T.select_tokens("topk", 2, scores=S, alpha=1.0),
        "alpha",
        None,
    ),
    ("uniform-k-big", lambda: T.uniform(7, grid=(2, 3)), "k", "7"),
    # FlowCut (ATTN: H 2, T 5)
    ("flowcut_scores-values-rank", lambda: T.flowcut_scores(ATTN, np.ones((2, 5))), "values",
     "(2, 5)"),
    ("flowcut_prune_count-rpl", lambda: T.flowcut_prune_count(S, N, 2, -1), "rpl", "-1"),
    ("flowcut_step-cum", lambda: T.flowcut_step(ATTN, np.ones((2, 5, 3)), np.ones(4, bool),
                                                np.ones(3), 2, 1), "cum", "(3,)"),
    ("flowcut_select-blocks", lambda: T.flowcut_select(np.stack([ATTN, ATTN]),
                                                       np.ones((3, 2, 5, 3)), 2), "attns",
     "(2, 2, 5, 5)"),
    # VisionZip's stage: dominant + contextual
    ("dominant_contextual-c", lambda: T.dominant_contextual(S, X, X, 4, 3), "num_contextual",
     "3"),
    ("dominant_contextual-contextual", lambda: T.dominant_contextual(S, X, X, 4, 1.5),
     "contextual", "1.5"),
    ("dominant_contextual-metric", lambda: T.dominant_contextual(S, X, X[0], 2, 0), "metric",
     None),
    # FoPru (ATTN: H 2, N 5)
    ("focal_significance-rank", lambda: T.focal_significance(np.ones(5)), "attn", None),
    ("focal_significance-square", lambda: T.focal_significance(np.ones((2, 5, 4))), "attn",
     "(2, 5, 4)"),
    ("focal_select-k", lambda: T.focal_select(ATTN, 6), "k", "6"),
    ("focal_select-strategy", lambda: T.focal_select(ATTN, 2, strategy="col"), "strategy",
     "'col'"),
    ("focal_select-grid", lambda: T.focal_select(ATTN, 2, strategy="row"), "grid", None),
    ("focal_select-rows", lambda: T.focal_select(np.full((1, 4, 4), 0.25), 3, strategy="row"),
     "k", "3"),
]  # fmt: skip


@pytest.mark.parametrize(("fn", "name", "shows"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument(fn, name, shows):
    check(fn, name, shows)


def test_every_public_function_has_an_error_case():
    """Each callable name in __all__ is exercised above with bad input (INPUTS and METHODS are
    read-only tables)."""
    import inspect

    source = inspect.getsource(inspect.getmodule(test_bad_argument))
    missing = [f for f in T.__all__ if callable(getattr(T, f)) and f"T.{f}(" not in source]
    assert not missing, missing


def test_valid_calls_do_not_raise():
    """The same fixtures with valid arguments go through (the errors above are about the input)."""
    T.coverage(X, 2, text=np.ones((0, D), np.float32))  # m = 0: vision-only
    T.coverage(X, 2, text=TEXT, x_vision=np.ones((N, 2)), alpha=0.0)
    T.hiprune(S, S, 2, grid=[2, 3], alpha=0.0)
    T.uniform_grid((3, 3), 1)
    T.holov(S, X, 2, num_chunks=3)  # N // 2
    T.holov_chunks(6, 6)
    T.gather(X, IDX, axis=-2)
    T.keep_mask(IDX, N)
    T.unprotected_positions(6, ())
    T.with_protected(IDX, 6, range(2))
    T.cls_attention(ATTN, cls_index=4, num_prefix=4)
    T.last_query_attention(ATTN, start=0, stop=5)
    T.query_key_attention(np.ones((4, 4)), np.ones((2, 5, 4)))
    assert T.budget(576, 0.098) == 56
    assert T.hiprune_anchors(64, 0.1) == 1


# --------------------------------------------------------------------------------------------
# At trace time: under jit, vmap and eval_shape
# --------------------------------------------------------------------------------------------

XS = np.ones((2, N, D), np.float32)
SS = np.ones((2, N), np.float32)

TRACED = [
    ("jit-topk-k", lambda: jax.jit(lambda s: T.topk(s, 0))(S), "k", "0"),
    ("jit-topk-rank", lambda: jax.jit(lambda s: T.topk(s, 2))(X), "scores", "(6, 3)"),
    ("jit-topk-traced-k", lambda: jax.jit(T.topk)(S, 2), "k", None),
    ("jit-maxmin-k", lambda: jax.jit(lambda x: T.maxmin_diversity(x, N + 1))(X), "k", "7"),
    ("jit-kcenter-pivot", lambda: jax.jit(lambda x: T.kcenter(x, 2, pivot=x))(X), "pivot", None),
    (
        "jit-coverage-xv",
        lambda: jax.jit(lambda x, v: T.coverage(x, 2, x_vision=v))(X, X[:4]),
        "x_vision",
        "(4, 3)",
    ),
    (
        "jit-holov-chunks",
        lambda: jax.jit(lambda s, x: T.holov(s, x, 2, num_chunks=4))(S, X),
        "num_chunks",
        "4",
    ),
    ("jit-tome-traced-r", lambda: jax.jit(T.tome_merge)(X, X, 1), "r", None),
    (
        "jit-hiprune-grid",
        lambda: jax.jit(lambda a, b: T.hiprune(a, b, 2, grid=(3, 3)))(S, S),
        "grid",
        "(3, 3)",
    ),
    ("vmap-topk-rank", lambda: jax.vmap(lambda s: T.topk(s, 2))(XS), "scores", "(6, 3)"),
    ("vmap-maxmin-k", lambda: jax.vmap(lambda x: T.maxmin_diversity(x, N + 1))(XS), "k", "7"),
    (
        "vmap-maxsum-rank",
        lambda: jax.vmap(lambda x: T.maxsum_diversity(x, 2, pivot=0))(SS),
        "x",
        None,
    ),
    (
        "vmap-kcenter-pivot-length",
        lambda: jax.vmap(lambda x, s: T.kcenter(x, 2, pivot=s))(XS, SS[:, :5]),
        "pivot",
        "(5,)",
    ),
    (
        "vmap-coverage-text",
        lambda: jax.vmap(lambda x, t: T.coverage(x, 2, text=t))(XS, np.ones((2, 2, 4))),
        "text",
        "(2, 4)",
    ),
    (
        "vmap-feather-grid",
        lambda: jax.vmap(lambda s: T.feather(s, 2, grid=(3, 2), stride=0))(SS),
        "stride",
        "0",
    ),
    (
        "vmap-fuse-weights",
        lambda: jax.vmap(lambda x, w: T.fuse_pruned(x, IDX, w))(XS, SS[:, :4]),
        "weights",
        "(4,)",
    ),
    (
        "vmap-tome-metric",
        lambda: jax.vmap(lambda x, m: T.tome_merge(x, m, 1))(XS, XS[:, :5]),
        "metric",
        "(5, 3)",
    ),
    (
        "vmap-cls-index",
        lambda: jax.vmap(lambda a: T.cls_attention(a, cls_index=7))(ATTN[None]),
        "cls_index",
        "7",
    ),
    (
        "vmap-of-jit-holov-x",
        lambda: jax.vmap(jax.jit(lambda s, x: T.holov(s, x, 2, num_chunks=2)))(SS, XS[:, :5]),
        "x",
        "(5, 3)",
    ),
]


@pytest.mark.parametrize(
    ("fn", "name", "shows"), [c[1:] for c in TRACED], ids=[c[0] for c in TRACED]
)
def test_bad_argument_under_transforms(fn, name, shows):
    check(fn, name, shows)


@pytest.mark.parametrize(
    ("fn", "name"),
    [
        (lambda x: T.maxmin_diversity(x, 0), "k"),
        (lambda x: T.kcenter(x, 2, pivot=N), "pivot"),
        (lambda x: T.coverage(x, 2, text=jnp.ones((2, D + 1))), "text"),
        (lambda x: T.holov(x[:, 0], x, 2, num_chunks=9), "num_chunks"),
        (lambda x: T.hiprune(x[:, 0], x[:-1, 0], 2, grid=(2, 3)), "deep_scores"),
    ],
)
def test_errors_need_no_values(fn, name):
    """eval_shape traces with abstract shapes only: the check must not need concrete data."""
    spec = jax.ShapeDtypeStruct((N, D), jnp.float32)
    check(lambda: jax.eval_shape(fn, spec), name)
