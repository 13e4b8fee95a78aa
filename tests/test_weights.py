"""Tests of ``pruneax.weights``: masks, distributions, schedules, the optax wrapper and the
lottery-ticket steps.

Oracles are written here in NumPy, independently of the implementation: a mask of a leaf of
size ``n`` at sparsity ``s`` prunes exactly ``round(s * n)`` weights, the lowest scores first
(NaN lowest of all), ties toward the lower flat index (``np.argsort(kind="stable")``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pruneax import weights as W

# --------------------------------------------------------------------------------------------
# helpers and oracles
# --------------------------------------------------------------------------------------------


def np_keep(scores, count):
    """Bool keep-mask of ``scores``' shape with exactly ``count`` lowest entries pruned (NaN
    lowest, stable tie-break toward the lower flat index)."""
    s = np.asarray(scores, np.float32)
    flat = np.where(np.isnan(s.ravel()), -np.inf, s.ravel())
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:count]] = False
    return keep.reshape(s.shape)


def np_round(x):
    """Python's round (half to even), as the documented ``round(s * n)``."""
    return round(x)


def mlp_params(seed=0, dtype=jnp.float32):
    """A small MLP-like tree: two dense kernels, an output kernel, biases and a norm scale."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    return {
        "dense": {"kernel": normal(8, 12), "bias": normal(12)},
        "hidden": {"kernel": normal(12, 10), "bias": normal(10)},
        "norm": {"scale": 1.0 + 0.1 * normal(10)},
        "out": {"kernel": normal(10, 4), "bias": jnp.zeros((4,), dtype)},
    }


KERNELS = ["dense/kernel", "hidden/kernel", "out/kernel"]


def by_name(tree):
    """``{name: leaf}`` of a tree whose None leaves are kept."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {W.path_name(p): leaf for p, leaf in flat}


def np_masks(masks):
    return {n: (None if m is None else np.asarray(m)) for n, m in by_name(masks).items()}


def kept(mask):
    return int(np.sum(np.asarray(mask)))


def bits(x):
    """Bit pattern of a float array (for bit-exact comparisons)."""
    x = np.asarray(x)
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def check_mask_tree(masks, params, prunable=KERNELS):
    """Masks mirror params: bool arrays of the leaf's shape on prunable leaves, None elsewhere."""
    m, p = np_masks(masks), by_name(params)
    assert set(m) == set(p)
    for name, leaf in p.items():
        if name in prunable:
            assert m[name] is not None, name
            assert m[name].dtype == np.bool_, name
            assert m[name].shape == np.shape(leaf), name
        else:
            assert m[name] is None, name


# --------------------------------------------------------------------------------------------
# paths and selection
# --------------------------------------------------------------------------------------------


def test_leaf_names_and_default_prunable():
    params = mlp_params()
    assert W.leaf_names(params) == [
        "dense/bias",
        "dense/kernel",
        "hidden/bias",
        "hidden/kernel",
        "norm/scale",
        "out/bias",
        "out/kernel",
    ]
    assert W.prunable_names(params) == KERNELS
    # a 1-D leaf named kernel is not prunable by default, a 4-D conv kernel is
    assert not W.default_prunable("x/kernel", np.zeros(3))
    assert W.default_prunable("conv/kernel", np.zeros((3, 3, 2, 4)))
    assert not W.default_prunable("x/embedding", np.zeros((3, 4)))
    assert W.path_name((jax.tree_util.DictKey("a"), jax.tree_util.SequenceKey(2))) == "a/2"


def test_custom_predicate_and_globs():
    params = mlp_params()
    scores = W.magnitude_scores(params)
    pred = lambda name, leaf: name.startswith("hidden/")
    assert W.prunable_names(params, pred) == ["hidden/bias", "hidden/kernel"]
    assert W.prunable_names(params, "*/kernel") == KERNELS
    assert W.prunable_names(params, ["out/*", "dense/kernel"]) == [
        "dense/kernel",
        "out/bias",
        "out/kernel",
    ]
    masks = W.layerwise_masks(scores, 0.5, prunable=pred)
    check_mask_tree(masks, params, prunable=["hidden/bias", "hidden/kernel"])
    assert kept(masks["hidden"]["bias"]) == 10 - 5
    masks = W.global_masks(scores, 0.5, prunable="hidden/*")
    check_mask_tree(masks, params, prunable=["hidden/bias", "hidden/kernel"])
    assert kept(masks["hidden"]["bias"]) + kept(masks["hidden"]["kernel"]) == 130 - 65


def test_biases_and_norm_scales_never_get_masks():
    params = mlp_params()
    scores = W.magnitude_scores(params)
    for masks in (
        W.layerwise_masks(scores, 0.5),
        W.global_masks(scores, 0.5),
        W.prune_round(params, None, 0.5),
        W.prune_round(params, None, 0.5, scope="global"),
        W.nm_masks(scores, 1, 2),
    ):
        check_mask_tree(masks, params)


# --------------------------------------------------------------------------------------------
# layerwise / global masks: exact counts, oracle order, ties, NaN, overrides, previous masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99])
def test_layerwise_exact_counts_and_oracle(sparsity):
    params = mlp_params(1)
    scores = W.magnitude_scores(params)
    masks = W.layerwise_masks(scores, sparsity)
    check_mask_tree(masks, params)
    for name, m in np_masks(masks).items():
        if m is None:
            continue
        s = by_name(scores)[name]
        assert m.size - m.sum() == np_round(sparsity * m.size), name
        np.testing.assert_array_equal(m, np_keep(s, np_round(sparsity * m.size)))


