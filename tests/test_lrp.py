"""Pruning by Explaining: z+ LRP rules, relevance through a plan, filter criteria, schedule."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax import weights as W
from pruneax.models.convnets import CifarResNet, ConvNet, LeNet300100, lrp_plan

L = W.LRPLayer


# ---------------------------------------------------------------- an independent NumPy oracle
def _same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2


def _np_conv(x, w, b, s, padding):
    """Forward convolution with explicit loops; also returns the z+ contributions' geometry."""
    bsz, h, wd, _ = x.shape
    kh, kw, ci, co = w.shape
    if padding == "SAME":
        (oh, ph), (ow, pw) = _same_pads(h, kh, s), _same_pads(wd, kw, s)
    else:
        oh, ow, ph, pw = (h - kh) // s + 1, (wd - kw) // s + 1, 0, 0
    y = np.zeros((bsz, oh, ow, co))
    for n in range(bsz):
        for i in range(oh):
            for j in range(ow):
                for o in range(co):
                    acc = b[o]
                    for a in range(kh):
                        for c in range(kw):
                            r, q = i * s + a - ph, j * s + c - pw
                            if 0 <= r < h and 0 <= q < wd:
                                acc += sum(x[n, r, q, m] * w[a, c, m, o] for m in range(ci))
                    y[n, i, j, o] = acc
    return y, (ph, pw)


def _stab(z, eps):
    return z + eps * (1.0 if z >= 0 else -1.0)


def _np_zplus_conv(x, w, r_out, s, padding, eps):
    """z+ by the textbook formula R_i = sum_j x_i w+_ij / (sum_i' x_i' w+_i'j) R_j, in loops."""
    wp = np.maximum(w, 0)
    z, (ph, pw) = _np_conv(x, wp, np.zeros(w.shape[3]), s, padding)
    kh, kw, ci, co = w.shape
    r_in = np.zeros_like(x)
    bsz, oh, ow, _ = r_out.shape
    for n in range(bsz):
        for i in range(oh):
            for j in range(ow):
                for o in range(co):
                    share = r_out[n, i, j, o] / _stab(z[n, i, j, o], eps)
                    for a in range(kh):
                        for c in range(kw):
                            r, q = i * s + a - ph, j * s + c - pw
                            if 0 <= r < x.shape[1] and 0 <= q < x.shape[2]:
                                for m in range(ci):
                                    r_in[n, r, q, m] += x[n, r, q, m] * wp[a, c, m, o] * share
    return r_in


