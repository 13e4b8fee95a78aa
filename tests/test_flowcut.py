"""FlowCut (``pruneax.tokens.flowcut_*``, ``PruningPlan.flowcut``) against NumPy transcriptions
of the published code (TungChintao/FlowCut @ a2ecd247).

The oracles below are written from ``flowcut/utils_flowcut.py`` (``compute_score``,
``adaptive_prune_ratio``) and ``flowcut/modeling_clip_flowcut.py`` (``CLIPAttention_forward``,
``CLIPEncoderLayer_forward``, ``CLIPEncoder_forward``): a CLIP-style pre-norm encoder whose
sequence really shrinks at each pruning block, batched as published (one amount per batch, the
largest). pruneax keeps the token array and masks dead tokens out of the attention instead;
the tests check that it selects the same patches at every block, per example and batched, and
that its hidden states equal the blocks run on the shortened sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pruneax.models as M
import pruneax.tokens as T
from pruneax.models.vit import FlowCutStage, PruneStage, PruningPlan
from tests._models import random_model, vit_block_weights

F32 = np.float32

# --------------------------------------------------------------------------------------------
# NumPy oracle of the published code
# --------------------------------------------------------------------------------------------


def np_softmax(z, axis=-1):
    z = np.asarray(z, F32)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(F32)


def np_compute_score(cls_attn, semantic_attn, value):
    """``compute_score``: [B, N], [B, N], [B, N, dh] -> [B, N]."""
    rel = cls_attn / cls_attn.sum(-1, keepdims=True)
    sem = semantic_attn / semantic_attn.sum(-1, keepdims=True)
    return ((rel + sem) * np.abs(value).sum(-1)).astype(F32)


def np_adaptive_raw(attn, rpl, target_num):
    """``adaptive_prune_ratio`` before the batch max and the rounding: float32 [B]."""
    n = attn.shape[-1]
    prob = (attn / attn.sum(-1, keepdims=True)).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(prob * np.log(prob)).sum(-1)
    ratio = entropy / np.log(F32(n))
    return F32((n - target_num) / rpl**0.5) * (1 - ratio**2)


def np_adaptive_prune_ratio(attn, rpl, target_num):
    """``adaptive_prune_ratio``: one int for the batch (the max over it), half to even."""
    return int(np.round(np_adaptive_raw(attn, rpl, target_num).max()))


def np_block_scores(probs, values):
    """What a published block hands to the FlowCut branch: (score [B, N], CLS attention
    [B, N]) from probs [B, H, T, T] and value states [B, H, T, dh]."""
    cls_attention = probs[:, :, 0, 1:].mean(1)
    semantic = np_softmax(np.einsum("bhd,bhtd->bht", values[:, :, 0], values)).mean(1)
    vm = values.mean(1)
    return np_compute_score(cls_attention, semantic[:, 1:], vm[:, 1:]), cls_attention


def _ln(x, w, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[0] + w[1]


def np_published_encoder(emb, blocks, target, select_layer, eps, trace=None):
    """``CLIPEncoder_forward`` with FlowCut on a batch emb [B, T, D] (quick_gelu MLP).

    Returns ``(x, keeps)``: the final hidden states [B, T', D] and, after every block, the kept
    patch indices [B, n_i] (original numbering). ``trace["margins"]`` collects the distance of
    every rounded amount to a rounding boundary and every top-k gap.
    """
    x = np.asarray(emb, F32)
    b = x.shape[0]
    keep = np.broadcast_to(np.arange(x.shape[1] - 1), (b, x.shape[1] - 1))
    cum, keeps = None, []
    for idx, w in enumerate(blocks):
        rpl = select_layer - idx - 1
        t, heads = x.shape[1], w["heads"]
        h = _ln(x, w["norm1"], eps)
        q, k, v = (
            (h @ w[n][0] + w[n][1]).reshape(b, t, heads, -1).transpose(0, 2, 1, 3)
            for n in ("q", "k", "v")
        )
        probs = np_softmax(q @ k.transpose(0, 1, 3, 2) * q.shape[-1] ** -0.5)
        o = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
        x = x + o @ w["out"][0] + w["out"][1]
        m = _ln(x, w["norm2"], eps) @ w["fc1"][0] + w["fc1"][1]
        x = x + (m / (1 + np.exp(-1.702 * m))) @ w["fc2"][0] + w["fc2"][1]
        if x.shape[1] > target:
            scores, cls_attention = np_block_scores(probs, v)
            cum = scores if cum is None else 0.5 * cum + 0.5 * scores
            if rpl % 2 == 0:
                if rpl:
                    raw = np_adaptive_raw(cls_attention, rpl, target - 1).max()
                    if trace is not None:
                        trace.setdefault("margins", []).append(abs(abs(raw % 1) - 0.5))
                    prune = np_adaptive_prune_ratio(cls_attention, rpl, target - 1)
                else:
                    prune = x.shape[1]
                target_num = max(x.shape[1] - prune, target)
                order = np.argsort(-cum, axis=1, kind="stable")
                if trace is not None and target_num - 1 < cum.shape[1]:
                    srt = np.take_along_axis(cum, order, 1)
                    gap = srt[:, target_num - 2] - srt[:, target_num - 1]
                    trace.setdefault("margins", []).append(float(gap.min()))
                ki = np.sort(order[:, : target_num - 1], axis=1)
                x = np.concatenate([x[:, :1], np.take_along_axis(x[:, 1:], ki[..., None], 1)], 1)
                cum = np.take_along_axis(cum, ki, 1)
                keep = np.take_along_axis(keep, ki, 1)
        keeps.append(keep)
    return x, keeps


# --------------------------------------------------------------------------------------------
# (a) the per-block score and the adaptive amount
# --------------------------------------------------------------------------------------------


def _block_inputs(rng, h, t, dh, temp=3.0):
    attn = np_softmax(temp * rng.standard_normal((h, t, t)))
    values = rng.standard_normal((h, t, dh)).astype(F32)
    return attn, values


@pytest.mark.parametrize(
    ("h", "t", "dh"), [(1, 2, 1), (2, 5, 3), (4, 17, 8), (3, 50, 16), (16, 577, 64)]
)
def test_scores_match_compute_score(h, t, dh):
    for seed in range(3 if t > 100 else 10):
        rng = np.random.default_rng(seed)
        attn, values = _block_inputs(rng, h, t, dh, temp=rng.uniform(0.5, 5.0))
        want, _ = np_block_scores(attn[None], values[None])
        got = T.flowcut_scores(attn, values)
        np.testing.assert_allclose(np.asarray(got), want[0], rtol=2e-5, atol=1e-7)
        row = T.flowcut_scores(attn[:, 0], values)  # the CLS row alone gives the same
        np.testing.assert_array_equal(np.asarray(row), np.asarray(got))


def test_scores_with_dead_patches_equal_the_shortened_sequence():
    """Dead patches (masked keys): the scores of the alive ones equal those of the published
    block run on CLS + the alive patches only."""
    rng = np.random.default_rng(0)
    h, t, dh = 3, 12, 5
    logits = 2 * rng.standard_normal((h, t, t)).astype(F32)
    values = rng.standard_normal((h, t, dh)).astype(F32)
    alive = rng.random(t - 1) < 0.6
    keys = np.concatenate([[True], alive])
    masked = np_softmax(np.where(keys, logits, -np.inf))
    got = np.asarray(T.flowcut_scores(masked, values, alive))
    short = np_softmax(logits[:, keys][:, :, keys])
    want, _ = np_block_scores(short[None], values[:, keys][None])
    np.testing.assert_allclose(got[alive], want[0], rtol=2e-5)
    assert (got[~alive] == 0).all()


@pytest.mark.parametrize("rpl", [1, 2, 4, 20])
def test_prune_count_matches_adaptive_prune_ratio(rpl):
    """Random [CLS] attentions over n <= 600 patches (padded with dead zeros to one shape, n
    traced), a few budgets; exact unless float32 sums may round the other way."""
    rng = np.random.default_rng(rpl)
    fn = jax.jit(jax.vmap(T.flowcut_prune_count, in_axes=(0, 0, None, None)), static_argnums=(2, 3))
    exact = 0
    for k in (1, 16, 100):
        ns = rng.integers(k + 1, 601, size=25)
        rels = np.zeros((25, 600), F32)
        for i, n in enumerate(ns):
            scale = rng.uniform(0.1, 8.0)
            rels[i, :n] = np_softmax(scale * rng.standard_normal(n)) * rng.uniform(0.2, 1)
        got = np.asarray(fn(rels, ns.astype(np.int32), k, rpl))
        for i, n in enumerate(ns):
            raw = float(np_adaptive_raw(rels[None, i, :n], rpl, k)[0])
            want = np_adaptive_prune_ratio(rels[None, i, :n], rpl, k)
            if abs(abs(raw % 1) - 0.5) > 1e-3:
                assert got[i] == want, (n, k, rpl, raw)
                exact += 1
            else:
                assert abs(got[i] - want) <= 1
    assert exact >= 70


def test_prune_count_batch_max_and_padding():
    """Per example, padded with dead zeros (traced n), and the published batch max."""
    rng = np.random.default_rng(1)
    rels = np.stack([np_softmax(s * rng.standard_normal(40)) for s in (0.3, 3.0, 6.0)])
    per = [int(T.flowcut_prune_count(r, 40, 8, 4)) for r in rels]
    assert len(set(per)) == 3  # different adaptive amounts per example
    assert max(per) == np_adaptive_prune_ratio(rels, 4, 8)
    padded = np.concatenate([rels, np.zeros((3, 9), F32)], 1)
    fn = jax.vmap(lambda r: T.flowcut_prune_count(r, jnp.int32(40), 8, 4))
    assert np.asarray(fn(padded)).tolist() == per
    assert int(T.flowcut_prune_count(rels[0], 40, 8, 0)) == 32  # rpl 0: all above k


# --------------------------------------------------------------------------------------------
# (b) the whole schedule against the published encoder loop on a tiny random CLIP-style ViT
# --------------------------------------------------------------------------------------------

CFG = M.ViTConfig(
    image_size=24, patch_size=4, num_channels=3, hidden_size=32, num_layers=8, num_heads=4,
    mlp_dim=64, num_classes=5, pre_norm=True, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
N = CFG.num_patches  # 36


def _np(a):
    return np.asarray(a, F32)


@pytest.fixture(scope="module")
def clip():
    model = random_model(M.ViT, CFG, 0, 0.35)
    x = jax.random.normal(jax.random.key(1), (4, *CFG.image_hw, CFG.num_channels))
    emb = _np(model.pre_norm(model.embed(x)))
    run = nnx.jit(
        lambda m, x, plan: m(x, plan=plan, return_hidden_states=True), static_argnames="plan"
    )
    return model, x, emb, vit_block_weights(model), run


def _alive_sets(kept):
    return [[sorted(int(i) for i in row if i >= 0) for row in np.asarray(k)] for k in kept]


@pytest.mark.parametrize(
    ("k", "select_layer"),
    [(6, 6), pytest.param(9, 5, marks=pytest.mark.slow), pytest.param(1, 6, marks=pytest.mark.slow),
     pytest.param(20, 3, marks=pytest.mark.slow)],
)  # fmt: skip
def test_vit_selects_the_published_patches_per_example(clip, k, select_layer):
    model, x, emb, blocks, run = clip
    plan = PruningPlan.flowcut(k, num_layers=CFG.num_layers, select_layer=select_layer)
    out = run(model, x, plan)
    got = _alive_sets(out.kept)
    counts = set()
    for b in range(x.shape[0]):
        trace = {}
        _, keeps = np_published_encoder(emb[b : b + 1], blocks, k + 1, select_layer, 1e-5, trace)
        assert min(trace["margins"]) > 2e-6  # no near-tie: the comparison is meaningful
        for i in range(select_layer):
            assert got[i][b] == keeps[i][0].tolist(), (b, i)
        counts.add(tuple(len(kk[0]) for kk in keeps))
        assert np.asarray(out.kept[-1][b]).tolist() == keeps[-1][0].tolist()
    assert out.kept[-1].dtype == jnp.int32 and out.kept[-1].shape == (x.shape[0], k)
    if (k, select_layer) == (6, 6):
        assert len(counts) > 1, counts  # the examples prune different amounts


def test_vit_batch_max_matches_the_published_batch(clip):
    model, x, emb, blocks, run = clip
    plan = PruningPlan.flowcut(6, num_layers=CFG.num_layers, batch_count="max")
    out = run(model, x, plan)
    _, keeps = np_published_encoder(emb, blocks, 7, 6, 1e-5)
    got = _alive_sets(out.kept)
    for i in range(6):
        assert got[i] == keeps[i].tolist(), i


# --------------------------------------------------------------------------------------------
# (c) the masked model equals the blocks run on the shortened sequences
# --------------------------------------------------------------------------------------------


def test_vit_equals_hand_run_shortened_pipeline(clip):
    """Dense pruneax blocks on the really shortened sequence, with the oracle's selections
    gathered in between, give the plan's hidden states (the alive rows) and logits to 1e-5."""
    model, x, emb, blocks, run = clip
    k, s = 6, 6
    out = run(model, x, PruningPlan.flowcut(k, num_layers=CFG.num_layers, select_layer=s))

    def close(got, want):  # 1e-5 of the stream's scale (its entries reach ~15 here)
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())

    for b in range(2):
        _, keeps = np_published_encoder(emb[b : b + 1], blocks, k + 1, s, 1e-5)
        h = jnp.asarray(emb[b : b + 1])
        current = np.arange(N)
        for i, blk in enumerate(model.blocks):
            h = blk(h)[0]
            full = np.asarray(out.hidden_states[i + 1][b])  # block i's output, before stage i+1
            if i >= s:  # after the last stage the plan's array is short too
                close(full, np.asarray(h[0]))
            else:  # the alive rows of the masked array equal the short sequence
                close(full[np.r_[0, 1 + current]], np.asarray(h[0]))
            if i < s and len(keeps[i][0]) < len(current):
                pos = np.searchsorted(current, keeps[i][0])
                h = jnp.concatenate([h[:, :1], h[:, 1 + pos]], axis=1)
                current = keeps[i][0]
        logits = model.head(model.norm(h)[:, 0])
        close(np.asarray(out.logits[b]), np.asarray(logits[0]))