@pytest.mark.parametrize(
    "make",
    [
        lambda shape: np.zeros(shape, np.float32),  # all equal
        lambda shape: np.ones(shape, np.float32),
        lambda shape: (np.arange(np.prod(shape)) % 3).reshape(shape).astype(np.float32),
        lambda shape: (np.arange(np.prod(shape))[::-1] // 4).reshape(shape).astype(np.float32),
    ],
    ids=["zeros", "ones", "mod3", "blocks-of-4"],
)
@pytest.mark.parametrize("sparsity", [0.5, 0.77])
def test_layerwise_and_global_exact_with_ties(make, sparsity):
    scores = {"a": {"kernel": make((6, 7))}, "b": {"kernel": make((5, 4))}}
    lw = np_masks(W.layerwise_masks(scores, sparsity))
    for name in ("a/kernel", "b/kernel"):
        count = np_round(sparsity * lw[name].size)
        assert lw[name].size - lw[name].sum() == count
        np.testing.assert_array_equal(lw[name], np_keep(by_name(scores)[name], count))
    gl = np_masks(W.global_masks(scores, sparsity))
    pool = np.concatenate([scores["a"]["kernel"].ravel(), scores["b"]["kernel"].ravel()])
    expected = np_keep(pool, np_round(sparsity * pool.size))
    got = np.concatenate([gl["a/kernel"].ravel(), gl["b/kernel"].ravel()])
    assert got.size - got.sum() == np_round(sparsity * pool.size)
    np.testing.assert_array_equal(got, expected)


@given(
    shape=st.sampled_from([(1, 1), (3, 4), (2, 3, 2)]),
    data=st.data(),
    sparsity=st.floats(0.0, 0.999),
)
def test_layerwise_property_integer_scores(shape, data, sparsity):
    n = math.prod(shape)
    values = data.draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    scores = {"l": {"kernel": np.asarray(values, np.float32).reshape(shape)}}
    m = np.asarray(W.layerwise_masks(scores, sparsity)["l"]["kernel"])
    count = np_round(sparsity * n)
    assert n - m.sum() == count
    np.testing.assert_array_equal(m, np_keep(scores["l"]["kernel"], count))


@given(
    sizes=st.sampled_from([((2, 2), (3, 2)), ((4, 3), (1, 5))]),
    data=st.data(),
    sparsity=st.floats(0.0, 0.999),
)
def test_global_property_integer_scores(sizes, data, sparsity):
    leaves = [
        np.asarray(
            data.draw(st.lists(st.integers(0, 4), min_size=math.prod(s), max_size=math.prod(s))),
            np.float32,
        ).reshape(s)
        for s in sizes
    ]
    scores = {"a": {"kernel": leaves[0]}, "b": {"kernel": leaves[1]}}
    masks = np_masks(W.global_masks(scores, sparsity))
    pool = np.concatenate([x.ravel() for x in leaves])
    count = np_round(sparsity * pool.size)
    got = np.concatenate([masks["a/kernel"].ravel(), masks["b/kernel"].ravel()])
    assert pool.size - got.sum() == count
    np.testing.assert_array_equal(got, np_keep(pool, count))
    # threshold property: every kept score >= every pruned score
    if 0 < count < pool.size:
        assert pool[got].min() >= pool[~got].max()


def test_nan_scores_pruned_first():
    s = np.arange(1.0, 13.0, dtype=np.float32).reshape(3, 4)
    s[2, 3] = np.nan  # would otherwise be the largest
    s[0, 2] = np.nan
    scores = {"l": {"kernel": s}}
    m = np.asarray(W.layerwise_masks(scores, 2 / 12)["l"]["kernel"])
    assert not m[2, 3] and not m[0, 2] and m.sum() == 10
    m = np.asarray(W.layerwise_masks(scores, 3 / 12)["l"]["kernel"])
    assert not m[2, 3] and not m[0, 2] and not m[0, 0] and m.sum() == 9
    g = np.asarray(W.global_masks(scores, 2 / 12)["l"]["kernel"])
    assert not g[2, 3] and not g[0, 2] and g.sum() == 10
    nm = np.asarray(W.nm_masks({"l": {"kernel": s}}, 2, 3, axis=0)["l"]["kernel"])
    assert not nm[2, 3] and not nm[0, 2]


def test_layerwise_overrides_by_glob_first_match_wins():
    params = mlp_params(2)
    scores = W.magnitude_scores(params)
    masks = np_masks(W.layerwise_masks(scores, 0.5, overrides={"out/*": 0.1}))
    assert masks["out/kernel"].size - masks["out/kernel"].sum() == np_round(0.1 * 40)
    assert masks["dense/kernel"].size - masks["dense/kernel"].sum() == 48
    masks = np_masks(
        W.layerwise_masks(scores, 0.5, overrides={"out/*": 0.1, "*kernel": 0.3, "dense/*": 0.9})
    )
    assert 40 - masks["out/kernel"].sum() == np_round(0.1 * 40)
    assert 96 - masks["dense/kernel"].sum() == np_round(0.3 * 96)
    assert 120 - masks["hidden/kernel"].sum() == np_round(0.3 * 120)


def test_layerwise_sparsity_mapping():
    params = mlp_params(3)
    scores = W.magnitude_scores(params)
    spec = {"dense/kernel": 0.2, "hidden/kernel": 0.6, "out/kernel": 0.0, "dense/bias": 0.9}
    masks = np_masks(W.layerwise_masks(scores, spec))
    for name in KERNELS:
        m = masks[name]
        assert m.size - m.sum() == np_round(spec[name] * m.size)
    assert masks["dense/bias"] is None
    with pytest.raises(ValueError, match="out/kernel"):
        W.layerwise_masks(scores, {"dense/kernel": 0.2, "hidden/kernel": 0.2})


def test_global_exact_count_and_oracle_with_overrides():
    params = mlp_params(4)
    scores = W.magnitude_scores(params)
    s = by_name(scores)
    masks = np_masks(W.global_masks(scores, 0.6, overrides={"out/*": 0.1}))
    # the overridden leaf leaves the pool and is pruned layerwise at its own fraction
    np.testing.assert_array_equal(masks["out/kernel"], np_keep(s["out/kernel"], np_round(4.0)))
    pool_names = ["dense/kernel", "hidden/kernel"]
    pool = np.concatenate([np.asarray(s[n]).ravel() for n in pool_names])
    count = np_round(0.6 * pool.size)
    got = np.concatenate([masks[n].ravel() for n in pool_names])
    assert pool.size - got.sum() == count
    np.testing.assert_array_equal(got, np_keep(pool, count))
    # global != layerwise in general: the per-leaf split follows the pooled magnitudes
    no_override = np_masks(W.global_masks(scores, 0.6))
    total = sum(no_override[n].size for n in KERNELS)
    assert total - sum(no_override[n].sum() for n in KERNELS) == np_round(0.6 * total)


def test_previous_masks_respected_at_higher_sparsity():
    params = mlp_params(5)
    scores = W.magnitude_scores(params)
    # a random previous mask, not aligned with magnitudes
    rng = np.random.default_rng(9)
    first = W.layerwise_masks(jax.tree.map(lambda x: rng.random(x.shape), params), 0.5)
    for fn in (W.layerwise_masks, W.global_masks):
        second = np_masks(fn(scores, 0.75, masks=first))
        prev = np_masks(first)
        for name in KERNELS:
            assert not np.any(second[name] & ~prev[name]), f"{fn.__name__}: {name} revived"
        if fn is W.layerwise_masks:
            for name in KERNELS:
                m = second[name]
                assert m.size - m.sum() == np_round(0.75 * m.size)
                s = np.where(prev[name], np.asarray(by_name(scores)[name]), -np.inf)
                np.testing.assert_array_equal(m, np_keep(s, np_round(0.75 * m.size)))
        else:
            total = sum(second[n].size for n in KERNELS)
            assert total - sum(second[n].sum() for n in KERNELS) == np_round(0.75 * total)


@pytest.mark.parametrize("fn", [W.layerwise_masks, W.global_masks], ids=["layerwise", "global"])
def test_previous_masks_respected_at_lower_sparsity(fn):
    """A weight pruned before stays pruned, even if the new target sparsity is lower."""
    params = mlp_params(6)
    scores = W.magnitude_scores(params)
    first = np_masks(W.layerwise_masks(scores, 0.5))
    second = np_masks(fn(scores, 0.2, masks=W.layerwise_masks(scores, 0.5)))
    for name in KERNELS:
        revived = second[name] & ~first[name]
        assert not revived.any(), f"{name}: {int(revived.sum())} previously pruned weights revived"


def test_masks_jitted_equal_eager():
    params = mlp_params(7)
    scores = W.magnitude_scores(params)
    for fn in (
        lambda s: W.layerwise_masks(s, 0.4, overrides={"out/*": 0.1}),
        lambda s: W.global_masks(s, 0.4),
        lambda s: W.nm_masks(s, 1, 2),
    ):
        eager, jitted = np_masks(fn(scores)), np_masks(jax.jit(fn)(scores))
        for name in KERNELS:
            np.testing.assert_array_equal(eager[name], jitted[name])


# --------------------------------------------------------------------------------------------
# apply_masks
# --------------------------------------------------------------------------------------------


def test_apply_masks_zeroes_pruned_keeps_rest():
    params = mlp_params(8, jnp.bfloat16)
    masks = W.layerwise_masks(W.magnitude_scores(params), 0.5)
    out = W.apply_masks(params, masks)
    for name, p in by_name(params).items():
        o, m = by_name(out)[name], by_name(masks)[name]
        assert o.dtype == p.dtype and o.shape == p.shape
        if m is None:
            np.testing.assert_array_equal(bits(o), bits(p))
        else:
            m = np.asarray(m)
            assert np.all(np.asarray(o, np.float32)[~m] == 0.0)
            np.testing.assert_array_equal(bits(o)[m], bits(p)[m])
    jitted = jax.jit(W.apply_masks)(params, masks)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))


