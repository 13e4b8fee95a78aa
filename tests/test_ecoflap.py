"""ECoFLaP: the zeroth-order score against jax.jvp, the first-order score against a closed form,
the allocation against a brute-force oracle, per-block calibrated_prune, ecoflap_prune on a tiny
LlamaLM (exact budget, max sparsity, determinism, one score recomputed by hand), bad input."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax import weights as W
from pruneax.models import LlamaLM, calibrated_prune, ecoflap_prune, llm_config

# ----------------------------------------------------------------------------- scores


def _toy(dtype):
    rng = np.random.default_rng(0)
    params = {
        "l0": jnp.asarray(rng.normal(size=(4, 6)), dtype),
        "l1": jnp.asarray(rng.normal(size=(6, 6)) / 2, dtype),
        "l2": jnp.asarray(rng.normal(size=(6, 3)), dtype),
    }
    x = jnp.asarray(rng.normal(size=(5, 4)), dtype)

    def loss(p, xb):
        h = jnp.tanh(xb @ p["l0"])
        h = jnp.sin(h @ p["l1"])
        return jnp.mean(jnp.exp(0.5 * (h @ p["l2"])) ** 2)

    return params, x, loss


def _z(key, k, b, n, shape):  # the documented direction of leaf k, batch b, noise n
    sub = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, k), b), n)
    return jax.random.normal(sub, shape, jnp.float32)


def _jvp_abs(loss, params, name, x, z):
    def f(w):
        return loss({**params, name: w}, x)

    return abs(float(jax.jvp(f, (params[name],), (z.astype(params[name].dtype),))[1]))


def test_zeroth_order_equals_directional_derivative_to_second_order():
    key = jax.random.key(3)
    groups = {"a": ["l0", "l1"], "b": ["l2"]}
    with jax.enable_x64(True):
        params, x, loss = _toy(jnp.float64)
        names = W.leaf_names(params)
        exact = {n: _jvp_abs(loss, params, n, x, _z(key, names.index(n), 0, 0, params[n].shape))
                 for n in names}  # fmt: skip
        errs = []
        for eps in (0.2, 0.1, 0.05):
            s = W.zeroth_order_scores(loss, params, groups, [x], key=key, eps=eps)
            errs.append(max(abs(s[n] - exact[n]) for n in names))
        # central differences: error ~ eps^2, so halving eps divides it by ~4
        assert errs[0] > 1e-6
        assert 3.0 < errs[0] / errs[1] < 5.0 and 3.0 < errs[1] / errs[2] < 5.0, errs
        s = W.zeroth_order_scores(loss, params, groups, [x], key=key, eps=1e-4)
        assert max(abs(s[n] - exact[n]) / exact[n] for n in names) < 1e-6
    # float32 at the published eps: 1e-3 relative
    params, x, loss = _toy(jnp.float32)
    seen = []
    s = W.zeroth_order_scores(loss, params, groups, [x, 2 * x], key=key, num_noise=2,
                              progress=lambda *a: seen.append(a))  # fmt: skip
    assert [a[:3] for a in seen] == [(1, 3, "l0"), (2, 3, "l1"), (3, 3, "l2")]
    assert [a[3] for a in seen] == [s[n] for n in ("l0", "l1", "l2")]
    # an interrupted call's scores (saved through progress) are not recomputed: same result
    again = W.zeroth_order_scores(loss, params, groups, [x, 2 * x], key=key, num_noise=2,
                                  done={"l0": s["l0"], "l2": s["l2"]},
                                  progress=lambda *a: seen.append(a))  # fmt: skip
    assert again == s and seen[-1][:3] == (2, 3, "l1")  # only l1 was scored
    with pytest.raises(ValueError, match="done names"):
        W.zeroth_order_scores(loss, params, groups, [x], key=key, done={"zz": 1.0})
    for n in names:
        k = names.index(n)
        want = sum(_jvp_abs(loss, params, n, xb, _z(key, k, b, j, params[n].shape))
                   for b, xb in enumerate([x, 2 * x]) for j in range(2))  # fmt: skip
        assert abs(s[n] - want) < 1e-3 * want + 1e-4, (n, s[n], want)
    # the params were not touched, and the group score is the sum of its leaves
    np.testing.assert_array_equal(params["l0"], _toy(jnp.float32)[0]["l0"])
    np.testing.assert_allclose(W.group_scores(s, groups, params), [s["l0"] + s["l1"], s["l2"]])
    avg = W.group_scores(s, groups, params, reduce="avg")
    np.testing.assert_allclose(avg, [(s["l0"] + s["l1"]) / 60, s["l2"] / 18])


def test_first_order_is_weight_squared_times_mean_squared_gradient():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 2)).astype(np.float32)
    xs = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    loss = lambda p, x: 0.5 * jnp.sum((x @ p["a"]) ** 2)
    got = W.first_order_scores(loss, {"a": jnp.asarray(a)}, {"g": ["a"]}, xs)["a"]
    g2 = np.mean([(x.T @ (x @ a)) ** 2 for x in xs], 0)  # closed-form gradient x^T x A
    np.testing.assert_allclose(got, np.sum(a**2 * g2), rtol=1e-5)


# ----------------------------------------------------------------------------- allocation


def _oracle_real(s, cap, r):
    """Independent water-fill by bisection: t = min(cap, lam s), sum t = r (zero-score groups
    take the rest by their room once the positive ones are full)."""
    pos = s > 0
    if r > cap[pos].sum():
        t = np.where(pos, cap, 0.0)
        room = np.where(pos, 0.0, cap)
        return t + room * (r - cap[pos].sum()) / room.sum()
    lo, hi = 0.0, 1.0
    while np.minimum(cap, hi * s).sum() < r:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(cap, mid * s).sum() < r else (lo, mid)
    return np.minimum(cap, hi * s)


def test_allocation_brute_force_on_tiny_integer_cases():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        g = int(rng.integers(1, 4))
        sizes = rng.integers(1, 7, size=g)
        scores = rng.integers(0, 4, size=g).astype(float)
        sp = float(rng.choice([0.0, 0.25, 0.5, 0.6, 0.75]))
        mx = float(rng.choice([sp, min(1.0, sp + 0.1), min(1.0, sp + 0.3), 1.0]))
        k = math.floor(sizes.sum() * (1 - sp) + 1e-9)
        floor = np.array([math.ceil(n * (1 - mx) - 1e-9) for n in sizes])
        if floor.sum() > k:
            with pytest.raises(ValueError, match="infeasible"):
                W.allocate_keep(scores, sizes, sp, max_sparsity=mx)
            continue
        keep = W.allocate_keep(scores, sizes, sp, max_sparsity=mx)
        t = floor + _oracle_real(scores, (sizes - floor).astype(float), k - floor.sum())
        boxes = [range(f, n + 1) for f, n in zip(floor, sizes, strict=True)]
        cands = [np.array(c) for c in itertools.product(*boxes) if sum(c) == k]
        best = min(float(np.sum((c - t) ** 2)) for c in cands)
        assert keep.sum() == k and np.all(keep >= floor) and np.all(keep <= sizes)
        assert float(np.sum((keep - t) ** 2)) <= best + 1e-9, (scores, sizes, sp, mx, keep, t)
        checked += 1
    assert checked > 80


def test_allocation_properties():
    rng = np.random.default_rng(2)
    for _ in range(50):
        g = int(rng.integers(2, 40))
        sizes = rng.integers(100, 5000, size=g)
        scores = rng.exponential(size=g)
        sp = float(rng.uniform(0, 0.9))
        mx = float(min(1.0, sp + rng.uniform(0, 0.3)))
        try:
            keep = W.allocate_keep(scores, sizes, sp, max_sparsity=mx)
        except ValueError:
            continue
        assert keep.sum() == math.floor(sizes.sum() * (1 - sp) + 1e-9)
        per = W.allocate_sparsity(scores, sizes, sp, max_sparsity=mx)
        assert np.all(per <= mx + 1e-12) and np.all(per >= 0)
        np.testing.assert_allclose(per, 1 - keep / sizes)
    # monotone in score at equal sizes
    scores = rng.exponential(size=30)
    keep = W.allocate_keep(scores, [1000] * 30, 0.6, max_sparsity=0.8)
    order = np.argsort(scores)
    assert np.all(np.diff(keep[order]) >= 0) and keep[order[-1]] > keep[order[0]]
    # equal scores, equal sizes -> uniform; all scores 0 -> uniform too
    for s in ([2.0] * 8, [0.0] * 8):
        np.testing.assert_array_equal(
            W.allocate_sparsity(s, [100] * 8, 0.7, max_sparsity=0.8), [0.7] * 8
        )
    # a dominant group is capped at its size, the others stay at max sparsity or below
    keep = W.allocate_keep([1e6, 1.0, 1.0], [10, 10, 10], 0.5, max_sparsity=0.9)
    assert keep.tolist()[0] == 10 and keep.sum() == 15


# ----------------------------------------------------------------------------- the LLM


@pytest.fixture(scope="module")
def tiny():
    model = LlamaLM(llm_config("tiny", num_layers=3), rngs=nnx.Rngs(0))
    ids = np.random.default_rng(0).integers(0, 256, size=(6, 16))
    return model, ids


def _block_sparsity(masks, i):
    named = dict(zip(W.leaf_names(masks), jax.tree.leaves(masks), strict=True))
    ks = [np.asarray(v) for n, v in named.items() if n.startswith(f"layers/{i}/")]
    return 1 - sum(k.sum() for k in ks) / sum(k.size for k in ks), ks


@pytest.mark.parametrize("method", ["wanda", pytest.param("sparsegpt", marks=pytest.mark.slow)])
def test_per_block_calibrated_prune(tiny, method):
    model, ids = tiny
    per = [0.25, 0.75, 0.0]
    _, masks = calibrated_prune(model, ids, method=method, sparsity=per, batch_size=3)
    for i, s in enumerate(per):
        total, ks = _block_sparsity(masks, i)
        assert total == s
        for k in ks:  # Wanda: every output unit at the block's sparsity; SparseGPT: the matrix
            if method == "sparsegpt":
                assert k.mean() == 1 - s
                continue
            np.testing.assert_array_equal(k.sum(0), round(k.shape[0] * (1 - s)))
    # all equal -> exactly the uniform call
    _, uni = calibrated_prune(model, ids, method=method, sparsity=0.5, batch_size=3)
    _, blk = calibrated_prune(model, ids, method=method, sparsity=(0.5,) * 3, batch_size=3)
    for a, b in zip(jax.tree.leaves(uni), jax.tree.leaves(blk), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ecoflap_prune_budget_max_and_determinism(tiny):
    model, ids = tiny
    key = jax.random.key(1)
    kw = dict(sparsity=0.6, key=key, batch_size=3, num_batches=1)
    pruned, masks, info = ecoflap_prune(model, ids, **kw)
    sizes = np.asarray(info["block_sizes"])
    p = int(sizes.sum())
    k = math.floor(p * 0.4 + 1e-9)
    assert int(np.sum(info["block_keep"])) == k
    report = W.sparsity_report(masks)
    assert report.size == p
    outputs = sum(np.shape(m)[1] for m in jax.tree.leaves(masks))
    pruned_n = report.size - report.kept
    # documented rounding: <= the allocation, short by < one weight per output unit
    assert p - k - outputs < pruned_n <= p - k
    assert info["max_sparsity"] == pytest.approx(0.7)
    for i, s in enumerate(info["block_sparsities"]):
        assert s <= 0.7 + 1e-12
        assert _block_sparsity(masks, i)[0] <= s + 1e-12
    assert len(set(info["block_sparsities"])) > 1  # the scores do move the allocation
    # same key -> identical; another key -> other directions, other scores
    _, masks2, info2 = ecoflap_prune(model, ids, **kw)
    assert info2["leaf_scores"] == info["leaf_scores"]
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(masks2), strict=True):
        np.testing.assert_array_equal(a, b)
    _, _, info3 = ecoflap_prune(model, ids, **(kw | {"key": jax.random.key(2)}))
    assert info3["leaf_scores"] != info["leaf_scores"]
    # precomputed scores: the scoring is skipped, the result is the same; other scores move it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(W, "zeroth_order_scores", lambda *a, **k: pytest.fail("scored again"))
        _, masks4, info4 = ecoflap_prune(model, ids, **kw, leaf_scores=info["leaf_scores"])
        assert info4["block_sparsities"] == info["block_sparsities"]
        for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(masks4), strict=True):
            np.testing.assert_array_equal(a, b)
        louder = {n: v * (100.0 if n.startswith("layers/0/") else 1.0)
                  for n, v in info["leaf_scores"].items()}  # fmt: skip
        _, _, info5 = ecoflap_prune(model, ids, **kw, leaf_scores=louder)
        assert info5["block_sparsities"][0] < info["block_sparsities"][0]
    # partial scores (a killed run's): only the missing kernels are scored, same result
    part = dict(list(info["leaf_scores"].items())[:5])
    _, masks6, info6 = ecoflap_prune(model, ids, **kw, leaf_scores=part)
    assert info6["leaf_scores"] == info["leaf_scores"]
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(masks6), strict=True):
        np.testing.assert_array_equal(a, b)
    # the weights are exactly zero where masked
    params = nnx.state(pruned, nnx.Param)
    weights = dict(zip(W.leaf_names(params), jax.tree.leaves(params), strict=True))
    kernels = dict(zip(W.leaf_names(masks), jax.tree.leaves(masks), strict=True))
    assert len(kernels) == 7 * 3
    for n, m in kernels.items():
        assert np.all(np.asarray(weights[n])[~np.asarray(m)] == 0), n


def test_ecoflap_one_score_by_hand(tiny):
    """One matrix's score recomputed: perturb a copy of the model, eager forwards, NumPy CE."""
    model, ids = tiny
    key, eps = jax.random.key(5), 1e-2
    _, _, info = ecoflap_prune(model, ids, sparsity=0.5, key=key, batch_size=3, eps=eps)
    names = W.leaf_names(nnx.state(model, nnx.Param))
    name = "layers/1/mlp/up_proj/kernel"
    k = names.index(name)

    def ce(m, x):
        logits = np.asarray(m(jnp.asarray(x)).logits, np.float64)[:, :-1]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -np.mean(np.take_along_axis(logp, x[:, 1:, None], -1))

    want = 0.0
    for b in range(2):
        x = ids[3 * b : 3 * b + 3]
        z = _z(key, k, b, 0, model.layers[1].mlp.up_proj.kernel.shape)
        losses = []
        for sign in (1, -1):
            m = nnx.clone(model)
            m.layers[1].mlp.up_proj.kernel[...] = (
                m.layers[1].mlp.up_proj.kernel[...] + sign * eps * z
            )
            losses.append(ce(m, x))
        want += abs(losses[0] - losses[1]) / (2 * eps)
    assert info["leaf_scores"][name] == pytest.approx(want, rel=2e-3, abs=1e-4)