def _masked_forward(model, emb, k, s):
    """Hand-run masked pipeline on one example: pruneax blocks with dead keys masked
    (size 0), ``flowcut_step`` after each scoring block; records attention and values."""
    h = jnp.asarray(emb)[None]
    alive, cum, attns, vals = jnp.ones((N,), bool), None, [], []
    for i in range(s):
        blk = model.blocks[i]
        size = jnp.concatenate([jnp.ones((1,)), alive.astype(jnp.float32)])[None]
        v = blk.value_states(h)
        h, probs, _ = blk.attend(h, size=size, return_attention=True)
        h = blk.feed_forward(h)
        alive, cum = T.flowcut_step(probs[0], v[0], alive, cum, k, s - 1 - i)
        attns.append(probs[0])
        vals.append(v[0])
    return jnp.flatnonzero(alive), jnp.stack(attns), jnp.stack(vals)


def test_select_on_recorded_tensors_equals_the_step_loop_and_the_vit(clip):
    model, x, emb, _, run = clip
    k, s = 6, 6
    out = run(model, x, PruningPlan.flowcut(k, num_layers=CFG.num_layers, select_layer=s))
    for b in range(1):
        idx, attns, vals = _masked_forward(model, emb[b], k, s)
        got, alive = T.flowcut_select(attns, vals, k)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(idx))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(out.kept[-1][b]))
        assert alive.shape == (s, N) and int(alive[-1].sum()) == k


