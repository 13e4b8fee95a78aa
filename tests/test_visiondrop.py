"""VisionDrop's LLM stages (``pruneax.models.llama.VisionDropSpec``) against a NumPy
transcription of the published ``visiondrop_rank_drop`` (Ruixxxx/VisionDrop@b9d5df9).

Oracle: the blocks run by hand in JAX on plain causal attention; at the input of each pruning
layer the hidden states go to NumPy (float64), where the published stage is written out: block
L + 1's RMSNorm, q / k projections (biases) and RoPE at the current positions, every image
query over every key with the causal mask, softmax, head mean, image keys, image-query mean;
the top ``d`` (stable order); the rest merged into ``c`` contextual tokens (targets every
``R // c``-th, cosine argmax on the post-RoPE keys averaged over KV heads, target + mean of
its members); the span rebuilt as ``[dominant, contextual]`` and the positions renumbered
0..len-1. Cached prefill + decode, ``generate_greedy`` and left padding are checked against
that same oracle. Models are filled from NumPy as in test_llm.py (no random initialisers).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models.llama import (
    FastVSpec,
    LlamaLM,
    VisionDropSpec,
    generate_greedy,
    init_cache,
    llm_config,
    rope_inv_freq,
    visiondrop_scores,
)
from tests.test_llm import materialize

CFG = llm_config("tiny", vocab_size=96, attention_bias=True)  # 4 layers, H=4, KV=2, hd=16
T_PROMPT = 26
START, STOP = 3, 21  # 18 image tokens
SPEC = VisionDropSpec(START, STOP, layers=(1, 3), tokens=((8, 3), (4, 2)))  # 18 -> 11 -> 6


@pytest.fixture(scope="module")
def model() -> LlamaLM:
    return materialize(CFG, seed=5)


def ids_of(shape=(2, T_PROMPT), seed=1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, shape), jnp.int32)


@functools.partial(nnx.jit, static_argnames=("prune",))
def forward(model, ids, cache=None, mask=None, prune=None):
    return model(ids, cache=cache, attention_mask=mask, prune=prune)


# ------------------------------------------------------------------------------ NumPy oracle


def _p(v) -> np.ndarray:
    return np.asarray(v[...], np.float64)


def numpy_rope(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """x [T, heads, hd] rotated at positions [T] (rotate-half layout)."""
    inv = np.asarray(rope_inv_freq(CFG), np.float64)
    ang = positions[:, None].astype(np.float64) * inv[None]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def numpy_stage(model, layer, h, positions, valid, start, n, d, c):
    """One published stage on ONE row: h [T, D] entering ``layer`` (0-based: block L + 1),
    positions [T], valid [T]. Returns (scores [n], dominant [d], targets [c], span [d + c, D])."""
    blk = model.layers[layer]
    normed = h / np.sqrt(np.mean(h**2, axis=-1, keepdims=True) + CFG.rms_norm_eps)
    normed = normed * _p(blk.input_layernorm.scale)
    att = blk.self_attn
    t, hd = h.shape[0], CFG.head_dim
    q = (normed @ _p(att.q_proj.kernel) + _p(att.q_proj.bias)).reshape(t, CFG.num_heads, hd)
    k = (normed @ _p(att.k_proj.kernel) + _p(att.k_proj.bias)).reshape(t, CFG.num_kv_heads, hd)
    q, k = numpy_rope(q, positions), numpy_rope(k, positions)
    img = np.arange(start, start + n)
    probs = np.zeros((n, t))
    for head in range(CFG.num_heads):
        logits = q[img, head] @ k[:, head // CFG.num_groups].T / np.sqrt(hd)  # [n, T]
        allowed = (np.arange(t)[None] <= img[:, None]) & valid[None]
        logits = np.where(allowed, logits, -np.inf)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs += e / e.sum(axis=1, keepdims=True)
    scores = (probs / CFG.num_heads)[:, img].mean(axis=0)
    order = np.argsort(-scores, kind="stable")
    assert scores[order[d - 1]] - scores[order[d]] > 1e-6, "near tie at the dominant cut"
    dom = np.sort(order[:d])
    x = h[img]
    span = [x[dom]]
    targets = np.zeros(0, int)
    if c:
        rest = np.setdiff1d(np.arange(n), dom)
        metric = k[img].mean(axis=1)[rest]
        metric = metric / np.linalg.norm(metric, axis=1, keepdims=True)
        step = max(1, len(rest) // c)
        t_pos = np.arange(0, len(rest), step)[:c]
        o_pos = np.setdiff1d(np.arange(len(rest)), t_pos)
        sim = metric[o_pos] @ metric[t_pos].T
        best = np.sort(sim, axis=1)
        if c > 1:
            assert np.all(best[:, -1] - best[:, -2] > 1e-6), "near tie in the assignment"
        assign = np.argmax(sim, axis=1)
        merged = []
        for j in range(c):
            members = x[rest][o_pos[assign == j]]
            extra = members.mean(axis=0) if len(members) else 0.0
            merged.append(x[rest][t_pos[j]] + extra)
        span.append(np.stack(merged))
        targets = rest[t_pos]
    return scores, dom, targets, np.concatenate(span)


def oracle(model, ids, spec, mask=None):
    """The hand-run pipeline: blocks in JAX (causal, padding keys masked), each stage in NumPy
    per row. Returns (logits [B, T', V], kept [B, T'] call indices, {layer: scores [B, n]})."""
    b, t = ids.shape
    valid = np.ones((b, t), bool) if mask is None else np.asarray(mask, bool)
    x = np.asarray(model.embed(ids), np.float64)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    kept = np.broadcast_to(np.arange(t), (b, t)).copy()
    n, all_scores = spec.num_image, {}
    for i, block in enumerate(model.layers):
        if i in spec.layers:
            s = spec.layers.index(i)
            d, c = spec.tokens[s]
            rows = [
                numpy_stage(model, i, x[r], positions[r], valid[r], spec.start, n, d, c)
                for r in range(b)
            ]
            all_scores[i] = np.stack([row[0] for row in rows])
            a, z = spec.start, spec.start + n
            new_x, new_kept, new_valid = [], [], []
            for r, (_, dom, targets, span) in enumerate(rows):
                order = np.concatenate(
                    [np.arange(a), a + dom, a + targets, np.arange(z, x.shape[1])]
                )
                new_x.append(np.concatenate([x[r, :a], span, x[r, z:]]))
                new_kept.append(kept[r, order])
                new_valid.append(valid[r, order])
            x, kept, valid = np.stack(new_x), np.stack(new_kept), np.stack(new_valid)
            positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
            n = d + c
        xj = jnp.asarray(x, jnp.float32)
        cos, sin = model.rope(jnp.asarray(positions, jnp.int32))
        tt = x.shape[1]
        m = jnp.tril(jnp.ones((tt, tt), bool))[None] & jnp.asarray(valid)[:, None, :]
        out, _, _ = block(xj, cos, sin, m)
        x = np.asarray(out, np.float64)
    logits = model.head(model.norm(jnp.asarray(x, jnp.float32)))
    return np.asarray(logits), kept, all_scores


# ------------------------------------------------------------------------------ tests


def test_spec_budgets_and_tokens_per_layer():
    assert SPEC.num_kept == (11, 6)
    assert SPEC.tokens_per_layer(4, T_PROMPT) == (26, 19, 19, 14)
    published = VisionDropSpec(35, 83, layers=(8, 16, 24), tokens=((30, 5), (22, 4), (16, 3)))
    assert published.num_kept == (35, 26, 19)  # 48 tokens in (42 + 6), the README's schedule
    assert VisionDropSpec(0, 4, layers=[1], tokens=[[2, 0]]).tokens == ((2, 0),)


def test_with_budget_reproduces_the_published_schedule_and_fits_any_depth():
    spec = VisionDropSpec.with_budget(35, 83, 19, 32)  # LLaVA-1.5-7B, 48 tokens in, 32 layers
    assert spec.layers == (8, 16, 24) and spec.tokens == ((30, 5), (22, 4), (16, 3))
    for n, keep, layers in ((16, 4, 3), (16, 15, 8), (2, 1, 8), (64, 7, 4), (576, 64, 32)):
        spec = VisionDropSpec.with_budget(1, 1 + n, keep, layers)
        assert spec.num_kept[-1] == keep and spec.layers[-1] < layers
        assert all(a > b for a, b in zip((n, *spec.num_kept), spec.num_kept, strict=False))
    for kw, match in (
        (dict(keep=0, num_layers=4), "keep must be an int in \\[1, 17\\]"),
        (dict(keep=18, num_layers=4), "keep must be an int in"),
        (dict(keep=4, num_layers=1), "num_layers must be an int >= 2"),
        (dict(keep=4, num_layers=4, num_stages=0), "num_stages must be an int >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            VisionDropSpec.with_budget(3, 21, **kw)


def test_scores_equal_numpy_and_shapes(model):
    ids = ids_of(seed=2)
    x = model.embed(ids)
    pos = jnp.broadcast_to(jnp.arange(T_PROMPT), (2, T_PROMPT))
    valid = jnp.ones((2, T_PROMPT), bool)
    scores, metric = visiondrop_scores(model.layers[1], x, pos, valid, START, STOP)
    assert scores.shape == (2, 18) and metric.shape == (2, 18, CFG.head_dim)
    for r in range(2):
        want, *_ = numpy_stage(
            model, 1, np.asarray(x[r], np.float64), np.arange(T_PROMPT), np.ones(T_PROMPT, bool),
            START, 18, 8, 0,
        )  # fmt: skip
        np.testing.assert_allclose(scores[r], want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(scores[r].sum()) <= 1.0, True)


@pytest.mark.parametrize("seed", [1, 4])
def test_forward_equals_hand_run_pipeline(model, seed):
    ids = ids_of(seed=seed)
    out = forward(model, ids, prune=SPEC)
    logits, kept, scores = oracle(model, ids, SPEC)
    np.testing.assert_array_equal(out.kept, kept)
    for layer in SPEC.layers:
        np.testing.assert_allclose(out.prune_info[f"scores_{layer}"], scores[layer], rtol=1e-4)
    np.testing.assert_allclose(out.logits, logits, atol=1e-4)
    np.testing.assert_array_equal(out.positions, np.broadcast_to(np.arange(14), (2, 14)))


def test_no_contextual_tokens_is_plain_dropping_with_renumbering(model):
    spec = VisionDropSpec(START, STOP, layers=(2,), tokens=((5, 0),))
    ids = ids_of(seed=9)
    out = forward(model, ids, prune=spec)
    logits, kept, _ = oracle(model, ids, spec)
    np.testing.assert_array_equal(out.kept, kept)
    np.testing.assert_allclose(out.logits, logits, atol=1e-4)
    assert np.all(np.diff(np.asarray(out.kept), axis=1) > 0)  # no contextual: ascending


def test_left_padding_equals_the_unpadded_row(model):
    pad = 2
    ids = ids_of(seed=6)
    mask = np.ones((2, T_PROMPT), bool)
    mask[1, :pad] = False
    out = forward(model, ids, mask=jnp.asarray(mask), prune=SPEC)
    logits, kept, _ = oracle(model, ids, SPEC, mask=mask)
    np.testing.assert_allclose(out.logits[:, -1], logits[:, -1], atol=1e-4)
    np.testing.assert_array_equal(out.kept, kept)
    # row 1 alone, without the padding, the image span shifted by the pad
    spec = VisionDropSpec(START - pad, STOP - pad, layers=SPEC.layers, tokens=SPEC.tokens)
    alone = forward(model, ids[1:, pad:], prune=spec)
    np.testing.assert_allclose(out.logits[1, -1], alone.logits[0, -1], atol=1e-4)
    np.testing.assert_allclose(
        out.prune_info["scores_1"][1], alone.prune_info["scores_1"][0], rtol=1e-4
    )
    np.testing.assert_array_equal(out.positions[1, -1], alone.positions[0, -1])


def test_cache_prefill_and_decode_continue_each_layers_numbering(model):
    ids, n_new = ids_of(seed=3), 4
    cache = init_cache(CFG, 2, T_PROMPT + n_new, prune=SPEC)
    assert cache.sizes == (30, 23, 23, 18)
    out = forward(model, ids, cache=cache, prune=SPEC)
    np.testing.assert_allclose(out.logits, forward(model, ids, prune=SPEC).logits, atol=1e-5)
    cache = out.cache
    np.testing.assert_array_equal(cache.lengths, [26, 19, 19, 14])
    np.testing.assert_array_equal(
        cache.positions[3][:, :14], np.broadcast_to(np.arange(14), (2, 14))
    )
    new_tokens = ids_of((2, n_new), seed=12)
    steps = []
    for step in range(n_new):
        o = forward(model, new_tokens[:, step : step + 1], cache=cache)
        cache = o.cache
        np.testing.assert_array_equal(cache.next_position, T_PROMPT + step + 1)  # layer 0's
        np.testing.assert_array_equal(o.positions[:, 0], 14 + step)  # the last layer's
        steps.append(o.logits[:, 0])
    np.testing.assert_array_equal(cache.positions[1][:, 19:23], np.tile(np.arange(19, 23), (2, 1)))
    seq = jnp.concatenate([ids, new_tokens], axis=1)
    want, _, _ = oracle(model, seq, SPEC)  # causal: the image queries never see the new tokens
    np.testing.assert_allclose(np.stack(steps, axis=1), want[:, -n_new:], atol=1e-4)


@pytest.mark.slow  # ~100 s; prefill + cached decode vs the oracle is checked by the test above
def test_generate_greedy_equals_the_oracle(model):
    ids, n_new = ids_of(seed=8), 4
    gen = generate_greedy(model, ids, n_new, prune=SPEC)
    buf = np.asarray(ids)
    for step in range(n_new):
        logits, _, _ = oracle(model, jnp.asarray(buf), SPEC)
        tok = logits[:, -1].argmax(-1)
        np.testing.assert_array_equal(gen.tokens[:, step], tok)
        buf = np.concatenate([buf, tok[:, None].astype(np.int32)], axis=1)


def test_existing_specs_keep_original_positions_in_decode(model):
    """The per-layer numbering rule leaves specs that do not renumber unchanged (FastV)."""
    ids = ids_of(seed=4)
    spec = FastVSpec(start=START, stop=STOP, layer=2)
    cache = init_cache(CFG, 2, T_PROMPT + 1, prune=spec)
    cache = forward(model, ids, cache=cache, prune=spec).cache
    o = forward(model, ids_of((2, 1), seed=5), cache=cache)
    np.testing.assert_array_equal(o.positions[:, 0], T_PROMPT)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(layers=(2, 1), tokens=((4, 1), (2, 1))), "strictly increasing ints >= 1"),
        (dict(layers=(0,), tokens=((4, 1),)), "strictly increasing ints >= 1"),
        (dict(layers=(1, 2), tokens=((4, 1),)), "one \\(dominant, contextual\\) int pair"),
        (dict(layers=(1,), tokens=(4,)), "one \\(dominant, contextual\\) int pair"),
        (dict(layers=(1,), tokens=((16, 2),)), "dominant \\+ contextual < the 18"),
        (dict(layers=(1,), tokens=((0, 2),)), "dominant >= 1"),
        (dict(layers=(1, 2), tokens=((6, 2), (6, 2))), "< the 8 image tokens"),
    ],
)
def test_spec_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        VisionDropSpec(START, STOP, **kw)


def test_call_and_score_errors(model):
    with pytest.raises(ValueError, match=r"prune.layers\[-1\] must be < num_layers"):
        forward(model, ids_of(), prune=VisionDropSpec(START, STOP, layers=(4,), tokens=((4, 1),)))
    with pytest.raises(ValueError, match="need 0 <= start < stop"):
        VisionDropSpec(5, 5)
    x = jnp.ones((1, 6, CFG.hidden_size))
    pos, valid = jnp.zeros((1, 6), jnp.int32), jnp.ones((1, 6), bool)
    with pytest.raises(ValueError, match="positions must be \\[B, T\\]"):
        visiondrop_scores(model.layers[0], x, pos[:, :3], valid, 1, 4)
    with pytest.raises(ValueError, match="need 0 <= start < stop <= T = 6"):
        visiondrop_scores(model.layers[0], x, pos, valid, 2, 9)
    with pytest.raises(ValueError, match="x must be \\[B, T, D\\]"):
        visiondrop_scores(model.layers[0], x[0], pos, valid, 1, 4)