# --------------------------------------------------------------------------------------------
# prune_round (IMP)
# --------------------------------------------------------------------------------------------


def lenet_params(seed=0):
    """LeNet-300-100 shapes, as NumPy arrays (prune_round accepts any array leaves)."""
    rng = np.random.default_rng(seed)
    shapes = {"fc1": (784, 300), "fc2": (300, 100), "out": (100, 10)}
    return {
        name: {
            "kernel": (0.05 * rng.standard_normal(shape)).astype(np.float32),
            "bias": np.zeros(shape[1], np.float32),
        }
        for name, shape in shapes.items()
    }


def test_prune_round_lenet_layerwise_counts_and_magnitude_order():
    params = lenet_params()
    rates = {"fc1/kernel": 0.2, "fc2/kernel": 0.2, "out/kernel": 0.1}
    remaining = {"fc1/kernel": 784 * 300, "fc2/kernel": 300 * 100, "out/kernel": 100 * 10}
    rng = np.random.default_rng(1)
    masks = None
    for round_ in range(3):
        new = W.prune_round(params, masks, 0.2, overrides={"out/*": 0.1})
        check_mask_tree(new, params, prunable=list(rates))
        for name, rate in rates.items():
            remaining[name] -= np_round(rate * remaining[name])
            m = np.asarray(by_name(new)[name])
            assert m.sum() == remaining[name], (round_, name)
            prev = np.ones_like(m) if masks is None else np.asarray(by_name(masks)[name])
            assert not np.any(m & ~prev), (round_, name)
            # magnitude order among the weights alive before this round
            w = np.abs(by_name(params)[name])
            newly_pruned = prev & ~m
            assert newly_pruned.sum() == np_round(rate * prev.sum())
            assert w[m].min() >= w[newly_pruned].max(), (round_, name)
        if round_ == 0:
            assert remaining == {"fc1/kernel": 188160, "fc2/kernel": 24000, "out/kernel": 900}
        masks = new
        # "train": perturb, then zero the pruned weights as the masked optimizer would
        params = {
            layer: {
                "kernel": np.where(
                    np.asarray(masks[layer]["kernel"]),
                    leaves["kernel"] + 0.01 * rng.standard_normal(leaves["kernel"].shape),
                    0.0,
                ).astype(np.float32),
                "bias": leaves["bias"],
            }
            for layer, leaves in params.items()
        }
    # 3 rounds of 20%: 0.8**3 = 51.2% remaining in fc1, as the iterative schedule says
    fc1 = remaining["fc1/kernel"] / (784 * 300)
    assert abs((1 - fc1) - float(W.iterative(0.2)(3))) < 1e-4
    assert remaining == {"fc1/kernel": 120422, "fc2/kernel": 15360, "out/kernel": 729}


def test_prune_round_fixed_params_matches_magnitude_oracle():
    """With the same weights every round, the cumulative mask keeps the largest magnitudes."""
    params = mlp_params(10)
    masks = None
    remaining = {n: math.prod(np.shape(by_name(params)[n])) for n in KERNELS}
    for _ in range(3):
        masks = W.prune_round(params, masks, 0.5)
        for name in KERNELS:
            remaining[name] -= np_round(0.5 * remaining[name])
            w = np.abs(np.asarray(by_name(params)[name]))
            np.testing.assert_array_equal(
                np.asarray(by_name(masks)[name]), np_keep(w, w.size - remaining[name])
            )


