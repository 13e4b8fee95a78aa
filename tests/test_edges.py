"""Regression tests for the edge defects of issue 19 (items 2-9) in pruneax.tokens / weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pruneax.tokens as T
from pruneax import weights as W


def _params():
    kernel = jnp.arange(1.0, 17.0).reshape(16, 1) * jnp.ones((16, 8))
    return {"dense": {"kernel": kernel, "bias": jnp.ones(8)}}


# item 2: a mask whose shape differs from its leaf is refused, naming the leaf and both shapes


@pytest.mark.parametrize("shape", [(16, 1), (8, 16), (16,)])
def test_masked_optimizer_refuses_a_mask_of_the_wrong_shape(shape):
    params = _params()
    masks = {"dense": {"kernel": jnp.ones(shape, bool), "bias": None}}
    opt = W.masked_optimizer(optax.sgd(0.1), masks)
    with pytest.raises(ValueError, match=r"dense/kernel.*\(16, 8\)") as e:
        opt.init(params)
    assert str(shape) in str(e.value)


@pytest.mark.parametrize("shape", [(16, 1), (8, 16)])
def test_set_masks_refuses_a_mask_of_the_wrong_shape(shape):
    params = _params()
    inner = optax.adam(1e-3)
    state = W.masked_optimizer(inner).init(params)
    masks = {"dense": {"kernel": jnp.ones(shape, bool), "bias": None}}
    with pytest.raises(ValueError, match=r"dense/kernel.*\(16, 8\)") as e:
        W.set_masks(state, masks, inner)
    assert str(shape) in str(e.value)


def test_masked_optimizer_accepts_matching_masks_under_jit():
    params = _params()
    masks = W.layerwise_masks(W.magnitude_scores(params), 0.5)
    opt = W.masked_optimizer(optax.sgd(0.1), masks)
    state = jax.jit(opt.init)(params)
    assert state.masks["dense"]["kernel"].shape == (16, 8)


# item 3: a pruned NaN / inf weight; an additive update cannot clear it (NaN + u is NaN), so
# the optimizer emits a finite update there and the documented recipe clears it exactly


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_pruned_non_finite_weight_lands_on_zero(bad):
    params = {"dense": {"kernel": jnp.array([[bad, 1.0], [2.0, 3.0]])}}
    masks = {"dense": {"kernel": jnp.array([[False, True], [True, True]])}}
    opt = W.masked_optimizer(optax.adam(1e-2), masks)
    state = opt.init(params)
    grads = {"dense": {"kernel": jnp.ones((2, 2))}}
    updates, state = opt.update(grads, state, params)
    u = updates["dense"]["kernel"]
    assert bool(jnp.isfinite(u).all())  # no NaN leaks into the update stream
    new = W.apply_masks(optax.apply_updates(params, updates), state.masks)
    k = new["dense"]["kernel"]
    assert float(k[0, 0]) == 0.0 and not np.signbit(float(k[0, 0]))
    assert bool(jnp.isfinite(k).all())
    # the finite pruned weights still land on exactly 0 through apply_updates alone
    params2 = {"dense": {"kernel": jnp.array([[5.0, 1.0], [2.0, 3.0]])}}
    updates2, _ = opt.update(grads, opt.init(params2), params2)
    assert float(optax.apply_updates(params2, updates2)["dense"]["kernel"][0, 0]) == 0.0


# item 4: nm_masks edges


@pytest.mark.parametrize("axis", [2, 5, -3])
def test_nm_masks_axis_out_of_range(axis):
    with pytest.raises(ValueError, match="axis"):
        W.nm_masks({"kernel": jnp.ones((4, 4))}, 2, 4, axis=axis)


def test_nm_masks_zero_d_leaf():
    with pytest.raises(ValueError, match="'kernel'"):
        W.nm_masks({"kernel": jnp.float32(1.0)}, 1, 1, prunable="kernel")


def test_nm_masks_accepts_numpy_integers():
    scores = {"kernel": jnp.array([[1.0], [4.0], [2.0], [3.0]])}
    want = W.nm_masks(scores, 2, 4)["kernel"]
    got = W.nm_masks(scores, np.int64(2), np.int32(4), axis=np.int64(-2))["kernel"]
    assert got.tolist() == want.tolist()
    with pytest.raises(ValueError, match="n"):
        W.nm_masks(scores, True, 4)
    with pytest.raises(ValueError, match="axis"):
        W.nm_masks(scores, 2, 4, axis=1.0)


# item 6: signed zeros tie with the lower index


def test_topk_signed_zero_ties_to_the_lower_index():
    assert T.topk(jnp.array([-0.0, 0.0]), 1).tolist() == [0]
    assert T.topk(jnp.array([0.0, -0.0]), 1).tolist() == [0]
    assert T.topk(jnp.array([-1.0, -0.0, 0.0, -0.0]), 2).tolist() == [1, 2]


def test_feather_and_hiprune_signed_zeros():
    scores = jnp.array([1.0, -0.0, 0.0, -0.0])  # grid (2, 2), stride 2 keeps token 0
    assert T.feather(scores, 2, grid=(2, 2), stride=2).tolist() == [0, 1]
    deep = jnp.array([-0.0, 0.0, -0.0, 0.0])
    assert T.hiprune(jnp.zeros(4), deep, 1, grid=(2, 2), alpha=0.0).tolist() == [0]
    assert T.hiprune(deep, deep, 3, grid=(2, 2), alpha=1.0).tolist() == [0, 1, 2]


# item 7: tome_merge edges


def test_tome_merge_single_token():
    x = jnp.array([[1.0, 2.0]])
    merged, size, dest = T.tome_merge(x, x, 0, num_protected=0)
    assert merged.tolist() == [[1.0, 2.0]] and size.tolist() == [1.0] and dest.tolist() == [0]
    merged, size, dest = T.tome_merge(x, x, 0, size=jnp.array([3.0]), num_protected=0)
    assert merged.tolist() == [[1.0, 2.0]] and size.tolist() == [3.0] and dest.tolist() == [0]


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_tome_merge_non_positive_size(bad):
    x = jnp.eye(4)
    with pytest.raises(ValueError, match="size"):
        T.tome_merge(x, x, 1, size=jnp.array([1.0, bad, 1.0, 1.0]))


# item 8: complex inputs are refused, naming the argument


def test_coverage_refuses_complex_text():
    x = jnp.eye(3)
    with pytest.raises(ValueError, match="text"):
        T.coverage(x, 1, text=jnp.ones((1, 3), jnp.complex64))
    with pytest.raises(ValueError, match="text"):
        T.coverage_matrix(x, text=jnp.ones((1, 3), jnp.complex64))


@pytest.mark.parametrize(
    "fn",
    [
        lambda s: W.layerwise_masks(s, 0.5),
        lambda s: W.global_masks(s, 0.5),
        lambda s: W.nm_masks(s, 1, 2),
    ],
)
def test_mask_functions_refuse_complex_scores(fn):
    scores = {"dense": {"kernel": jnp.ones((2, 2), jnp.complex64)}}
    with pytest.raises(ValueError, match="dense/kernel"):
        fn(scores)


def test_score_functions_refuse_complex_params():
    params = {"w": jnp.ones((2, 2), jnp.complex64)}
    with pytest.raises(ValueError, match="'w'"):
        W.magnitude_scores(params)
    with pytest.raises(ValueError, match="'w'"):
        W.saliency_scores(params, {"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="'w'"):
        W.saliency_scores({"w": jnp.ones((2, 2))}, params)


def test_kcenter_pivot_refuses_complex_scores():
    with pytest.raises(ValueError, match="pivot"):
        T.kcenter(jnp.eye(3), 1, pivot=jnp.ones(3, jnp.complex64))


# item 9: with_protected out of range


@pytest.mark.parametrize("idx", [[7], (0, 3), [-1]])
def test_with_protected_static_out_of_range(idx):
    with pytest.raises(ValueError, match="idx"):
        T.with_protected(idx, 4)


def test_with_protected_accepts_python_ints():
    assert T.with_protected([1, 3], 6).tolist() == [0, 2, 4]
    assert T.with_protected(np.array([1, 3]), 6).tolist() == [0, 2, 4]


def test_with_protected_traced_out_of_range_is_documented():
    doc = T.with_protected.__doc__
    assert "jit" in doc and "out of range" in doc


# item 5: cosine selectors on finite rows whose squared norm overflows float32


def _huge_rows():
    x = jax.random.normal(jax.random.key(3), (12, 5))
    scale = jnp.where(jnp.arange(12) % 3 == 0, 1e20, 1.0)[:, None]
    return x, x * scale


@pytest.mark.parametrize(
    "select",
    [
        lambda x: T.maxmin_diversity(x, 4),
        lambda x: T.kcenter(x, 4, pivot=0, metric="cosine"),
        lambda x: T.maxsum_diversity(x, 4, pivot=0),
        lambda x: T.coverage(x, 4),
        lambda x: T.coverage(x, 4, text=x[:2]),
    ],
)
def test_cosine_selectors_scale_invariant_for_huge_rows(select):
    x, huge = _huge_rows()
    assert select(huge).tolist() == select(x).tolist()


def test_tome_metric_scale_invariant_for_huge_rows():
    x, huge = _huge_rows()
    assert T.tome_merge(x, huge, 3)[2].tolist() == T.tome_merge(x, x, 3)[2].tolist()


def test_holov_scale_invariant_for_huge_rows():
    x, huge = _huge_rows()
    scores = jnp.full((12,), 0.1)  # equal attention: the similarity variance decides
    want = T.holov(scores, x, 4, num_chunks=3).tolist()
    assert T.holov(scores, huge, 4, num_chunks=3).tolist() == want
    assert jax.vmap(lambda a: T.holov(scores, a, 4, num_chunks=3))(
        jnp.stack([x, huge])
    ).tolist() == [
        want,
        want,
    ]


# ------------------------------------------------------------------------------ item 1

GREEDY = {
    "maxmin_diversity": lambda x: T.maxmin_diversity(x, 3),
    "kcenter": lambda x: T.kcenter(x, 3, pivot=jnp.argmax(x[:, 0])),
    "maxsum_diversity": lambda x: T.maxsum_diversity(x, 3, pivot=0),
    "coverage": lambda x: T.coverage(x, 3),
    "holov": lambda x: T.holov(jnp.sum(x, 1), x, 3, num_chunks=2),
}


@pytest.mark.parametrize("name", sorted(GREEDY))
def test_gradients_flow_around_cache_batched_selectors(name):
    """grad, jacfwd and per-example vmap(grad) through a selector followed by a gather (the
    selectors' custom batching rule has no derivative; the indices need none)."""
    select = GREEDY[name]

    def loss(x):
        return jnp.sum(T.gather(x, select(x)) ** 2)

    xs = jax.random.normal(jax.random.key(3), (3, 10, 4))
    per_example = jax.vmap(jax.grad(loss))(xs)
    for b in range(3):
        idx = np.asarray(select(xs[b]))
        want = np.zeros((10, 4), np.float32)
        want[idx] = 2 * np.asarray(xs[b])[idx]
        np.testing.assert_allclose(np.asarray(jax.grad(loss)(xs[b])), want, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(jax.jacfwd(loss)(xs[b])), want, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(per_example[b]), want, rtol=1e-6)


@pytest.mark.parametrize("where", ["end", "start", "middle"])
def test_coverage_nan_text_rows_are_absent(where):
    """A non-finite text row (a masked padding position of the question) changes nothing: the
    picks and the text rows of C equal those of the text without it (session 8: C's text rows
    were divided by m including such rows, so padding diluted the text term)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 8)).astype(np.float32)
    text = rng.normal(size=(3, 8)).astype(np.float32)
    pad = np.full((2, 8), np.nan, np.float32)
    parts = {"end": [text, pad], "start": [pad, text], "middle": [text[:1], pad, text[1:]]}
    padded = np.concatenate(parts[where])
    for k in (1, 3, 6):
        want = T.coverage(x, k, text=text, tau_tv=0.3)
        np.testing.assert_array_equal(T.coverage(x, k, text=padded, tau_tv=0.3), want)
    c, c_pad = T.coverage_matrix(x, text=text), T.coverage_matrix(x, text=padded)
    valid = np.all(np.isfinite(padded), axis=1)
    np.testing.assert_allclose(np.asarray(c_pad)[:5][valid], np.asarray(c)[:3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(c_pad)[5:], np.asarray(c)[3:], rtol=1e-6)
