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


# ------------------------------------------------- the README's table of non-finite input

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
N9, K3 = 9, 3  # a 3 x 3 grid, 3 kept


def _nan_table() -> dict[str, list[str]]:
    """``{row: [method, ...]}`` from the README's table under ``<!-- nan-table -->``."""
    text = (ROOT / "README.md").read_text().split("<!-- nan-table -->")[1]
    rows = {}
    for line in text.strip().splitlines()[2:]:
        if not line.strip().startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = __import__("re").findall(r"`(\w+)`", cells[1])
    return rows


def _inputs(j: int, *, nan_feature: bool, nan_score: bool, seed: int):
    """Registry inputs where token ``j`` has NaN features and the top score, or a NaN score."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N9, 4)).astype(np.float32)
    s = rng.uniform(0.1, 0.5, size=N9).astype(np.float32)
    if nan_feature:
        x[j], s[j] = np.nan, 0.9
    if nan_score:
        s[j] = np.nan
    text = rng.normal(size=(2, 4)).astype(np.float32)
    return {"scores": s, "features": x, "shallow_scores": s, "deep_scores": s, "grid": (3, 3),
            "text": text, "key": jax.random.key(seed)}  # fmt: skip


def _kept(name: str, j: int, **kw) -> tuple[bool, list[int], dict]:
    """Whether the registered method ``name``, or one of the table's functions, keeps ``j``."""
    a = _inputs(j, **kw)
    if name in T.METHODS:
        m = T.METHODS[name]
        idx = T.select_tokens(name, K3, **{n: a[n] for n in m.needs})
    elif name == "dominant_contextual":
        idx = T.dominant_contextual(a["scores"], a["features"], a["features"], K3, 2)[1]
    elif name == "focal_select":  # attention whose column j holds the score (NaN or top)
        attn = np.tile(a["scores"] / np.nansum(a["scores"]), (N9, 1)) * 0.5 + np.eye(N9) * 0.5
        idx = T.focal_select(attn.astype(np.float32), K3)
    elif name == "flowcut_select":  # CLS attention to j = its score, its values the features
        t = N9 + 1
        rng = np.random.default_rng(kw["seed"])
        attn = rng.uniform(0.1, 0.2, size=(2, 2, t)).astype(np.float32)
        attn[:, :, 1:] = a["scores"]
        v = rng.normal(size=(2, 2, t, 4)).astype(np.float32)
        v[:, :, 1:] = a["features"]
        idx = T.flowcut_select(attn, v, K3)[0]
    else:
        raise AssertionError(f"README's nan-table names an unknown method {name!r}")
    idx = np.asarray(idx).tolist()
    return j in idx, idx, a


def test_readme_nan_table_covers_every_registered_method():
    rows = _nan_table()
    listed = [m for ms in rows.values() for m in ms]
    assert sorted(m for m in listed if m in T.METHODS) == sorted(T.METHODS), rows
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize("row", ["features", "scores", "scores and position", "position or chance"])
def test_readme_nan_table_row_holds(row):
    """Each row of the README's table, for every method in it and every token position."""
    for name in _nan_table()[row]:
        for j in range(N9):
            seed = j
            feat, _, _ = _kept(name, j, nan_feature=True, nan_score=False, seed=seed)
            score, idx, a = _kept(name, j, nan_feature=False, nan_score=True, seed=seed)
            if row == "features":
                assert not feat, (name, j, "a NaN feature row was kept")
                if name in ("kcenter", "maxsum"):  # the pivot: the best finite score
                    assert int(np.nanargmax(a["scores"])) in idx, (name, j, idx)
            elif row == "scores":
                if name != "flowcut_select":  # its score is computed from the values
                    assert feat, (name, j, "the top-scored token was not kept")
                assert not score, (name, j, "a NaN score was kept")
            elif row == "scores and position":
                assert feat, (name, j, "the top-scored token was not kept")
            else:  # position or chance: the same picks whatever the NaNs
                clean = _kept(name, j, nan_feature=False, nan_score=False, seed=seed)[0]
                assert feat == score == clean, (name, j)


def test_registered_pivot_is_the_best_finite_row():
    """kcenter / maxsum by registry: a NaN-feature top-scored token is not the pivot; the next
    best score is, and is kept."""
    for name in ("kcenter", "maxsum"):
        a = _inputs(4, nan_feature=True, nan_score=False, seed=0)
        idx = np.asarray(T.select_tokens(name, K3, features=a["features"], scores=a["scores"]))
        s = np.where(np.arange(N9) == 4, -np.inf, a["scores"])
        assert int(np.argmax(s)) in idx.tolist() and 4 not in idx.tolist(), (name, idx)


def test_index_pivot_is_kept_whatever_its_row_holds():
    x = np.random.default_rng(0).normal(size=(N9, 4)).astype(np.float32)
    x[3] = np.nan
    assert 3 in np.asarray(T.kcenter(x, K3, pivot=3)).tolist()
    assert 3 in np.asarray(T.maxsum_diversity(x, K3, pivot=3)).tolist()


@pytest.mark.parametrize("where", ["values", "attention", "one value entry"])
def test_flowcut_nonfinite_patch_does_not_poison_the_others(where):
    """One patch's NaN / inf used to make every FlowCut score NaN (a softmax and two sums over
    all patches), so the selection fell back to index order [0, 1, 2]. Now that patch ranks
    last and the others keep their order."""
    a = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(0), (4, 2, 10, 10)), -1))
    v = np.asarray(jax.random.normal(jax.random.key(1), (4, 2, 10, 4)))
    clean = np.asarray(T.flowcut_select(a, v, 3)[0]).tolist()
    bad = clean[0]
    a2, v2 = a.copy(), v.copy()
    if where == "values":
        v2[:, :, bad + 1] = np.nan
    elif where == "attention":
        a2[:, :, 0, bad + 1] = np.nan
    else:
        v2[0, 1, bad + 1, 2] = np.inf
    got = np.asarray(T.flowcut_select(a2, v2, 3)[0]).tolist()
    assert bad not in got and set(clean) - {bad} <= set(got), (clean, got)
    # the same pick as when that patch is dead from the first block
    scores = np.asarray(T.flowcut_scores(a2[0], v2[0]))
    assert np.isnan(scores[bad]) and np.isfinite(np.delete(scores, bad)).all()


@pytest.mark.parametrize("where", ["row", "column", "one entry"])
def test_focal_nonfinite_patch_does_not_poison_the_others(where):
    """A NaN query (row) or key (column) of one patch used to make every FoPru significance
    NaN (the row and column means), so the selection fell back to index order. Now that patch
    ranks last; a lone non-finite entry counts as no attention and excludes nobody."""
    a = np.asarray(jax.nn.softmax(3 * jax.random.normal(jax.random.key(0), (2, 9, 9)), -1))
    clean = np.asarray(T.focal_select(a, 3)).tolist()
    bad = clean[0]
    a2 = a.copy()
    if where == "row":
        a2[:, bad, :] = np.nan
    elif where == "column":
        a2[:, :, bad] = np.nan
    else:
        a2[0, (bad + 1) % 9, bad] = np.inf
    got = np.asarray(T.focal_select(a2, 3)).tolist()
    sig = np.asarray(T.focal_significance(a2))
    if where == "one entry":
        assert np.isfinite(sig).all() and len(got) == 3
    else:
        assert bad not in got and set(clean) - {bad} <= set(got), (clean, got)
        assert np.isnan(sig[bad]) and np.isfinite(np.delete(sig, bad)).all()