# --------------------------------------------------------------------------------------------
# (d) properties and errors
# --------------------------------------------------------------------------------------------


def _random_layers(seed, s=3, h=2, t=21, dh=4, temp=4.0):
    rng = np.random.default_rng(seed)
    attns = np_softmax(temp * rng.standard_normal((s, h, t, t)))
    values = rng.standard_normal((s, h, t, dh)).astype(F32)
    return attns, values


@pytest.mark.parametrize("k", [1, 10, 20])
def test_select_contract(k):
    for seed in range(4):
        idx, alive = T.flowcut_select(*_random_layers(seed), k)
        idx = np.asarray(idx)
        assert idx.dtype == np.int32 and idx.shape == (k,)
        assert (np.diff(idx) > 0).all() and idx.min() >= 0 and idx.max() < 20
        a = np.asarray(alive)
        assert (a[1:] <= a[:-1]).all()  # a dead patch never comes back
        assert np.flatnonzero(a[-1]).tolist() == idx.tolist()


def test_bfloat16_equals_upcast_float32():
    attns, values = _random_layers(3)
    a16, v16 = jnp.asarray(attns, jnp.bfloat16), jnp.asarray(values, jnp.bfloat16)
    a32, v32 = a16.astype(jnp.float32), v16.astype(jnp.float32)
    np.testing.assert_array_equal(
        T.flowcut_select(a16, v16, 4)[0], T.flowcut_select(a32, v32, 4)[0]
    )
    np.testing.assert_array_equal(
        T.flowcut_scores(a16[0], v16[0]), T.flowcut_scores(a32[0], v32[0])
    )
    assert T.flowcut_scores(a16[0], v16[0]).dtype == jnp.float32