def test_prune_round_global_counts():
    params = mlp_params(11)
    sizes = {n: math.prod(np.shape(by_name(params)[n])) for n in KERNELS}
    pool = ["dense/kernel", "hidden/kernel"]
    pool_remaining = sum(sizes[n] for n in pool)
    out_remaining = sizes["out/kernel"]
    masks = None
    for _ in range(6):
        new = W.prune_round(params, masks, 0.2, scope="global", overrides={"out/*": 0.1})
        pool_remaining -= np_round(0.2 * pool_remaining)
        out_remaining -= np_round(0.1 * out_remaining)
        nm = np_masks(new)
        assert sum(nm[n].sum() for n in pool) == pool_remaining
        assert nm["out/kernel"].sum() == out_remaining
        if masks is not None:
            for n in KERNELS:
                assert not np.any(nm[n] & ~np_masks(masks)[n])
        # global magnitude order within the pool
        w = np.concatenate([np.abs(np.asarray(by_name(params)[n])).ravel() for n in pool])
        k = np.concatenate([nm[n].ravel() for n in pool])
        assert w[k].min() >= w[~k].max()
        masks = new
        params = W.apply_masks(params, masks)
    # without overrides every kernel is in the pool
    m = np_masks(W.prune_round(mlp_params(11), None, 0.2, scope="global"))
    total = sum(sizes.values())
    assert sum(m[n].sum() for n in KERNELS) == total - np_round(0.2 * total)


def test_prune_round_custom_scores():
    params = mlp_params(12)
    scores = W.random_scores(jax.random.key(3), params)
    m = np_masks(W.prune_round(params, None, 0.5, scores=scores))
    for name in KERNELS:
        s = by_name(scores)[name]
        np.testing.assert_array_equal(m[name], np_keep(s, np_round(0.5 * np.size(s))))


def test_prune_round_nan_weights_do_not_revive_pruned():
    """NaN weights are pruned first, but weights pruned in an earlier round stay pruned."""
    w = jnp.arange(10.0, 0.0, -1.0).reshape(1, 10)  # magnitudes 10..1, smallest last
    params = {"d": {"kernel": w}}
    first = W.prune_round(params, None, 0.5)
    np.testing.assert_array_equal(np.asarray(first["d"]["kernel"])[0], [1] * 5 + [0] * 5)
    trained = W.apply_masks(params, first)
    trained = {"d": {"kernel": trained["d"]["kernel"].at[0, :3].set(jnp.nan)}}
    second = np.asarray(W.prune_round(trained, first, 0.2)["d"]["kernel"])[0]
    assert not np.any(second[5:]), f"previously pruned weights revived: {second.astype(int)}"
    assert second.sum() == 5 - np_round(0.2 * 5)


def test_prune_round_rejects_bad_scope():
    with pytest.raises(ValueError, match="scope"):
        W.prune_round(mlp_params(), None, 0.2, scope="per-layer")


# --------------------------------------------------------------------------------------------
# N:M
# --------------------------------------------------------------------------------------------


def np_nm(scores, n, m, axis):
    s = np.moveaxis(np.asarray(scores, np.float32), axis, -1)
    s = np.where(np.isnan(s), -np.inf, s)
    g = s.reshape(*s.shape[:-1], -1, m)
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(s.shape), -1, axis)


@pytest.mark.parametrize(
    ("shape", "n", "m", "axis"),
    [((8, 6), 2, 4, -2), ((8, 6), 1, 2, -2), ((4, 9), 1, 3, -1), ((3, 3, 8, 4), 2, 4, -2)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_nm_masks_groups_keep_n_largest(shape, n, m, axis, ties):
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)
    s = s.astype(np.float32)
    scores = {"l": {"kernel": s, "bias": np.ones(shape[-1], np.float32)}}
    masks = W.nm_masks(scores, n, m, axis=axis)
    assert masks["l"]["bias"] is None
    got = np.asarray(masks["l"]["kernel"])
    np.testing.assert_array_equal(got, np_nm(s, n, m, axis))
    groups = np.moveaxis(got, axis, -1).reshape(-1, m)
    assert np.all(groups.sum(-1) == n)
    # within each group, every kept score >= every pruned score
    sg = np.moveaxis(s, axis, -1).reshape(-1, m)
    for keep, vals in zip(groups, sg, strict=True):
        if n < m:
            assert vals[keep].min() >= vals[~keep].max()


def test_nm_masks_errors():
    params = mlp_params()
    with pytest.raises(ValueError, match="hidden/kernel") as e:
        W.nm_masks(W.magnitude_scores(params), 2, 8)  # dense 8 ok, hidden 12 no
    assert "8" in str(e.value)
    for n, m in [(0, 4), (5, 4), (2.0, 4), (-1, 2)]:
        with pytest.raises(ValueError, match="n"):
            W.nm_masks(W.magnitude_scores(params), n, m)


# --------------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------------


def shaped(*shapes):
    return {f"l{i}": {"kernel": np.zeros(s, np.float32)} for i, s in enumerate(shapes)}


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_erk_matches_closed_form_without_saturation(power):
    shapes = [(30, 40), (50, 20), (3, 3, 8, 16), (40, 40)]
    params = shaped(*shapes)
    target = 0.8
    raw = [(sum(s) / math.prod(s)) ** power for s in shapes]
    size = [math.prod(s) for s in shapes]
    eps = (1 - target) * sum(size) / sum(r * z for r, z in zip(raw, size, strict=True))
    assert max(raw) * eps < 1.0  # the test's own precondition: no layer saturates
    got = W.erk_sparsities(params, target, power=power)
    assert set(got) == {f"l{i}/kernel" for i in range(len(shapes))}
    for i, _ in enumerate(shapes):
        assert got[f"l{i}/kernel"] == pytest.approx(1 - eps * raw[i], abs=1e-12)
    if power == 1.0:
        for i, s in enumerate(shapes):
            assert got[f"l{i}/kernel"] == pytest.approx(1 - eps * sum(s) / math.prod(s), abs=1e-12)
    mean = sum(got[f"l{i}/kernel"] * z for i, z in enumerate(size)) / sum(size)
    assert mean == pytest.approx(target, abs=1e-9)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95])