def _np_pool(x):
    bsz, h, wd, c = x.shape
    y = np.zeros((bsz, h // 2, wd // 2, c))
    arg = {}
    for n in range(bsz):
        for i in range(h // 2):
            for j in range(wd // 2):
                for m in range(c):
                    cells = [(2 * i + a, 2 * j + b) for a in range(2) for b in range(2)]
                    vals = [x[n, r, q, m] for r, q in cells]
                    k = int(np.argmax(vals))  # first maximum, row-major
                    y[n, i, j, m], arg[n, i, j, m] = vals[k], cells[k]
    return y, arg


def _np_relevance(p, x, labels, s, padding, eps):
    """conv(s) - relu - maxpool - conv - relu - flatten - dense, all in NumPy."""
    c0 = np.maximum(_np_conv(x, p["c0"]["kernel"], p["c0"]["bias"], s, padding)[0], 0)
    pooled, arg = _np_pool(c0)
    c1 = np.maximum(_np_conv(pooled, p["c1"]["kernel"], p["c1"]["bias"], 1, "SAME")[0], 0)
    flat = c1.reshape(len(x), -1)
    logits = flat @ p["out"]["kernel"] + p["out"]["bias"]
    r_out = np.eye(logits.shape[1])[labels]
    wp = np.maximum(p["out"]["kernel"], 0)
    z = flat @ wp
    z = z + eps * np.where(z >= 0, 1.0, -1.0)
    r_c1 = (flat * ((r_out / z) @ wp.T)).reshape(c1.shape)
    r_pool = _np_zplus_conv(pooled, p["c1"]["kernel"], r_c1, 1, "SAME", eps)
    r_c0 = np.zeros_like(c0)
    for (n, i, j, m), (r, q) in arg.items():
        r_c0[n, r, q, m] += c0[n, r, q, m] * r_pool[n, i, j, m] / _stab(pooled[n, i, j, m], eps)
    r_x = _np_zplus_conv(x, p["c0"]["kernel"], r_c0, s, padding, eps)
    return {"out": r_out, "c1": r_c1, "c0": r_c0, "input": r_x}, logits


def _tiny(seed, s, padding):
    rng = np.random.default_rng(seed)
    hw = 8 if padding == "SAME" else 9
    oh = -(-hw // s) if padding == "SAME" else (hw - 3) // s + 1
    feats = (oh // 2) ** 2 * 4
    p = {
        "c0": {"kernel": rng.normal(size=(3, 3, 2, 3)), "bias": 0.1 * rng.normal(size=3)},
        "c1": {"kernel": rng.normal(size=(3, 3, 3, 4)), "bias": 0.1 * rng.normal(size=4)},
        "out": {"kernel": rng.normal(size=(feats, 5)), "bias": 0.1 * rng.normal(size=5)},
    }
    plan = (
        L("conv", "c0", strides=(s, s), padding=padding),
        L("relu"),
        L("maxpool", window=(2, 2), strides=(2, 2), padding="VALID"),
        L("conv", "c1"),
        L("relu"),
        L("flatten"),
        L("dense", "out"),
    )
    x = rng.normal(size=(2, hw, hw, 2))
    return p, plan, x, rng.integers(0, 5, size=2)


# -------------------------------------------------------------------------------- (a) rules
def test_zplus_conserves_relevance_in_a_relu_mlp():
    rng = np.random.default_rng(0)
    p = {
        "fc": {
            "kernel": jnp.asarray(rng.normal(0.5, 1, (6, 7)), jnp.float32),
            "bias": jnp.zeros(7),
        },
        "out": {"kernel": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32), "bias": jnp.zeros(3)},
    }
    plan = (L("dense", "fc"), L("relu"), L("dense", "out"))
    x = jnp.asarray(rng.uniform(0.1, 1.0, size=(4, 6)), jnp.float32)
    rel = W.lrp_relevance(p, plan, x, jnp.array([0, 1, 2, 1]))
    h = jax.nn.relu(x @ p["fc"]["kernel"])
    # precondition: every output unit has a positive z+ denominator (else z+ drops relevance)
    assert float((h @ jnp.maximum(p["out"]["kernel"], 0)).min()) > 0.01
    for name in ("out", "fc", "input"):
        np.testing.assert_allclose(rel[name].sum(axis=1), np.ones(4), atol=1e-5)
    assert float(rel["input"].min()) >= 0.0
    # one rule application on its own
    r_in = W.zplus_dense(h, p["out"]["kernel"], rel["out"])
    np.testing.assert_allclose(r_in, rel["fc"], atol=1e-6)


@pytest.mark.parametrize("s", [1, 2])
def test_zplus_conv_conserves_with_strides(s):
    rng = np.random.default_rng(s)
    x = jnp.asarray(rng.uniform(0.1, 1, size=(2, 7, 7, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    out = jax.lax.conv_general_dilated(
        x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    r_out = jnp.asarray(rng.uniform(size=out.shape), jnp.float32)
    r_in = W.zplus_conv(x, w, r_out, strides=(s, s), padding="SAME")
    np.testing.assert_allclose(float(r_in.sum()), float(r_out.sum()), rtol=1e-5)


# ------------------------------------------------------------------- (b) the NumPy oracle
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("s", "padding"), [(1, "SAME"), (2, "SAME"), (2, "VALID")])
def test_relevance_maps_match_a_numpy_loop_oracle(seed, s, padding):
    p, plan, x, labels = _tiny(seed, s, padding)
    want, _ = _np_relevance(p, x, labels, s, padding, 1e-9)
    pj = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    got = W.lrp_relevance(pj, plan, jnp.asarray(x, jnp.float32), jnp.asarray(labels))
    assert set(got) == {"out", "c1", "c0", "input"}
    for name, ref in want.items():
        np.testing.assert_allclose(got[name], ref, rtol=2e-4, atol=2e-5, err_msg=name)
    assert np.abs(want["c0"]).sum() > 0.5  # the oracle is not trivially zero


def test_plan_of_a_convnet_reproduces_the_model_and_conserves():
    model = ConvNet("conv2", input_shape=(8, 8, 1), num_classes=4, rngs=nnx.Rngs(0))
    params, plan = nnx.state(model, nnx.Param), lrp_plan(model)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    rel = W.lrp_relevance(params, plan, x, jnp.array([0, 3, 1]))
    # zero biases at init: z+ conserves through every layer (to the stabiliser); not onto the
    # signed image: a first-layer filter with no positive weight has Z = 0 and drops relevance
    for name in ("fcs/1", "fcs/0", "convs/1", "convs/0"):
        total = rel[name].reshape(3, -1).sum(axis=1)
        np.testing.assert_allclose(total, np.ones(3), rtol=1e-4, err_msg=name)
    scores = W.lrp_filter_scores(params, plan, [(x, jnp.array([0, 3, 1]))], normalize=None)
    np.testing.assert_allclose(scores["convs/1"], rel["convs/1"].sum(axis=(0, 1, 2)), rtol=1e-5)
    lenet = LeNet300100(in_features=64, hidden=(8, 6), num_classes=3, rngs=nnx.Rngs(0))
    r = W.lrp_relevance(
        nnx.state(lenet, nnx.Param), lrp_plan(lenet), x[..., 0], jnp.array([0, 1, 2])
    )
    assert r["input"].shape == (3, 8, 8)


def test_plan_forward_matches_the_model():
    model = ConvNet("conv4", input_shape=(8, 8, 3), rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    # the Taylor criterion differentiates the plan's forward pass; with no conv probe the
    # scores of the classifier equal |mean(d CE / d logits * logits)| from the model itself
    params, plan = nnx.state(model, nnx.Param), lrp_plan(model)
    y = jnp.array([1, 7])
    got = W.taylor_filter_scores(params, plan, [(x, y)], normalize=None, kinds=("dense",))["out"]
    logits = model(x)
    g = jax.grad(lambda z: -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(2), y]))(logits)
    np.testing.assert_allclose(got, jnp.abs((logits * g).sum(0) / 2), rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(importlib.util.find_spec("zennit") is None, reason="zennit is not installed")
def test_matches_zennit_zplus():  # pragma: no cover - zennit is not a dependency
    import torch
    from zennit.core import Composite
    from zennit.rules import ZPlus

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(6, 7)), rng.normal(size=(7, 3))
    x = rng.uniform(0.1, 1.0, size=(4, 6))
    labels = np.array([0, 1, 2, 1])
    net = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    with torch.no_grad():
        for layer, w in ((net[0], w1), (net[2], w2)):
            layer.weight.copy_(torch.tensor(w.T, dtype=torch.float32))
            layer.bias.zero_()
    comp = Composite(
        module_map=lambda ctx, name, m: ZPlus() if isinstance(m, torch.nn.Linear) else None
    )
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    with comp.context(net) as m:
        out = m(xt)
        (want,) = torch.autograd.grad(out, xt, torch.eye(3)[labels])
    p = {
        "fc": {"kernel": jnp.asarray(w1, jnp.float32)},
        "out": {"kernel": jnp.asarray(w2, jnp.float32)},
    }
    plan = (L("dense", "fc"), L("relu"), L("dense", "out"))
    got = W.lrp_relevance(p, plan, jnp.asarray(x, jnp.float32), jnp.asarray(labels), eps=1e-6)
    np.testing.assert_allclose(got["input"], want.numpy(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------ (d) scores, normalisation, rank
def test_normalisation_and_global_ranking_by_hand():
    raw = {"a": jnp.array([2.0, 1.0, 1.0]), "b": jnp.array([10.0, 30.0, 60.0, 0.0])}
    l1 = W.normalize_filter_scores(raw, "l1")
    np.testing.assert_allclose(l1["a"], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(l1["b"], [0.1, 0.3, 0.6, 0.0])
    l2 = W.normalize_filter_scores({"a": jnp.array([-3.0, 4.0])}, "l2")
    np.testing.assert_allclose(l2["a"], [0.6, 0.8])
    assert W.normalize_filter_scores({"z": jnp.zeros(2)}, "l1")["z"].tolist() == [0.0, 0.0]
    # global ascending: b3 (0.0), b0 (0.1), then the tie at 0.25 -> a1 before a2
    assert W.lowest_filters(l1, 4) == [("b", 3), ("b", 0), ("a", 1), ("a", 2)]
    assert W.lowest_filters(l1, 2, exclude={("b", 3)}) == [("b", 0), ("a", 1)]
    # without normalisation the big layer would never be pruned first
    assert W.lowest_filters(raw, 1) == [("b", 3)]
    assert W.lowest_filters(raw, 2)[1] == ("a", 1)


def test_lrp_scores_accumulate_and_are_l1_normalised_per_layer():
    p, plan, x, labels = _tiny(3, 1, "SAME")
    pj = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    xs, ys = jnp.asarray(x, jnp.float32), jnp.asarray(labels)
    batches = [(xs[:1], ys[:1]), (xs[1:], ys[1:])]
    raw = W.lrp_filter_scores(pj, plan, batches, normalize=None)
    full = W.lrp_relevance(pj, plan, xs, ys)
    for name in ("c0", "c1"):
        np.testing.assert_allclose(raw[name], full[name].sum(axis=(0, 1, 2)), rtol=1e-5)
    normed = W.lrp_filter_scores(pj, plan, batches)
    assert list(normed) == ["c0", "c1"]
    for v in normed.values():
        assert abs(float(v.sum()) - 1.0) < 1e-5 and float(v.min()) >= 0.0
    dense = W.lrp_filter_scores(pj, plan, batches, kinds=("dense",), normalize=None)
    np.testing.assert_allclose(dense["out"], np.bincount(labels, minlength=5), atol=1e-6)


def test_weight_l1_scores_by_hand():
    k = np.zeros((1, 1, 2, 3), np.float32)
    k[0, 0, :, 0], k[0, 0, :, 1], k[0, 0, :, 2] = [1, -1], [0, 3], [-0.5, 0.5]
    p = {"c": {"kernel": jnp.asarray(k)}, "out": {"kernel": jnp.ones((3, 2))}}
    plan = (L("conv", "c"), L("relu"), L("flatten"), L("dense", "out"))
    np.testing.assert_allclose(W.weight_filter_scores(p, plan, normalize=None)["c"], [2, 3, 1])
    np.testing.assert_allclose(W.weight_filter_scores(p, plan)["c"], [1 / 3, 1 / 2, 1 / 6])


# ---------------------------------------------------------------------------- (e) schedule
def _schedule_setup():
    rng = np.random.default_rng(5)
    p = {
        "c0": {"kernel": rng.normal(size=(3, 3, 1, 8)), "bias": 0.1 * rng.normal(size=8)},
        "c1": {"kernel": rng.normal(size=(3, 3, 8, 12)), "bias": 0.1 * rng.normal(size=12)},
        "out": {"kernel": rng.normal(size=(12 * 4, 3)), "bias": np.zeros(3)},
    }
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    plan = (L("conv", "c0"), L("relu"), L("maxpool"), L("conv", "c1"), L("relu"), L("flatten"),
            L("dense", "out"))  # fmt: skip
    x = jnp.asarray(rng.uniform(size=(6, 4, 4, 1)), jnp.float32)
    return p, plan, [(x, jnp.asarray(rng.integers(0, 3, size=6)))]


@pytest.mark.parametrize("criterion", ["lrp", "weight", "taylor"])
def test_iterative_schedule(criterion):
    p, plan, batches = _schedule_setup()
    calls = {"batches": 0, "retrain": 0}

    def pruning_set():
        calls["batches"] += 1
        return batches

    seen = []

    def retrain(params, masks):
        calls["retrain"] += 1
        seen.append(sum(int((~m).sum()) for m in jax.tree.leaves(masks)))
        return jax.tree.map(lambda a: a + 0.1, params)  # a careless update: masks re-applied

    # 20 filters, pr_step 0.13 -> int(2.6) = 2 per iteration; int(int(20 / 2) * 0.5) = 5
    out, masks, pruned = W.iterative_filter_pruning(
        p, plan, pruning_set, retrain, criterion=criterion, pr_step=0.13, total_pr=0.5
    )
    assert [len(step) for step in pruned] == [2] * 5
    flat = [f for step in pruned for f in step]
    assert len(set(flat)) == 10
    assert calls["retrain"] == 5
    assert calls["batches"] == (0 if criterion == "weight" else 5)
    # masked entries seen by retrain: kernel column + bias entry of every pruned filter so far
    size = {"c0": 3 * 3 * 1 + 1, "c1": 3 * 3 * 8 + 1}
    assert seen == list(np.cumsum([sum(size[n] for n, _ in step) for step in pruned]))
    for name, j in flat:
        assert float(jnp.abs(out[name]["kernel"][..., j]).max()) == 0.0
        assert float(out[name]["bias"][j]) == 0.0
        assert not bool(masks[name]["kernel"][..., j].any())
    alive = [(n, j) for n, c in (("c0", 8), ("c1", 12)) for j in range(c) if (n, j) not in flat]
    assert all(float(jnp.abs(out[n]["kernel"][..., j]).max()) > 0 for n, j in alive)
    assert masks["out"]["kernel"] is None


def test_schedule_recomputes_scores_on_the_pruned_network():
    p, plan, batches = _schedule_setup()
    observed = []

    def spy(params, plan_, batches_):
        observed.append(int((params["c1"]["bias"] == 0).sum()))
        return W.lrp_filter_scores(params, plan_, batches_)

    W.iterative_filter_pruning(p, plan, batches, lambda q, m: q, criterion=spy, pr_step=0.1,
                               total_pr=0.3)  # fmt: skip
    assert len(observed) == 3
    assert observed[0] == 0 and observed[-1] >= observed[0]


def test_published_defaults_give_18_iterations():
    model = ConvNet("conv2", input_shape=(8, 8, 1), rngs=nnx.Rngs(0))  # 128 filters
    n = []

    def spy(params, plan, batches):
        n.append(1)
        return W.weight_filter_scores(params, plan)

    W.iterative_filter_pruning(
        nnx.state(model, nnx.Param), lrp_plan(model), [], lambda q, m: q, criterion=spy
    )
    assert len(n) == int(int(128 / int(128 * 0.05)) * 0.9) == 18


# -------------------------------------------------------------------------- (f) bad inputs
def test_bad_inputs_name_the_argument():
    p, plan, batches = _schedule_setup()
    x, y = batches[0]
    bad_plan = (L("conv", "c0"), L("batchnorm", "bn"), L("dense", "out"))
    with pytest.raises(ValueError, match=r"'bn'.*batchnorm"):
        W.lrp_relevance(p, bad_plan, x, y)
    with pytest.raises(ValueError, match="BatchNorm"):
        lrp_plan(CifarResNet("resnet14", rngs=nnx.Rngs(0)))
    for eps in (0.0, -1e-9, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            W.lrp_relevance(p, plan, x, y, eps=eps)
    with pytest.raises(ValueError, match="eps"):
        W.zplus_dense(jnp.ones((1, 2)), jnp.ones((2, 1)), jnp.ones((1, 1)), eps=0)
    with pytest.raises(ValueError, match="labels"):
        W.lrp_relevance(p, plan, x, y.at[0].set(3))
    with pytest.raises(ValueError, match="labels"):
        W.lrp_filter_scores(p, plan, [(x, y.at[0].set(-1))])
    keep = lambda q, m: q
    for pr_step in (0.0, 1.5, -0.1, 0.01):  # 0.01 * 20 filters < 1
        with pytest.raises(ValueError, match="pr_step"):
            W.iterative_filter_pruning(p, plan, batches, keep, pr_step=pr_step)
    for total_pr in (0.0, 1.0, 2.0, 0.05):  # 0.05: int(10 * 0.05) = 0 iterations
        with pytest.raises(ValueError, match="total_pr"):
            W.iterative_filter_pruning(p, plan, batches, keep, pr_step=0.1, total_pr=total_pr)
    with pytest.raises(ValueError, match="criterion"):
        W.iterative_filter_pruning(p, plan, batches, keep, criterion="grad")
    with pytest.raises(ValueError, match="retrain"):
        W.iterative_filter_pruning(p, plan, batches, None)
    with pytest.raises(ValueError, match="normalize"):
        W.normalize_filter_scores({"a": jnp.ones(2)}, "l3")
    with pytest.raises(ValueError, match="count"):
        W.lowest_filters({"a": jnp.ones(2)}, 3)
    with pytest.raises(ValueError, match="out of range"):
        W.filter_masks(p, [("c0", 8)])
    with pytest.raises(ValueError, match="empty"):
        W.lrp_filter_scores(p, plan, [])