def test_vmap_equals_loop():
    batch = [_random_layers(seed) for seed in range(3)]
    attns = np.stack([a for a, _ in batch])
    values = np.stack([v for _, v in batch])
    got, _ = jax.vmap(lambda a, v: T.flowcut_select(a, v, 4))(attns, values)
    for b in range(3):
        np.testing.assert_array_equal(got[b], T.flowcut_select(attns[b], values[b], 4)[0])
    scores = jax.vmap(T.flowcut_scores)(attns[:, 0], values[:, 0])
    for b in range(3):
        np.testing.assert_array_equal(scores[b], T.flowcut_scores(attns[b, 0], values[b, 0]))


def test_no_retrace_on_second_call(compile_counter):
    first, second = _random_layers(0), _random_layers(1)
    alive = jnp.ones((20,), bool)
    jax.block_until_ready(T.flowcut_select(*first, 4))
    jax.block_until_ready(T.flowcut_step(first[0][0], first[1][0], alive, None, 4, 2))
    jax.block_until_ready(T.flowcut_prune_count(first[0][0, 0, 0, 1:], 20, 4, 2))
    with compile_counter() as cc:
        jax.block_until_ready(T.flowcut_select(*second, 4))
        jax.block_until_ready(T.flowcut_step(second[0][0], second[1][0], alive, None, 4, 2))
        jax.block_until_ready(T.flowcut_prune_count(second[0][0, 0, 0, 1:], 20, 4, 2))
    assert cc.count == 0, cc.messages