def test_erk_saturating_small_layer_is_dense_and_mean_exact(target):
    shapes = [(4, 4), (100, 100), (200, 100), (3, 3, 16, 32)]
    params = shaped(*shapes)
    got = W.erk_sparsities(params, target)
    size = [math.prod(s) for s in shapes]
    assert got["l0/kernel"] == 0.0
    for v in got.values():
        assert 0.0 <= v < 1.0
    mean = sum(got[f"l{i}/kernel"] * z for i, z in enumerate(size)) / sum(size)
    assert abs(mean - target) <= 1e-9
    # the non-saturated layers keep ERK's proportions
    dens = {i: 1 - got[f"l{i}/kernel"] for i in range(len(shapes)) if got[f"l{i}/kernel"] > 0}
    raw = {i: sum(shapes[i]) / math.prod(shapes[i]) for i in dens}
    ratios = [dens[i] / raw[i] for i in dens]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-12)
    if target != 0.9:
        return
    # and feed layerwise_masks directly
    masks = np_masks(W.layerwise_masks(params, got))
    for i, z in enumerate(size):
        assert z - masks[f"l{i}/kernel"].sum() == np_round(got[f"l{i}/kernel"] * z)


def test_uniform_sparsities():
    params = mlp_params()
    assert W.uniform_sparsities(params, 0.3) == dict.fromkeys(KERNELS, 0.3)
    assert W.uniform_sparsities(params, 0.3, prunable="out/*") == {
        "out/bias": 0.3,
        "out/kernel": 0.3,
    }


# --------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------


def test_polynomial_schedule():
    f = W.polynomial(0.9, 100, 200, initial=0.1)
    assert float(f(100)) == pytest.approx(0.1, abs=1e-6)
    assert float(f(200)) == pytest.approx(0.9, abs=1e-6)
    assert float(f(0)) == pytest.approx(0.1, abs=1e-6)
    assert float(f(-50)) == pytest.approx(0.1, abs=1e-6)
    assert float(f(10_000)) == pytest.approx(0.9, abs=1e-6)
    # cubic: s = sf + (si - sf) (1 - p)^3; at the midpoint (1 - 0.5)^3 = 1/8
    assert float(f(150)) == pytest.approx(0.9 - 0.8 / 8, abs=1e-6)
    assert float(f(125)) == pytest.approx(0.9 - 0.8 * 0.75**3, abs=1e-6)
    g = W.polynomial(0.8, 0, 10, power=1.0)
    assert float(g(5)) == pytest.approx(0.4, abs=1e-6)
    # monotone and jittable with a traced step
    vals = jax.jit(jax.vmap(f))(jnp.arange(0, 301, 10))
    assert np.all(np.diff(np.asarray(vals)) >= -1e-7)
    with pytest.raises(ValueError, match="end_step"):
        W.polynomial(0.5, 10, 10)


def test_iterative_and_one_shot():
    f = W.iterative(0.2)
    for r in range(12):
        assert float(f(r)) == pytest.approx(1 - 0.8**r, abs=1e-6)
    assert float(f(1)) == pytest.approx(0.2, abs=1e-7)
    assert float(f(3)) == pytest.approx(0.488, abs=1e-6)
    g = W.one_shot(0.7, step=10)
    assert float(g(0)) == 0.0 and float(g(9)) == 0.0
    assert float(g(10)) == pytest.approx(0.7) and float(g(1000)) == pytest.approx(0.7)
    assert float(W.one_shot(0.5)(0)) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# masked optimizer
# --------------------------------------------------------------------------------------------

INNERS = {
    "sgd-momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
}
MOMENT_KEYS = {"sgd-momentum": ["trace"], "adam": ["mu", "nu"], "adamw": ["mu", "nu"]}


def random_grads(rng, params):
    """Standard-normal gradients (NumPy, so the jitted step stays small to compile)."""
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)


def make_step(opt, pass_params):
    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params if pass_params else None)
        return optax.apply_updates(params, updates), state

    return step


def run_steps(step, params, state, seed, n):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        params, state = step(params, state, random_grads(rng, params))
    return params, state


def assert_pruned_exactly_zero(params, masks, context=""):
    for name, m in np_masks(masks).items():
        if m is None:
            continue
        p = np.asarray(by_name(params)[name])
        assert np.all(p[~m] == 0.0), f"{context}{name}: pruned weights {p[~m][p[~m] != 0][:5]}"


def assert_moments_masked(inner_state, masks, keys, context=""):
    """The inner optimizer's per-parameter state is exactly 0 at pruned positions."""
    for key in keys:
        mom = optax.tree_utils.tree_get(inner_state, key)
        assert mom is not None, key
        for name, m in np_masks(masks).items():
            if m is None:
                continue
            v = np.asarray(by_name(mom)[name])
            assert np.all(v[~m] == 0.0), f"{context}{key} {name}"
            assert np.any(v[m] != 0.0), f"{context}{key} {name}: kept moments all zero"


def assert_moved(before, after, masks, context=""):
    """Kept weights (and every unmasked leaf) changed."""
    for name, m in np_masks(masks).items():
        b, a = np.asarray(by_name(before)[name]), np.asarray(by_name(after)[name])
        sel = np.ones(b.shape, bool) if m is None else m
        assert np.all(b[sel] != a[sel]), f"{context}{name}"


