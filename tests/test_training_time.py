"""Training-time pruning (issue 18): ISS-P soft shrinkage and MaskSparsity's BN-scale L1, checked
against NumPy transcriptions of the reference code (ALGORITHMS-weights-2.md sections 6 and 7).

ISS-P (Jiamian-Wang/Iterative-Soft-Shrinkage-SR ``_iht``): after each optimizer step the
``min(ceil(ratio * n), floor(0.995 * n))`` smallest-|w| entries of every layer are multiplied by
0.95; after the soft phase the last selection is a fixed mask and pruned weights stay 0.
MaskSparsity (CASIA-IVA-Lab/MaskSparsity ``update_bn_by_names_dict``): ``s * sign(gamma) * mask``
added to the BN-scale gradients, masks = ``|gamma| < 0.01`` (True = to prune).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pruneax.models as M
from pruneax import weights as W

# --------------------------------------------------------------------------------------------
# ISS-P


def _np_soft_shrink(w: np.ndarray, ratio: float, shrink: float = 0.95) -> np.ndarray:
    """The reference selection on one layer: stable ascending sort of |w| (ties: lower flat
    index first), the first ``min(ceil(ratio n), int(0.995 n))`` entries times ``shrink``."""
    flat = np.asarray(w, np.float32).ravel().copy()
    n = flat.size
    k = min(math.ceil(ratio * n), int(n * 0.995))
    order = np.argsort(np.abs(flat), kind="stable")
    flat[order[:k]] *= np.float32(shrink)
    return flat.reshape(np.shape(w))


def _params(seed: int = 0, shape=(6, 7)):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=shape), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32),
        }
    }


def test_soft_shrink_matches_the_numpy_transcription():
    params = _params()
    out = W.soft_shrink(params, 0.3)
    w = np.asarray(params["dense"]["kernel"])
    expect = _np_soft_shrink(w, 0.3)
    np.testing.assert_array_equal(np.asarray(out["dense"]["kernel"]), expect)
    changed = np.asarray(out["dense"]["kernel"]) != w
    assert changed.sum() == math.ceil(0.3 * 42) == 13
    np.testing.assert_array_equal(out["dense"]["bias"], params["dense"]["bias"])  # not prunable


def test_soft_shrink_shrinks_the_smallest_not_the_largest():
    """Mutation check: shrinking the largest entries (descending sort) would fail here."""
    params = _params(1)
    w = np.asarray(params["dense"]["kernel"])
    out = np.asarray(W.soft_shrink(params, 0.5)["dense"]["kernel"])
    shrunk = out != w
    assert np.abs(w[shrunk]).max() <= np.abs(w[~shrunk]).min()
    assert out.ravel()[np.argmax(np.abs(w))] == w.ravel()[np.argmax(np.abs(w))]
    flat = w.ravel().copy()
    order = np.argsort(-np.abs(flat), kind="stable")[:21]  # the mutant: largest first
    flat[order] *= np.float32(0.95)
    assert not np.array_equal(out.ravel(), flat)


def test_soft_shrink_ties_go_to_the_lower_flat_index_deterministically():
    kernel = jnp.array([[1.0, -1.0, 1.0], [1.0, 2.0, -1.0]])
    params = {"dense": {"kernel": kernel}}
    out = np.asarray(W.soft_shrink(params, 0.5, shrink=0.5)["dense"]["kernel"])  # 3 of 6
    assert out.tolist() == [[0.5, -0.5, 0.5], [1.0, 2.0, -1.0]]
    again = np.asarray(W.soft_shrink(params, 0.5, shrink=0.5)["dense"]["kernel"])
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(out, _np_soft_shrink(np.asarray(kernel), 0.5, 0.5))


@pytest.mark.parametrize(
    ("shape", "ratio", "count"),
    [
        ((2, 2), 0.9, 3),  # ceil(3.6) = 4 > int(0.995 * 4) = 3: capped
        ((1, 1), 0.5, 0),  # int(0.995) = 0: a one-weight layer is never shrunk
        ((10, 20), 0.999, 199),  # ceil(199.8) = 200 > 199
        ((10, 10), 0.07, 7),  # 0.07 * 100 is 7.000000000000001 in floats: still 7, not 8
        ((5, 8), 0.0, 0),
    ],
)
def test_soft_shrink_count_and_the_995_cap(shape, ratio, count):
    params = _params(2, shape)
    w = np.asarray(params["dense"]["kernel"])
    out = np.asarray(W.soft_shrink(params, ratio)["dense"]["kernel"])
    assert (out != w).sum() == count
    if count < w.size:  # the largest entry is never shrunk
        assert out.ravel()[np.argmax(np.abs(w))] == w.ravel()[np.argmax(np.abs(w))]


def test_soft_shrink_zero_is_iht_magnitude_pruning():
    params = _params(3, (8, 5))  # 40 weights, 25%: ceil and round agree (10)
    iht = W.soft_shrink(params, 0.25, shrink=0.0)
    masks = W.layerwise_masks(W.magnitude_scores(params), 0.25)
    expect = W.apply_masks(params, masks)
    np.testing.assert_array_equal(iht["dense"]["kernel"], expect["dense"]["kernel"])
    assert int((np.asarray(iht["dense"]["kernel"]) == 0).sum()) == 10


def test_soft_shrink_n_m_groups_along_the_input_axis():
    params = _params(4, (8, 3))  # [in=8, out=3]: two groups of 4 per output column
    w = np.asarray(params["dense"]["kernel"])
    out = np.asarray(W.soft_shrink(params, (2, 4))["dense"]["kernel"])
    expect = w.copy()
    for col in range(3):
        for g in range(2):
            rows = np.arange(4 * g, 4 * g + 4)
            low = rows[np.argsort(np.abs(w[rows, col]), kind="stable")[:2]]
            expect[low, col] *= np.float32(0.95)
    np.testing.assert_array_equal(out, expect)


def test_soft_shrink_n_m_refuses_a_group_size_that_does_not_divide():
    """The reference code silently bumps N and M until M divides; here it is an error."""
    params = _params(4, (6, 3))
    with pytest.raises(ValueError, match=r"dense/kernel.*not divisible by M=4"):
        W.soft_shrink(params, (2, 4))


def _grads(seed: int, params):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def test_iss_p_one_step_against_the_plain_optimizer_step():
    params, grads = _params(5), _grads(6, _params(5))
    inner = optax.sgd(0.1)
    plain = optax.apply_updates(params, inner.update(grads, inner.init(params), params)[0])
    opt = W.iss_p(inner, 0.4, soft_steps=5)
    updates, state = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    p = np.asarray(plain["dense"]["kernel"])
    got = np.asarray(new["dense"]["kernel"])
    expect = _np_soft_shrink(p, 0.4)
    shrunk = expect != p
    assert shrunk.sum() == math.ceil(0.4 * 42)
    np.testing.assert_array_equal(got[~shrunk], p[~shrunk])  # exactly the plain step
    np.testing.assert_allclose(got[shrunk], 0.95 * p[shrunk], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(new["dense"]["bias"], plain["dense"]["bias"])
    masks = W.iss_masks(state)
    np.testing.assert_array_equal(masks["dense"]["kernel"], ~shrunk)
    assert masks["dense"]["bias"] is None
    assert int(state.count) == 1


def test_iss_p_shrink_zero_zeroes_the_selection_exactly():
    params, grads = _params(7), _grads(8, _params(7))
    opt = W.iss_p(optax.sgd(0.1), 0.5, shrink=0.0, soft_steps=3)
    updates, state = opt.update(grads, opt.init(params), params)
    kernel = np.asarray(optax.apply_updates(params, updates)["dense"]["kernel"])
    keep = np.asarray(W.iss_masks(state)["dense"]["kernel"])
    assert (kernel[~keep] == 0).all() and (kernel[keep] != 0).all() and (~keep).sum() == 21


@pytest.mark.parametrize("inner_name", ["sgd", "adam"])
def test_iss_p_hard_phase_fixes_the_last_selection_and_keeps_zeros(inner_name):
    inner = optax.sgd(0.1) if inner_name == "sgd" else optax.adam(0.05)
    params = _params(9)
    opt = W.iss_p(inner, 0.5, soft_steps=3)
    state = opt.init(params)
    step = jax.jit(opt.update)
    history = []
    for t in range(9):
        updates, state = step(_grads(100 + t, params), state, params)
        params = optax.apply_updates(params, updates)
        history.append((np.asarray(W.iss_masks(state)["dense"]["kernel"]), params))
    last_soft = history[2][0]
    assert (~last_soft).sum() == 21
    for keep, p in history[3:]:
        np.testing.assert_array_equal(keep, last_soft)  # binary and fixed
        kernel = np.asarray(p["dense"]["kernel"])
        assert (kernel[~keep] == 0).all()  # exactly zero, every step
        assert (kernel[keep] != 0).all()
    assert int(state.count) == 9


def test_iss_p_soft_phase_recomputes_the_selection_so_weights_recover():
    params = {"dense": {"kernel": jnp.array([[0.125, 1.0], [2.0, 3.0]])}}
    opt = W.iss_p(optax.sgd(1.0), 0.25, shrink=0.5, soft_steps=5)  # one weight per step
    state = opt.init(params)
    zero = {"dense": {"kernel": jnp.zeros((2, 2))}}
    updates, state = opt.update(zero, state, params)
    params = optax.apply_updates(params, updates)
    assert np.asarray(params["dense"]["kernel"]).tolist() == [[0.0625, 1.0], [2.0, 3.0]]
    # the gradient drives 1.0 to 0.03125, now the smallest: it is shrunk and 0.0625 is not
    grads = {"dense": {"kernel": jnp.array([[0.0, 0.96875], [0.0, 0.0]])}}
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    assert np.asarray(params["dense"]["kernel"]).tolist() == [[0.0625, 0.015625], [2.0, 3.0]]
    keep = np.asarray(W.iss_masks(state)["dense"]["kernel"])
    assert keep.tolist() == [[True, False], [True, True]]


def test_iss_p_hard_phase_kept_weights_take_the_plain_sgd_step():
    params = _params(10)
    opt = W.iss_p(optax.sgd(0.1), 0.5, soft_steps=1)
    state = opt.init(params)
    updates, state = opt.update(_grads(11, params), state, params)
    params = optax.apply_updates(params, updates)
    grads = _grads(12, params)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    keep = np.asarray(W.iss_masks(state)["dense"]["kernel"])
    expect = np.asarray(params["dense"]["kernel"]) - np.float32(0.1) * np.asarray(
        grads["dense"]["kernel"]
    )
    np.testing.assert_allclose(np.asarray(new["dense"]["kernel"])[keep], expect[keep], rtol=1e-6)
    assert (np.asarray(new["dense"]["kernel"])[~keep] == 0).all()


def test_iss_p_soft_steps_zero_prunes_by_the_initial_magnitudes():
    params = _params(13)
    opt = W.iss_p(optax.sgd(0.1), 0.5, soft_steps=0)
    state = opt.init(params)
    init_keep = np.asarray(W.iss_masks(state)["dense"]["kernel"])
    np.testing.assert_array_equal(
        init_keep, np.asarray(W.soft_shrink(params, 0.5, shrink=0.0)["dense"]["kernel"]) != 0
    )
    updates, state = opt.update(_grads(14, params), state, params)
    kernel = np.asarray(optax.apply_updates(params, updates)["dense"]["kernel"])
    assert (kernel[~init_keep] == 0).all()


def test_iss_p_eager_and_jit_agree():
    params, grads = _params(15), _grads(16, _params(15))
    opt = W.iss_p(optax.adam(0.01), 0.3, soft_steps=2)
    state = opt.init(params)
    a = opt.update(grads, state, params)
    b = jax.jit(opt.update)(grads, state, params)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": "0.5"}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"ratio": (4, 4)}, r"0 <= N < M"),
        ({"ratio": (1, 2, 3)}, r"\(N, M\)"),
        ({"shrink": -0.1}, "shrink"),
        ({"shrink": 1.5}, "shrink"),
        ({"shrink": None}, "shrink"),
        ({"soft_steps": -1}, "soft_steps"),
        ({"soft_steps": 2.5}, "soft_steps"),
        ({"prunable": 3}, "prunable"),
    ],
)
def test_iss_p_refuses_bad_arguments(kwargs, match):
    args = {"ratio": 0.5, "shrink": 0.95, "soft_steps": 10, "prunable": None} | kwargs
    with pytest.raises(ValueError, match=match):
        W.iss_p(optax.sgd(0.1), args.pop("ratio"), **args)


def test_iss_refuses_bad_leaves_and_calls():
    int_params = {"dense": {"kernel": jnp.ones((4, 4), jnp.int32)}}
    with pytest.raises(ValueError, match=r"dense/kernel.*float"):
        W.soft_shrink(int_params, 0.5)
    with pytest.raises(ValueError, match=r"dense/kernel.*float"):
        W.iss_p(optax.sgd(0.1), 0.5, soft_steps=1).init(int_params)
    with pytest.raises(ValueError, match="selects no leaf"):
        W.soft_shrink({"dense": {"bias": jnp.ones(3)}}, 0.5)
    params = _params()
    opt = W.iss_p(optax.sgd(0.1), 0.5, soft_steps=1)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(params, opt.init(params))
    with pytest.raises(ValueError, match="ISSState"):
        W.iss_masks(W.masked_optimizer(optax.sgd(0.1)).init(params))
    with pytest.raises(ValueError, match="shrink"):
        W.soft_shrink(params, 0.5, shrink=2.0)


# --------------------------------------------------------------------------------------------
# MaskSparsity


def _bn_params():
    return {
        "conv": {"kernel": jnp.full((3, 3, 2, 4), 0.3)},
        "bn": {"scale": jnp.array([0.5, -0.2, 0.0, 0.8]), "bias": jnp.full(4, 0.1)},
        "blocks": [
            {
                "bn1": {"scale": jnp.array([-0.7, 0.04, 0.3]), "bias": jnp.zeros(3)},
                "conv1": {"kernel": jnp.ones((3, 3, 4, 3))},
            }
        ],
    }


def _zero_except_scales(term, names):
    for name, leaf in zip(W.leaf_names(term), jax.tree.leaves(term), strict=True):
        if name not in names:
            assert not np.asarray(leaf).any(), name


def test_bn_l1_gradient_on_every_channel_without_masks():
    params = _bn_params()
    term = W.bn_l1_gradient(params, 0.25)
    assert np.asarray(term["bn"]["scale"]).tolist() == [0.25, -0.25, 0.0, 0.25]
    assert np.asarray(term["blocks"][0]["bn1"]["scale"]).tolist() == [-0.25, 0.25, 0.25]
    _zero_except_scales(term, {"bn/scale", "blocks/0/bn1/scale"})


def test_bn_l1_gradient_only_on_the_channels_to_prune():
    params = _bn_params()
    masks = jax.tree.map(lambda _: None, params)
    masks["bn"]["scale"] = jnp.array([False, True, True, False])
    term = W.bn_l1_gradient(params, 0.25, masks=masks)
    # kept channels: 0; masked: s * sign(gamma) (sign(0) = 0); a scale with a None mask: none
    assert np.asarray(term["bn"]["scale"]).tolist() == [0.0, -0.25, 0.0, 0.0]
    assert not np.asarray(term["blocks"][0]["bn1"]["scale"]).any()
    _zero_except_scales(term, {"bn/scale"})


def test_bn_l1_gradient_smooth_l1_by_hand():
    params = {"bn": {"scale": jnp.array([0.25, 0.03125, -0.046875, -0.5, 0.0])}}
    # lr * s = 0.5 * 0.125 = 0.0625: below it the term is s * gamma, above it s * sign(gamma)
    term = W.bn_l1_gradient(params, 0.125, smooth_l1=True, lr=0.5)["bn"]["scale"]
    expect = [0.125, 0.125 * 0.03125, -0.125 * 0.046875, -0.125, 0.0]
    np.testing.assert_allclose(np.asarray(term), expect, rtol=1e-7)
    masks = {"bn": {"scale": jnp.array([True, True, False, False, True])}}
    term = W.bn_l1_gradient(params, 0.125, masks=masks, smooth_l1=True, lr=0.5)["bn"]["scale"]
    np.testing.assert_allclose(np.asarray(term), [0.125, 0.125 * 0.03125, 0, 0, 0], rtol=1e-7)


def test_mask_sparsity_adds_the_term_to_the_gradients():
    params = _bn_params()
    grads = _grads(20, params)
    masks = W.bn_prune_masks(params, 0.25)
    updates, _ = W.mask_sparsity(0.5, masks).update(grads, optax.EmptyState(), params)
    expect = jax.tree.map(jnp.add, grads, W.bn_l1_gradient(params, 0.5, masks=masks))
    for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(expect), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bn_prune_masks_against_hand_values():
    params = _bn_params()
    params["bn"]["scale"] = jnp.array([0.5, -0.005, 0.01, 0.0])
    masks = W.bn_prune_masks(params, 0.01)
    assert np.asarray(masks["bn"]["scale"]).tolist() == [False, True, False, True]
    assert np.asarray(masks["blocks"][0]["bn1"]["scale"]).tolist() == [False, False, False]
    assert masks["bn"]["bias"] is None and masks["conv"]["kernel"] is None
    assert np.asarray(W.bn_prune_masks(params, 0.05)["blocks"][0]["bn1"]["scale"]).tolist() == [
        False,
        True,
        False,
    ]


def test_default_scale_filter_finds_the_resnet_batch_norms():
    model = M.ResNet20(width=4, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    masks = W.bn_prune_masks(state)
    flat = jax.tree_util.tree_structure(state).flatten_up_to(masks)
    chosen = [n for n, m in zip(W.leaf_names(state), flat, strict=True) if m is not None]
    expect = [n for n in W.leaf_names(state) if n.endswith("/scale")]
    assert chosen == expect and "blocks/0/bn1/scale" in chosen and "bn/scale" in chosen
    assert any("shortcut/bn/scale" in n for n in chosen)


def test_masked_gammas_go_to_zero_under_sgd_and_kept_ones_do_not_move():
    """A weak quadratic pulls every gamma to its start; the L1 term (stronger) pulls the masked
    ones to 0. Kept gammas sit at their optimum: exactly unchanged."""
    target = jnp.array([0.5, -0.4, 0.3, 0.6, -0.2, 0.45])
    masks = {"bn": {"scale": jnp.array([True, False, True, False, True, False])}}
    params = {"bn": {"scale": target}}
    lr, s, c = 0.02, 0.1, 0.1

    def loss(p):
        return 0.5 * c * jnp.sum((p["bn"]["scale"] - target) ** 2)

    opt = optax.chain(W.mask_sparsity(s, masks), optax.sgd(lr))
    state = opt.init(params)

    @jax.jit
    def step(p, st):
        updates, st = opt.update(jax.grad(loss)(p), st, p)
        return optax.apply_updates(p, updates), st

    for _ in range(1500):
        params, state = step(params, state)
    gamma = np.asarray(params["bn"]["scale"])
    m = np.asarray(masks["bn"]["scale"])
    assert np.abs(gamma[m]).max() < lr * (s + c * 0.6)  # within one step of 0
    np.testing.assert_array_equal(gamma[~m], np.asarray(target)[~m])
    # step 5 of the pipeline finds exactly the masked channels, and pruning them barely
    # changes a per-channel-scaled output
    np.testing.assert_array_equal(np.asarray(W.bn_prune_masks(params)["bn"]["scale"]), m)
    x = jnp.linspace(-1.0, 1.0, 6)
    pruned = jnp.where(masks["bn"]["scale"], 0.0, params["bn"]["scale"])
    assert abs(float(jnp.sum(params["bn"]["scale"] * x) - jnp.sum(pruned * x))) < 0.02


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: W.bn_l1_gradient(p, -1.0), "s must"),
        (lambda p: W.bn_l1_gradient(p, float("nan")), "s must"),
        (lambda p: W.bn_l1_gradient(p, "0.1"), "s must"),
        (lambda p: W.bn_l1_gradient(p, 0.1, smooth_l1=True), "needs lr"),
        (lambda p: W.bn_l1_gradient(p, 0.1, lr=0.1), "only with smooth_l1"),
        (lambda p: W.bn_l1_gradient(p, 0.1, smooth_l1=True, lr=0.0), "lr must"),
        (lambda p: W.bn_l1_gradient(p, 0.1, masks={"bn": None}), "structure"),
        (lambda p: W.bn_l1_gradient(p, 0.1, scale_filter="*/nothing"), "no BN scale"),
        (lambda p: W.bn_prune_masks(p, 0.0), "threshold"),
        (lambda p: W.bn_prune_masks(p, True), "threshold"),
        (lambda p: W.mask_sparsity(-0.5), "s must"),
        (lambda p: W.mask_sparsity(0.1, smooth_l1=True), "needs lr"),
        (lambda p: W.mask_sparsity(0.1).update(p, optax.EmptyState()), "needs params"),
    ],
)
def test_mask_sparsity_refuses_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(_bn_params())


def test_mask_sparsity_refuses_bad_masks_and_scales():
    params = _bn_params()
    masks = jax.tree.map(lambda _: None, params)
    masks["bn"]["scale"] = jnp.ones(3, bool)
    with pytest.raises(ValueError, match=r"bn/scale.*\(3,\).*\(4,\)"):
        W.mask_sparsity(0.1, masks).init(params)
    masks["bn"]["scale"] = None
    masks["conv"]["kernel"] = jnp.ones((3, 3, 2, 4), bool)
    with pytest.raises(ValueError, match=r"conv/kernel.*not a BN scale"):
        W.bn_l1_gradient(params, 0.1, masks=masks)
    params["bn"]["scale"] = jnp.array([1, 0, 2, 3])
    with pytest.raises(ValueError, match=r"bn/scale.*float"):
        W.bn_prune_masks(params)
