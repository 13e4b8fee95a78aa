"""Static token-pruning plans and ``apply_stage`` on synthetic streams (no model needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pruneax.models.vit import METHODS, PruneStage, PruningPlan, apply_stage

B, P, GRID, D, H = 2, 1, (4, 5), 8, 3
N = GRID[0] * GRID[1]
T_ = P + N


def _inputs(seed=0, p=P, n=N):
    rng = np.random.default_rng(seed)
    t = p + n
    x = rng.normal(size=(B, t, D)).astype(np.float32)
    logits = rng.normal(size=(B, H, t, t)).astype(np.float32) * 2
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    keys = rng.normal(size=(B, H, t, D // 2)).astype(np.float32)
    size = np.ones((B, t), np.float32)
    ids = np.broadcast_to(np.arange(n, dtype=np.int32), (B, n))
    return x, attn, keys, size, ids


def _run(stage, seed=0, p=P, aux_layers=None, key=None):
    x, attn, keys, size, ids = _inputs(seed, p)
    layers = aux_layers if aux_layers is not None else (stage.layer - 1,)
    aux = {i: {"attn": jnp.asarray(attn), "keys": jnp.asarray(keys)} for i in layers}
    out = apply_stage(
        stage,
        jnp.asarray(x),
        size=jnp.asarray(size),
        aux=aux,
        patch_ids=jnp.asarray(ids),
        num_prefix=p,
        grid=GRID,
        key=jax.random.key(0) if key is None else key,
    )
    return (x, attn, keys), tuple(np.asarray(o) for o in out)


def _stage(method, keep=6, layer=3):
    return PruneStage(layer=layer, keep=keep, method=method)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"tome", "evit"}))
def test_selection_contract(method):
    stage = _stage(method, keep=6)
    (x, _, _), (x_new, size_new, src) = _run(stage, aux_layers=(1, 2))
    assert x_new.shape == (B, P + 6, D) and size_new.shape == (B, P + 6) and src.shape == (B, 6)
    np.testing.assert_array_equal(x_new[:, :P], x[:, :P])  # prefix untouched
    for b in range(B):
        assert np.all(np.diff(src[b]) > 0) and src[b].min() >= 0 and src[b].max() < N
        np.testing.assert_array_equal(x_new[b, P:], x[b, P + src[b]])
    np.testing.assert_array_equal(size_new, 1.0)


def test_topk_is_head_averaged_cls_attention():
    (_x, attn, _), (_, _, src) = _run(_stage("topk", keep=5))
    for b in range(B):
        score = attn[b].mean(0)[0, P:]
        np.testing.assert_array_equal(src[b], np.sort(np.argsort(-score, kind="stable")[:5]))


def test_topk_without_prefix_uses_received_attention():
    (_x, attn, _), (_, _, src) = _run(_stage("topk", keep=5), p=0)
    for b in range(B):
        score = attn[b].mean(0).mean(0)
        np.testing.assert_array_equal(src[b], np.sort(np.argsort(-score, kind="stable")[:5]))


def test_evit_fuses_the_rest_with_raw_cls_attention():
    (x, attn, _), (x_new, size_new, src) = _run(_stage("evit", keep=0.5))
    k = 10
    assert x_new.shape == (B, P + k + 1, D)
    assert np.all(src[:, -1] == -1)
    for b in range(B):
        a = attn[b].mean(0)[0, P:]
        top = np.sort(np.argsort(-a, kind="stable")[:k])
        np.testing.assert_array_equal(src[b, :-1], top)
        rest = np.setdiff1d(np.arange(N), top)
        np.testing.assert_allclose(x_new[b, -1], (a[rest, None] * x[b, P + rest]).sum(0), atol=1e-5)
        assert size_new[b, -1] == len(rest)


def test_tome_merges_by_size_weighted_mean_and_reports_representatives():
    (x, _, _), (x_new, size_new, src) = _run(_stage("tome", keep=12))
    assert x_new.shape == (B, P + 12, D) and src.shape == (B, 12)
    np.testing.assert_allclose(size_new.sum(1), T_)
    for b in range(B):
        # the published output order: unmerged set-A tokens (even stream positions), then all
        # of set B (odd positions), each ascending
        parity = (src[b] + P) % 2
        n_a = int(np.sum(parity == 0))
        assert np.all(parity[:n_a] == 0) and np.all(parity[n_a:] == 1)
        assert np.all(np.diff(src[b][:n_a]) > 0) and np.all(np.diff(src[b][n_a:]) > 0)
        untouched = size_new[b, P:] == 1
        np.testing.assert_allclose(x_new[b, P:][untouched], x[b, P + src[b][untouched]])
        # a merged row is the mean of its representative (odd position in the full stream) and
        # the tokens merged into it; the representative is one of them
        assert np.all((src[b][~untouched] + P) % 2 == 1)


def test_tome_refuses_more_than_one_bipartite_step():
    with pytest.raises(ValueError, match="at most 10"):
        _run(_stage("tome", keep=5))


def test_merging_plan_reaches_target_in_bipartite_steps():
    plan = PruningPlan.merging(3, 0.1, num_patches=N, num_prefix=P)
    counts = [s.keep for s in plan.stages]
    assert [s.layer for s in plan.stages] == list(range(3, 3 + len(counts)))
    assert counts[-1] == 2 and all(a > b for a, b in zip([N, *counts], counts, strict=False))
    assert plan.uses_size and plan.wants(2) == (False, True)


def test_random_depends_on_key_and_needs_one():
    _, (_, _, a) = _run(_stage("random"), key=jax.random.key(1))
    _, (_, _, b) = _run(_stage("random"), key=jax.random.key(2))
    assert not np.array_equal(a, b)
    x, _attn, _keys, size, ids = _inputs()
    with pytest.raises(ValueError, match="PRNG key"):
        apply_stage(
            _stage("random"), jnp.asarray(x), size=jnp.asarray(size), aux={},
            patch_ids=jnp.asarray(ids), num_prefix=P, grid=GRID, key=None,
        )  # fmt: skip


@pytest.mark.parametrize("method", ["hiprune", "feather"])
def test_grid_methods_need_the_full_grid(method):
    x, attn, _keys, size, ids = _inputs()
    x, size = x[:, :-3], size[:, :-3]
    a = {i: {"attn": jnp.asarray(attn[:, :, :-3, :-3])} for i in (1, 2)}
    with pytest.raises(ValueError, match="full 4x5 patch grid"):
        apply_stage(
            _stage(method), jnp.asarray(x), size=jnp.asarray(size), aux=a,
            patch_ids=jnp.asarray(ids[:, :-3]), num_prefix=P, grid=GRID, key=None,
        )  # fmt: skip


def test_missing_attention_is_reported():
    x, _attn, _keys, size, ids = _inputs()
    with pytest.raises(ValueError, match="needs block 2's attention"):
        apply_stage(
            _stage("topk"), jnp.asarray(x), size=jnp.asarray(size), aux={},
            patch_ids=jnp.asarray(ids), num_prefix=P, grid=GRID, key=None,
        )  # fmt: skip


def test_plan_wants_and_counts():
    plan = PruningPlan(
        (
            PruneStage(layer=5, keep=8, method="hiprune", shallow_layer=3),
            PruneStage(layer=7, keep=0.5, method="evit"),
        )
    )
    assert plan.wants(6) == (True, False)
    assert plan.wants(3) == (True, False) and plan.wants(4) == (True, False)
    assert plan.wants(2) == (False, False) and plan.wants(5) == (False, False)
    assert plan.token_counts(N) == (8, 5)
    assert plan.stage_at(5).method == "hiprune" and plan.stage_at(4) is None
    plan.validate(num_layers=8, num_patches=N)
    with pytest.raises(ValueError, match="has 7 blocks"):
        plan.validate(num_layers=7, num_patches=N)
    assert hash(plan) == hash(PruningPlan(plan.stages))  # static under jit


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer=0, keep=3), "layer must be an int >= 1"),
        (dict(layer=2, keep=0.0), r"ratio must be in \(0, 1\]"),
        (dict(layer=2, keep=1.5), r"ratio must be in \(0, 1\]"),
        (dict(layer=2, keep=0), "count must be >= 1"),
        (dict(layer=2, keep="3"), "keep must be an int or a float"),
        (dict(layer=2, keep=3, method="nope"), "method must be one of"),
        (dict(layer=2, keep=3, shallow_layer=1), "shallow_layer only applies"),
    ],
)
def test_stage_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneStage(**kwargs)


def test_plan_errors():
    with pytest.raises(ValueError, match="strictly increase"):
        PruningPlan((PruneStage(3, 4), PruneStage(3, 2)))
    with pytest.raises(ValueError, match="shallow_layer"):
        PruningPlan((PruneStage(4, 4, "hiprune", shallow_layer=4),))
    with pytest.raises(ValueError, match="must be the first stage"):
        PruningPlan((PruneStage(2, 8), PruneStage(4, 4, "feather")))
    with pytest.raises(ValueError, match="keeps 30 of the 20"):
        PruningPlan.at(2, 30).validate(num_layers=4, num_patches=N)


# ----------------------------------------------------------------------------- through the ViT

from flax import nnx  # noqa: E402

from pruneax import models  # noqa: E402


@pytest.fixture(scope="module")
def vit():
    cfg = models.vit_config(
        "mnist/4", image_size=(16, 20), hidden_size=32, num_layers=4, num_heads=2, mlp_dim=64
    )  # 4x5 patch grid + CLS
    model = models.ViT(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (B, 16, 20, 1))
    return model, x


def _jit_call(model, x, plan, **kw):
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, plan=plan, key=jax.random.key(0), **kw))
    return f(state, x)


def test_keeping_every_token_changes_nothing(vit):
    model, x = vit
    dense = model(x).logits
    for method in ("topk", "divprune", "random"):
        out = _jit_call(model, x, PruningPlan.at(2, 1.0, method))
        np.testing.assert_allclose(out.logits, dense, atol=1e-5)
        np.testing.assert_array_equal(out.kept[0], np.broadcast_to(np.arange(N), (B, N)))


def test_plan_equals_manual_pruning(vit):
    """Block outputs of a dense pass, a hand-made top-k selection, then the remaining blocks."""
    model, x = vit
    layer, k = 2, 7
    out = _jit_call(model, x, PruningPlan.at(layer, k, "topk"))
    dense = model(x, return_attention=True, return_hidden_states=True)
    h = np.asarray(dense.hidden_states[layer])
    a = np.asarray(dense.attentions[layer - 1]).mean(1)[:, 0, P:]  # CLS row, head mean
    keep = np.sort(np.argsort(-a, axis=1, kind="stable")[:, :k], axis=1)
    np.testing.assert_array_equal(out.kept[0], keep)
    t = jnp.asarray(np.concatenate([h[:, :P], np.take_along_axis(h[:, P:], keep[..., None], 1)], 1))
    for blk in list(model.blocks)[layer:]:
        t, _, _ = blk(t)
    logits = model.head(model.norm(t)[:, 0])
    np.testing.assert_allclose(out.logits, logits, atol=1e-5)


def test_two_stages_compose_original_patch_ids(vit):
    model, x = vit
    plan = PruningPlan((PruneStage(1, 12, "topk"), PruneStage(3, 0.5, "evit")))
    out = _jit_call(model, x, plan)
    first, second = np.asarray(out.kept[0]), np.asarray(out.kept[1])
    assert first.shape == (B, 12) and second.shape == (B, 6 + 1)
    assert np.all(second[:, -1] == -1)  # EViT's fused token
    for b in range(B):
        assert set(second[b, :-1]) <= set(first[b])
        assert np.all(np.diff(second[b, :-1]) > 0)
    assert out.hidden.shape == (B, P + 7, 32)


def test_tome_sizes_and_proportional_attention(vit):
    model, x = vit
    plan = PruningPlan.merging(1, 0.3, num_patches=N, num_prefix=P)
    out = _jit_call(model, x, plan, return_attention=True)
    np.testing.assert_allclose(np.asarray(out.sizes).sum(1), P + N)
    assert out.hidden.shape[1] == P + 6
    assert len(out.kept) == len(plan.stages) and np.all(np.asarray(out.kept[-1]) >= 0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_in_the_model(vit, method):
    model, x = vit
    plan = (
        PruningPlan.merging(2, 0.5, num_patches=N, num_prefix=P)
        if method == "tome"
        else PruningPlan.at(2, 0.5, method)
    )
    out = _jit_call(model, x, plan)
    assert out.logits.shape == (B, 10) and np.all(np.isfinite(out.logits))
    kept = np.asarray(out.kept[-1])
    real = kept[kept >= 0].reshape(B, -1) if method != "evit" else kept[:, :-1]
    assert real.shape[1] == 10
    assert np.all((real >= 0) & (real < N))


def test_no_retrace_with_the_same_plan(vit):
    model, x = vit
    graphdef, state = nnx.split(model)
    traces = []

    def f(s, x, plan):
        traces.append(1)
        return nnx.merge(graphdef, s)(x, plan=plan).logits

    g = jax.jit(f, static_argnames="plan")
    g(state, x, PruningPlan.at(2, 5, "topk"))
    g(state, x, PruningPlan.at(2, 5, "topk"))  # an equal (not identical) plan: cache hit
    assert len(traces) == 1
    g(state, x, PruningPlan.at(2, 6, "topk"))
    assert len(traces) == 2


def test_proportional_attention_adds_log_size_to_the_key_logits(vit):
    model, _ = vit
    attn = model.blocks[0].attn
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, 6, 32)).astype(np.float32)
    size = rng.integers(1, 5, size=(B, 6)).astype(np.float32)
    _, probs, keys = attn(jnp.asarray(x), size=jnp.asarray(size), return_attention=True,
                          return_keys=True)  # fmt: skip
    lin = lambda m, v: v @ np.asarray(m.kernel[...]) + np.asarray(m.bias[...])
    heads = lambda v: v.reshape(B, 6, 2, 16).transpose(0, 2, 1, 3)
    q, k = heads(lin(attn.query, x)), heads(lin(attn.key, x))
    logits = q @ k.transpose(0, 1, 3, 2) / 4.0 + np.log(size)[:, None, None, :]
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    np.testing.assert_allclose(keys, k, atol=1e-5)


# ----------------------------------------------------------------------------- the registry


def test_a_selector_registered_at_run_time_runs_in_a_plan(vit):
    """A user's selector (one function + one registry entry) works in a ViT plan, with the
    inputs its entry asks for and its options taken from the stage."""
    from pruneax import tokens as T

    def lowest(k, inp, *, shift):  # the k patches with the LEAST CLS attention
        return T.topk(shift - inp["scores"], k)

    T.register(T.Method("lowest_cls", lowest, {"scores"}, options={"shift": 0.0}))
    try:
        assert METHODS["lowest_cls"] == (True, False) and "lowest_cls" in METHODS
        model, x = vit
        plan = PruningPlan.at(2, 7, "lowest_cls", options={"shift": 1.0})
        assert plan.stages[0].method_options == {"shift": 1.0} and not plan.stages[0].in_block
        out = _jit_call(model, x, plan)
        dense = model(x, return_attention=True)
        a = np.asarray(dense.attentions[1]).mean(1)[:, 0, P:]
        want = np.sort(np.argsort(a, axis=1, kind="stable")[:, :7], axis=1)
        np.testing.assert_array_equal(out.kept[0], want)
        with pytest.raises(ValueError, match="option 'alpha' does not apply"):
            PruneStage(2, 7, "lowest_cls", alpha=0.3)
    finally:
        T.unregister("lowest_cls")
    with pytest.raises(ValueError, match="method must be one of"):
        PruneStage(2, 7, "lowest_cls")


def test_stage_fields_are_registry_options():
    from pruneax import tokens as T

    stage = PruneStage(layer=3, keep=6, method="feather", stride=2)
    assert stage.method_options == {"stride": 2}
    (_x, attn, _), (_, _, src) = _run(stage)
    for b in range(B):
        s = jnp.asarray(attn[b].mean(0)[0, P:])
        np.testing.assert_array_equal(src[b], np.asarray(T.feather(s, 6, grid=GRID, stride=2)))
    with pytest.raises(ValueError, match="option 'stride' does not apply to method 'topk'"):
        PruneStage(layer=3, keep=6, stride=2)
    with pytest.raises(ValueError, match="placement must be one of"):
        PruneStage(layer=3, keep=6, placement="after_mlp")