def test_bad_inputs_name_the_argument():
    a, v = _random_layers(0)
    alive = jnp.ones((20,), bool)
    cases = [
        (lambda: T.flowcut_select(a, v, 0), "k"),
        (lambda: T.flowcut_select(a, v, 21), "k"),
        (lambda: T.flowcut_select(a, v, 2.0), "k"),
        (lambda: T.flowcut_select(a[0], v, 2), "values"),
        (lambda: T.flowcut_select(a, v[:2], 2), "same number of blocks"),
        (lambda: T.flowcut_select(a[:, :1], v, 2), "heads"),
        (lambda: T.flowcut_select(a[:, :, :-1, :-1], v, 2), "tokens"),
        (lambda: T.flowcut_scores(a[0, 0, 0], v[0]), "attn"),
        (lambda: T.flowcut_scores(a[0], v[0, 0]), "values"),
        (lambda: T.flowcut_scores(a[0, :, :, :-1], v[0]), "attn"),
        (lambda: T.flowcut_scores(a[0], v[0], jnp.ones(3, bool)), "alive"),
        (lambda: T.flowcut_step(a[0], v[0], alive, jnp.ones(3), 2, 1), "cum"),
        (lambda: T.flowcut_step(a[0], v[0], alive, None, 2, -1), "rpl"),
        (lambda: T.flowcut_step(a[0], v[0], alive, None, 2, 1, jnp.ones(2)), "count"),
        (lambda: T.flowcut_prune_count(a[0, 0], 20, 2, 1), "rel"),
        (lambda: T.flowcut_prune_count(a[0, 0, 0], 22, 2, 1), "n"),
        (lambda: T.flowcut_prune_count(a[0, 0, 0], 5, 0, 1), "k"),
    ]
    for call, word in cases:
        with pytest.raises(ValueError, match=word):
            call()