@pytest.mark.parametrize("inner_name", ["sgd-momentum", "adam", "adamw"])
def test_masked_optimizer_pruned_weights_stay_zero_and_set_masks(inner_name, compile_counter):
    inner = INNERS[inner_name]()
    params0 = mlp_params(20)
    masks = W.layerwise_masks(W.magnitude_scores(params0), 0.5)
    params = W.apply_masks(params0, masks)
    opt = W.masked_optimizer(inner, masks)
    state = opt.init(params)
    assert isinstance(state, W.MaskedState)
    for name in KERNELS:  # masks live in the optimizer state
        np.testing.assert_array_equal(by_name(state.masks)[name], by_name(masks)[name])
    step = make_step(opt, pass_params=True)

    # phase 1: 120 jitted steps of random gradients
    trained, state = run_steps(step, params, state, seed=0, n=120)
    assert_pruned_exactly_zero(trained, masks, "phase 1: ")
    assert_moved(params, trained, masks, "phase 1: ")
    assert_moments_masked(state.inner_state, masks, MOMENT_KEYS[inner_name], "phase 1: ")

    # set_masks mid-training: prune more; the newly pruned weights are NOT zero at this point
    masks2 = W.layerwise_masks(W.magnitude_scores(trained), 0.75, masks=masks)
    newly = {n: np.asarray(by_name(masks)[n]) & ~np.asarray(by_name(masks2)[n]) for n in KERNELS}
    assert all(np.all(np.asarray(by_name(trained)[n])[newly[n]] != 0) for n in KERNELS)
    state = W.set_masks(state, masks2, inner)
    for name in KERNELS:
        np.testing.assert_array_equal(by_name(state.masks)[name], by_name(masks2)[name])
    assert_moments_masked(state.inner_state, masks2, MOMENT_KEYS[inner_name], "set_masks: ")

    # the next update lands the newly pruned weights on exactly 0 and they stay there
    with compile_counter() as cc:
        p1, state = step(trained, state, random_grads(np.random.default_rng(1), trained))
        p2, state = run_steps(step, p1, state, seed=2, n=40)
    assert cc.count == 0, cc.messages  # same state structure: no retrace after set_masks
    assert_pruned_exactly_zero(p1, masks2, "one step after set_masks: ")
    assert_pruned_exactly_zero(p2, masks2, "phase 2: ")
    assert_moved(p1, p2, masks2, "phase 2: ")
    assert_moments_masked(state.inner_state, masks2, MOMENT_KEYS[inner_name], "phase 2: ")


def test_masked_optimizer_without_params_keeps_zero():
    """Without ``params`` in update, the update of a pruned weight is exactly 0."""
    inner_name = "adam"
    inner = INNERS[inner_name]()
    params0 = mlp_params(21)
    masks = W.layerwise_masks(W.magnitude_scores(params0), 0.5)
    params = W.apply_masks(params0, masks)
    opt = W.masked_optimizer(inner, masks)
    step = make_step(opt, pass_params=False)
    trained, state = run_steps(step, params, opt.init(params), seed=3, n=100)
    assert_pruned_exactly_zero(trained, masks)
    assert_moved(params, trained, masks)
    assert_moments_masked(state.inner_state, masks, MOMENT_KEYS[inner_name])