def test_ecoflap_first_order_runs(tiny):
    model, ids = tiny
    _, _, info = ecoflap_prune(
        model, ids, sparsity=0.5, key=jax.random.key(0), score="first_order", reduce="avg",
        batch_size=3,
    )  # fmt: skip
    assert int(np.sum(info["block_keep"])) == math.floor(np.sum(info["block_sizes"]) * 0.5)
    assert all(v > 0 for v in info["leaf_scores"].values())


# ----------------------------------------------------------------------------- errors


def test_bad_input(tiny):
    model, ids = tiny
    key = jax.random.key(0)
    bad = [
        (lambda: W.allocate_keep([1.0], [10], 1.0, max_sparsity=1.0), "sparsity"),
        (lambda: W.allocate_keep([1.0], [10], -0.1, max_sparsity=0.5), "sparsity"),
        (lambda: W.allocate_keep([1.0], [10], 0.5, max_sparsity=0.4), "max_sparsity"),
        (lambda: W.allocate_keep([1.0, -1.0], [10, 10], 0.5, max_sparsity=0.6), "scores"),
        (lambda: W.allocate_keep([1.0, np.nan], [10, 10], 0.5, max_sparsity=0.6), "scores"),
        (lambda: W.allocate_keep([1.0, 1.0], [10], 0.5, max_sparsity=0.6), "sizes"),
        (lambda: W.allocate_keep([1.0], [0], 0.5, max_sparsity=0.6), "sizes"),
        (lambda: W.allocate_keep([1.0], [2.5], 0.5, max_sparsity=0.6), "sizes"),
        (lambda: W.allocate_keep([], [], 0.5, max_sparsity=0.6), "scores"),
        (lambda: W.allocate_keep([1.0, 1.0], [3, 3], 0.5, max_sparsity=0.5), "infeasible"),
        (lambda: W.allocate_sparsity([1.0], [10], 0.5, max_sparsity=2.0), "max_sparsity"),
        (
            lambda: W.zeroth_order_scores(
                _toy(jnp.float32)[2], _toy(jnp.float32)[0], {"g": ["l0"]}, [], key=key
            ),
            "batches",
        ),
        (lambda: W.zeroth_order_scores(None, {"a": 1.0}, {"g": ["b"]}, [1], key=key), "b"),
        (
            lambda: W.zeroth_order_scores(None, {"a": 1.0}, {"g": ["a"]}, [1], key=key, eps=0.0),
            "eps",
        ),
        (
            lambda: W.zeroth_order_scores(
                None, {"a": 1.0}, {"g": ["a"]}, [1], key=key, num_noise=0
            ),
            "num_noise",
        ),
        (lambda: W.zeroth_order_scores(None, {"a": 1.0}, {}, [1], key=key), "groups"),
        (lambda: W.first_order_scores(None, {"a": 1.0}, {"g": "a"}, [1]), "groups"),
        (lambda: W.group_scores({"a": 1.0}, {"g": ["a"]}, {"a": 1.0}, reduce="max"), "reduce"),
        (lambda: W.group_scores({}, {"g": ["a"]}, {"a": 1.0}), "leaf_scores"),
        (lambda: calibrated_prune(model, ids, sparsity=[0.5, 0.5]), "per-block"),
        (lambda: calibrated_prune(model, ids, sparsity=[0.5, 1.0, 0.5]), r"sparsity\[1\]"),
        (lambda: calibrated_prune(model, ids, sparsity=[0.5] * 3, n_m=(2, 4)), "n_m"),
        (lambda: ecoflap_prune(model, ids, sparsity=1.0, key=key), "sparsity"),
        (
            lambda: ecoflap_prune(model, ids, sparsity=0.5, max_sparsity=0.4, key=key),
            "max_sparsity",
        ),
        (
            lambda: ecoflap_prune(model, ids, sparsity=0.5, max_sparsity=1.0, key=key),
            "max_sparsity",
        ),
        (lambda: ecoflap_prune(model, ids, sparsity=0.5, method="magnitude", key=key), "method"),
        (lambda: ecoflap_prune(model, ids, sparsity=0.5, score="x", key=key), "score"),
        (lambda: ecoflap_prune(model, ids, sparsity=0.5, reduce="x", key=key), "reduce"),
        (lambda: ecoflap_prune(model, ids, sparsity=0.5, eps=0, key=key), "eps"),
        (lambda: ecoflap_prune(model, ids, sparsity=0.5, num_batches=0, key=key), "num_batches"),
        (lambda: ecoflap_prune(model, ids[:, :1], sparsity=0.5, key=key), "2 tokens"),
        (lambda: ecoflap_prune(model, None, sparsity=0.5, key=key), "input_ids"),
        (lambda: ecoflap_prune(object(), ids, sparsity=0.5, key=key), "LlamaLM"),
        (lambda: ecoflap_prune(model, ids, sparsity=0.5, key=key, leaf_scores=[1.0]), "mapping"),
        (
            lambda: ecoflap_prune(
                model, ids, sparsity=0.5, key=key, leaf_scores={}, score="first_order"
            ),
            r"leaf_scores\['layers/0/",
        ),
        (
            lambda: ecoflap_prune(model, ids, sparsity=0.5, key=key, leaf_scores={"x": 1.0}),
            "not scored here",
        ),
        (
            lambda: ecoflap_prune(
                model, ids, sparsity=0.5, key=key, leaf_scores={"layers/0/mlp/up_proj/kernel": -1}
            ),
            "finite float",
        ),
    ]
    for fn, match in bad:
        with pytest.raises(ValueError, match=match):
            fn()