def test_plan_construction_and_validation():
    plan = PruningPlan.flowcut(8, num_layers=24)
    assert [s.layer for s in plan.stages] == list(range(1, 23))
    assert [s.rpl for s in plan.stages][:3] == [21, 20, 19] and plan.stages[-1].final
    assert plan.token_counts(576) == (576,) * 21 + (8,)
    tokens = plan.block_tokens(24, 576)  # no saving is claimed before block 22
    assert tokens[:22] == ((576, 576),) * 22 and tokens[22:] == ((8, 8),) * 2
    assert plan.wants_values(21) and not plan.wants_values(22) and plan.cls_row_only(0)
    assert hash(plan) == hash(PruningPlan.flowcut(8, num_layers=24))
    with pytest.raises(ValueError, match="select_layer"):
        PruningPlan.flowcut(8, num_layers=24, select_layer=24)
    with pytest.raises(ValueError, match="batch_count"):
        PruningPlan.flowcut(8, num_layers=24, batch_count="min")
    with pytest.raises(ValueError, match="keep"):
        PruningPlan.flowcut(0, num_layers=24)
    with pytest.raises(ValueError, match="FlowCut stages"):
        PruningPlan(plan.stages[1:])
    with pytest.raises(ValueError, match="FlowCut stages"):
        PruningPlan((*plan.stages[:3], PruneStage(layer=4, keep=8), *plan.stages[4:]))
    with pytest.raises(ValueError, match="keeps 600"):
        plan.validate(24, 576) or PruningPlan.flowcut(600, num_layers=24).validate(24, 576)


def test_stage_needs_one_cls_prefix_and_the_carry():
    stage = FlowCutStage(layer=2, keep=4, select_layer=3)
    aux = {1: {"cls_attn": jnp.ones((1, 4, N + 1)), "values": jnp.ones((1, 4, N + 1, 8))}}
    kw = dict(size=jnp.ones((1, N + 1)), aux=aux, patch_ids=None, grid=CFG.grid, key=None)
    x = jnp.zeros((1, N + 1, 32))
    with pytest.raises(ValueError, match="one prefix token"):
        stage.apply(x, num_prefix=2, **kw)
    with pytest.raises(ValueError, match="cumulative scores"):
        stage.apply(x, num_prefix=1, **kw)
    with pytest.raises(ValueError, match="value states"):
        stage.apply(x, num_prefix=1, **{**kw, "aux": {}})