def test_masked_optimizer_without_masks_then_set_masks():
    """No masks: every weight trains (sgd: update = -lr * g); then masks arrive by set_masks."""
    inner = optax.sgd(0.5)
    params = {"l": {"kernel": jnp.arange(1.0, 7.0).reshape(2, 3), "bias": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    opt = W.masked_optimizer(inner)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(np.asarray(u), -0.5)
    masks = W.layerwise_masks(W.magnitude_scores(params), 0.5)
    state = W.set_masks(state, masks, inner)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(
        np.asarray(new["l"]["kernel"]), [[0.0, 0.0, 0.0], [3.5, 4.5, 5.5]]
    )
    np.testing.assert_array_equal(np.asarray(new["l"]["bias"]), 0.5)


# --------------------------------------------------------------------------------------------
# rewind, random masks
# --------------------------------------------------------------------------------------------


def test_rewind_restores_saved_values_bit_exactly():
    saved = mlp_params(30)
    trained = jax.tree.map(lambda x: x * 1.7 + 0.3, saved)
    masks = W.prune_round(trained, None, 0.4)
    out = W.rewind(trained, saved, masks)
    assert jax.tree.structure(out) == jax.tree.structure(saved)
    for name, s in by_name(saved).items():
        o, m = np.asarray(by_name(out)[name]), by_name(masks)[name]
        assert o.dtype == np.asarray(s).dtype and o.shape == np.shape(s)
        if m is None:  # biases, norm scales rewind too
            np.testing.assert_array_equal(bits(o), bits(s))
        else:
            m = np.asarray(m)
            np.testing.assert_array_equal(bits(o)[m], bits(s)[m])
            assert np.all(o[~m] == 0.0)
    # a randomly re-initialised ticket: same masks, new init
    fresh = mlp_params(31)
    reinit = W.apply_masks(fresh, masks)
    assert_pruned_exactly_zero(reinit, masks)


def test_rewind_mismatch_raises():
    saved = mlp_params(30)
    masks = W.layerwise_masks(W.magnitude_scores(saved), 0.5)
    bad = dict(saved)
    del bad["norm"]
    with pytest.raises(ValueError, match="structure"):
        W.rewind(saved, bad, masks)
    with pytest.raises(ValueError):
        W.rewind(bad, saved, masks)
    extra = {**saved, "extra": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError):
        W.rewind(saved, extra, masks)


def test_rewind_mask_of_wrong_shape_raises():
    saved = mlp_params(30)
    masks = W.layerwise_masks(W.magnitude_scores(saved), 0.5)
    bad = {**masks, "dense": {"kernel": jnp.ones((8, 1), bool), "bias": None}}
    with pytest.raises(ValueError):
        W.rewind(saved, saved, bad)


def test_random_masks_same_counts_random_positions():
    params = mlp_params(40)
    masks = W.prune_round(params, None, 0.6)
    r1 = np_masks(W.random_masks(jax.random.key(1), masks))
    r1b = np_masks(W.random_masks(jax.random.key(1), masks))
    r2 = np_masks(W.random_masks(jax.random.key(2), masks))
    m = np_masks(masks)
    assert set(r1) == set(m)
    for name in m:
        if m[name] is None:
            assert r1[name] is None
            continue
        assert r1[name].dtype == np.bool_ and r1[name].shape == m[name].shape
        assert r1[name].sum() == m[name].sum() == r2[name].sum()
        np.testing.assert_array_equal(r1[name], r1b[name])
        assert np.any(r1[name] != r2[name]), name
        assert np.any(r1[name] != m[name]), name


# --------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------


def test_saliency_scores():
    params = mlp_params(50)
    grads = random_grads(np.random.default_rng(3), params)
    sal = W.saliency_scores(params, grads)
    for name, p in by_name(params).items():
        expected = np.abs(np.asarray(p, np.float32) * np.asarray(by_name(grads)[name], np.float32))
        got = np.asarray(by_name(sal)[name])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "bad",
    [
        lambda g: {k: v for k, v in g.items() if k != "norm"},
        lambda g: {**g, "dense": {"kernel": g["dense"]["kernel"]}},
        lambda g: {**g, "dense": {**g["dense"], "bias": None}},
        lambda g: {**g, "dense": {**g["dense"], "kernel": jnp.ones((3,))}},
    ],
    ids=["missing-subtree", "missing-leaf", "none-leaf", "shape-3"],
)
def test_saliency_mismatched_trees_raise(bad):
    params = mlp_params(50)
    with pytest.raises(ValueError, match="saliency"):
        W.saliency_scores(params, bad(params))


def test_saliency_broadcastable_shape_mismatch_raises():
    """A gradient leaf of another (broadcastable) shape is a mismatch, not a broadcast."""
    params = mlp_params(50)
    grads = {**params, "dense": {**params["dense"], "kernel": jnp.ones((12,))}}
    with pytest.raises(ValueError, match="saliency"):
        W.saliency_scores(params, grads)


def test_random_and_magnitude_scores():
    params = mlp_params(51)
    a = W.random_scores(jax.random.key(0), params)
    b = W.random_scores(jax.random.key(0), params)
    c = W.random_scores(jax.random.key(1), params)
    assert jax.tree.structure(a) == jax.tree.structure(params)
    for name, p in by_name(params).items():
        x = np.asarray(by_name(a)[name])
        assert x.shape == np.shape(p)
        assert np.all((x >= 0) & (x < 1))
        np.testing.assert_array_equal(x, np.asarray(by_name(b)[name]))
        assert np.any(x != np.asarray(by_name(c)[name]))
    # one fresh subkey per leaf: two same-shape leaves get different scores
    same = W.random_scores(jax.random.key(0), {"x": jnp.zeros(16), "y": jnp.zeros(16)})
    assert np.any(np.asarray(same["x"]) != np.asarray(same["y"]))
    for dtype in (jnp.bfloat16, jnp.float16, jnp.int32, jnp.float32):
        tree = {"w": jnp.asarray([[-3, 2], [0, -1]], dtype)}
        mag = W.magnitude_scores(tree)["w"]
        assert mag.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(mag), [[3.0, 2.0], [0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# sparsity report
# --------------------------------------------------------------------------------------------


def test_sparsity_report():
    params = mlp_params(60)
    masks = W.layerwise_masks(W.magnitude_scores(params), 0.5, overrides={"out/*": 0.25})
    rep = W.sparsity_report(masks)
    assert isinstance(rep, W.SparsityReport)
    assert [r[0] for r in rep.rows] == KERNELS
    assert rep.rows[0] == ("dense/kernel", (8, 12), 48, 96)
    assert rep.rows[1] == ("hidden/kernel", (12, 10), 60, 120)
    assert rep.rows[2] == ("out/kernel", (10, 4), 30, 40)
    assert rep.kept == 138 and rep.size == 256
    assert rep.sparsity == pytest.approx(1 - 138 / 256)
    assert rep.remaining == pytest.approx(100 * 138 / 256)
    table = rep.table()
    lines = table.splitlines()
    assert len(lines) == 1 + 3 + 1
    for name in KERNELS:
        assert any(name in line for line in lines[1:-1])
    assert "bias" not in table and "scale" not in table
    assert lines[-1].startswith("total") and "138" in lines[-1] and "256" in lines[-1]
    d = rep.as_dict()
    assert d["total"] == {"kept": 138, "size": 256, "sparsity": pytest.approx(1 - 138 / 256)}
    assert d["leaves"]["out/kernel"]["kept"] == 30
    assert d["leaves"]["out/kernel"]["sparsity"] == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

BAD_FRACTIONS = [-0.1, 1.0, 1.5, "0.5", float("nan"), None, True]


def _fraction_calls():
    p = mlp_params()
    s = W.magnitude_scores(p)
    return {
        "layerwise_masks": (lambda v: W.layerwise_masks(s, v), "sparsity"),
        "layerwise_masks-mapping": (
            lambda v: W.layerwise_masks(s, {**dict.fromkeys(KERNELS, 0.5), "out/kernel": v}),
            "sparsity",
        ),
        "layerwise_masks-override": (
            lambda v: W.layerwise_masks(s, 0.5, overrides={"out/*": v}),
            "sparsity",
        ),
        "global_masks": (lambda v: W.global_masks(s, v), "sparsity"),
        "global_masks-override": (
            lambda v: W.global_masks(s, 0.5, overrides={"out/*": v}),
            "sparsity",
        ),
        "prune_round": (lambda v: W.prune_round(p, None, v), "rate"),
        "prune_round-global": (lambda v: W.prune_round(p, None, v, scope="global"), "rate"),
        "prune_round-override": (
            lambda v: W.prune_round(p, None, 0.2, overrides={"out/*": v}),
            "rate",
        ),
        "uniform_sparsities": (lambda v: W.uniform_sparsities(p, v), "sparsity"),
        "erk_sparsities": (lambda v: W.erk_sparsities(p, v), "sparsity"),
        "one_shot": (lambda v: W.one_shot(v), "sparsity"),
        "iterative": (lambda v: W.iterative(v), "rate"),
        "polynomial-final": (lambda v: W.polynomial(v, 0, 10), "final"),
        "polynomial-initial": (lambda v: W.polynomial(0.5, 0, 10, initial=v), "initial"),
    }


FRACTION_CALLS = _fraction_calls()


@pytest.mark.parametrize("value", BAD_FRACTIONS, ids=repr)
@pytest.mark.parametrize("which", list(FRACTION_CALLS))
def test_bad_fraction_raises_naming_argument(which, value):
    call, arg = FRACTION_CALLS[which]
    with pytest.raises(ValueError, match=arg) as e:
        call(value)
    if not isinstance(value, str | type(None)):
        assert "[0, 1)" in str(e.value) or "float" in str(e.value)


def test_bad_base_sparsity_raises_even_if_overrides_cover_every_leaf():
    s = W.magnitude_scores(mlp_params())
    with pytest.raises(ValueError, match="sparsity"):
        W.layerwise_masks(s, 1.5, overrides={"*": 0.1})


def test_good_fraction_edge_values_accepted():
    p = mlp_params()
    s = W.magnitude_scores(p)
    for v in (0, 0.0, np.float32(0.5), np.float64(0.5)):
        W.layerwise_masks(s, v)
        W.global_masks(s, v)
        W.prune_round(p, None, v)
    m = np_masks(W.layerwise_masks(s, 0.0))
    assert all(m[n].all() for n in KERNELS)


NOTHING = [lambda n, leaf: False, "nothing/*", ["no", "none/kernel"]]


def _selection_calls():
    p = mlp_params()
    s = W.magnitude_scores(p)
    return {
        "prunable_names": lambda sel: W.prunable_names(p, sel),
        "layerwise_masks": lambda sel: W.layerwise_masks(s, 0.5, prunable=sel),
        "global_masks": lambda sel: W.global_masks(s, 0.5, prunable=sel),
        "nm_masks": lambda sel: W.nm_masks(s, 2, 4, prunable=sel),
        "prune_round": lambda sel: W.prune_round(p, None, 0.2, prunable=sel),
        "uniform_sparsities": lambda sel: W.uniform_sparsities(p, 0.5, prunable=sel),
        "erk_sparsities": lambda sel: W.erk_sparsities(p, 0.5, prunable=sel),
    }


SELECTION_CALLS = _selection_calls()


@pytest.mark.parametrize("selector", NOTHING, ids=["predicate", "glob", "glob-list"])
@pytest.mark.parametrize("which", list(SELECTION_CALLS))
def test_selection_matching_nothing_raises_listing_leaves(which, selector):
    with pytest.raises(ValueError, match="prunable") as e:
        SELECTION_CALLS[which](selector)
    msg = str(e.value)
    for name in ("dense/kernel", "dense/bias", "norm/scale", "out/kernel"):
        assert name in msg, (name, msg)


def test_bad_selector_type_raises():
    with pytest.raises(ValueError, match="prunable"):
        W.prunable_names(mlp_params(), 42)


@pytest.mark.parametrize(
    "call",
    [
        lambda s, p: W.layerwise_masks(s, 0.5, overrides={"output/*": 0.1}),
        lambda s, p: W.global_masks(s, 0.5, overrides={"output/*": 0.1}),
        lambda s, p: W.prune_round(p, None, 0.2, overrides={"output/*": 0.1}),
    ],
    ids=["layerwise", "global", "prune_round"],
)
def test_override_pattern_matching_nothing_raises(call):
    p = mlp_params()
    with pytest.raises(ValueError, match=r"output/\*") as e:
        call(W.magnitude_scores(p), p)
    assert "out/kernel" in str(e.value)


def test_override_of_non_prunable_leaf_raises():
    p = mlp_params()
    with pytest.raises(ValueError, match=r"dense/bias"):
        W.layerwise_masks(W.magnitude_scores(p), 0.5, overrides={"dense/bias": 0.1})


@pytest.mark.parametrize(
    "bad",
    [
        lambda m: {k: v for k, v in m.items() if k != "out"},
        lambda m: {**m, "dense": {"kernel": m["dense"]["kernel"]}},
        lambda m: {**m, "extra": None},
        lambda m: [m],
        lambda m: {**m, "dense": {**m["dense"], "kernel": m["dense"]["kernel"].T}},
        lambda m: {**m, "dense": {**m["dense"], "kernel": jnp.ones((12,), bool)}},
        lambda m: {**m, "dense": {**m["dense"], "kernel": jnp.ones((1, 12), bool)}},
    ],
    ids=["missing-subtree", "missing-leaf", "extra-key", "wrapped", "transposed",
         "broadcast-1d", "broadcast-2d"],
)  # fmt: skip
def test_apply_masks_mismatch_raises(bad):
    params = mlp_params()
    masks = W.layerwise_masks(W.magnitude_scores(params), 0.5)
    with pytest.raises(ValueError, match="apply_masks"):
        W.apply_masks(params, bad(masks))


# --------------------------------------------------------------------------------------------
# Flax NNX State as params
# --------------------------------------------------------------------------------------------


def test_nnx_state_params():
    nnx = pytest.importorskip("flax.nnx")

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(6, 8, rngs=rngs)
            self.norm = nnx.LayerNorm(8, rngs=rngs)
            self.l2 = nnx.Linear(8, 4, rngs=rngs)

    model = Tiny(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    assert W.prunable_names(state) == ["l1/kernel", "l2/kernel"]
    assert set(W.leaf_names(state)) == {
        "l1/kernel",
        "l1/bias",
        "l2/kernel",
        "l2/bias",
        "norm/scale",
        "norm/bias",
    }
    masks = W.layerwise_masks(W.magnitude_scores(state), 0.5)
    nm = np_masks(masks)
    assert nm["l1/kernel"].shape == (6, 8) and nm["l1/kernel"].sum() == 24
    assert nm["l2/kernel"].shape == (8, 4) and nm["l2/kernel"].sum() == 16
    # global masks and prune rounds work on a State too
    gm = np_masks(W.global_masks(W.magnitude_scores(state), 0.5))
    assert gm["l1/kernel"].sum() + gm["l2/kernel"].sum() == 40
    pr = np_masks(W.prune_round(state, masks, 0.5))
    assert pr["l1/kernel"].sum() == 12 and pr["l2/kernel"].sum() == 8
    pruned = W.apply_masks(state, masks)
    assert type(pruned) is type(state)
    flat = by_name(pruned)
    orig = by_name(state)
    for name in ("l1/kernel", "l2/kernel"):
        w, m = np.asarray(flat[name]), nm[name]
        assert np.all(w[~m] == 0.0)
        np.testing.assert_array_equal(w[m], np.asarray(orig[name])[m])
    np.testing.assert_array_equal(np.asarray(flat["norm/scale"]), np.asarray(orig["norm/scale"]))
    # the masked State goes back into the model
    nnx.update(model, pruned)
    k = np.asarray(model.l1.kernel[...])
    assert np.all(k[~nm["l1/kernel"]] == 0.0)
    rep = W.sparsity_report(masks)
    assert [r[0] for r in rep.rows] == ["l1/kernel", "l2/kernel"]
    assert rep.kept == 40
    assert W.prunable_names(state, "l2/*") == ["l2/bias", "l2/kernel"]
