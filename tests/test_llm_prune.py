"""In-LLM pruning specs of pruneax.models.LlamaLM beyond FastV: FEATHER (two stages, no-RoPE
criterion from the pruning layer's own q / k projections) and ToDRE's stage 2 (attention-share
test, masked or physical drop of every image token).

Oracles: the criterion and the selections in NumPy (float64) from the model's weights and the
hidden states entering each pruning layer; pruned forwards against a hand-built run of the
blocks with a manual gather at each stage (``staged_logits``); cached prefill + decode and
``generate_greedy`` against that same uncached reference; ToDRE's shares in NumPy from the
returned attention, masked == physical == removed by hand when every row drops, == the dense
model when none does. Models are filled from NumPy as in test_llm.py (no random initialisers).
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
    FeatherSpec,
    LlamaLM,
    TodreSpec,
    generate_greedy,
    init_cache,
    llm_config,
)
from pruneax.tokens import uniform_grid
from tests.test_llm import materialize

CFG = llm_config("tiny", vocab_size=96, attention_bias=True)  # 4 layers, H=4, KV=2, hd=16
L = CFG.num_layers
T_PROMPT = 24
START, STOP = 3, 19  # 16 image tokens on a 4 x 4 grid
# stage 1 at layer 1: grid stride 2 (4 tokens) + int(0.25 * 16) = 4 -> 8; stage 2 at layer 3:
# int(0.5 * 8) = 4
FEATHER = FeatherSpec(START, STOP, grid=(4, 4), layers=(1, 3), ratios=(0.25, 0.5), stride=2)
TODRE_K = 2


@pytest.fixture(scope="module")
def model() -> LlamaLM:
    return materialize(CFG, seed=3)


def ids_of(shape=(2, T_PROMPT), seed=1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, shape), jnp.int32)


@functools.partial(
    nnx.jit, static_argnames=("prune", "return_attention_at", "return_hidden_states")
)
def forward(
    model, ids, cache=None, mask=None, prune=None, return_attention_at=(),
    return_hidden_states=False,
):  # fmt: skip
    return model(
        ids,
        cache=cache,
        attention_mask=mask,
        prune=prune,
        return_attention_at=return_attention_at,
        return_hidden_states=return_hidden_states,
    )


@functools.partial(nnx.jit, static_argnames="layers")
def staged_logits(model, ids, layers, local):
    """The pruned model built by hand: the blocks run on plain causal attention; at the input
    of ``layers[j]`` the current tokens are gathered with ``local[j]`` [B, T_j] (indices into
    the current tokens), with their ORIGINAL positions. Returns (logits, the hidden states
    entering each ``layers[j]`` before its gather)."""
    b, t = ids.shape
    x = model.embed(ids)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    entering = []
    for i, block in enumerate(model.layers):
        if i in layers:
            entering.append(x)
            idx = local[layers.index(i)]
            x = jnp.take_along_axis(x, idx[..., None], axis=1)
            positions = jnp.take_along_axis(positions, idx, axis=1)
        cos, sin = model.rope(positions)
        mask = jnp.tril(jnp.ones((x.shape[1],) * 2, bool))[None]
        x, _, _ = block(x, cos, sin, mask)
    return model.head(model.norm(x)), tuple(entering)


def to_local(stages: list[np.ndarray]) -> tuple[jax.Array, ...]:
    """Global kept indices per stage ([B, T_j], ascending, nested) -> local indices into the
    previous stage's tokens."""
    out, prev = [], None
    for g in stages:
        g = np.asarray(g)
        loc = (
            g
            if prev is None
            else np.stack([np.searchsorted(p, r) for p, r in zip(prev, g, strict=True)])
        )
        if prev is not None:
            np.testing.assert_array_equal(np.take_along_axis(prev, loc, 1), g)  # nested
        out.append(jnp.asarray(loc, jnp.int32))
        prev = g
    return tuple(out)


def with_new(kept: np.ndarray, t: int, n_new: int) -> np.ndarray:
    """Kept prompt indices [B, k] followed by the n_new tokens after the prompt."""
    new = np.broadcast_to(np.arange(t, t + n_new), (kept.shape[0], n_new))
    return np.concatenate([np.asarray(kept), new], axis=1)


# ------------------------------------------------------------------------------ NumPy oracles


def numpy_feather_criterion(model, layer: int, h: np.ndarray, start: int, n: int) -> np.ndarray:
    """Layer ``layer``'s input RMSNorm, q / k projections (biases), NO RoPE; the last token's
    query against the keys of tokens [start, start + n), softmax over them, mean over heads."""
    blk = model.layers[layer]
    p = lambda v: np.asarray(v[...], np.float64)
    h = np.asarray(h, np.float64)
    normed = h / np.sqrt(np.mean(h**2, axis=-1, keepdims=True) + CFG.rms_norm_eps)
    normed = normed * p(blk.input_layernorm.scale)
    att = blk.self_attn
    q = normed[:, -1] @ p(att.q_proj.kernel) + p(att.q_proj.bias)  # [B, H*hd]
    k = normed[:, start : start + n] @ p(att.k_proj.kernel) + p(att.k_proj.bias)
    b, hd = h.shape[0], CFG.head_dim
    q = q.reshape(b, CFG.num_heads, hd)
    k = k.reshape(b, n, CFG.num_kv_heads, hd)
    scores = np.zeros((b, n))
    for head in range(CFG.num_heads):
        logits = np.einsum("bd,bnd->bn", q[:, head], k[:, :, head // CFG.num_groups]) / hd**0.5
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores += e / e.sum(axis=1, keepdims=True)
    return scores / CFG.num_heads


def numpy_top(scores: np.ndarray, k: int, exclude=()) -> np.ndarray:
    s = np.asarray(scores, np.float64).copy()
    s[list(exclude)] = -np.inf
    return np.sort(np.argsort(-s, kind="stable")[:k])


def numpy_feather_select(scores: np.ndarray, k: int, grid, stride: int) -> np.ndarray:
    """The whole grid (every ``stride``-th row / column, written out here) plus the best k - G
    other tokens."""
    rows, cols = grid
    g = [r * cols + c for r in range(0, rows, stride) for c in range(0, cols, stride)]
    return np.sort(np.concatenate([g, numpy_top(scores, k - len(g), exclude=g)]))


def span_keep(picked: np.ndarray, start: int, n: int, t: int) -> np.ndarray:
    return np.concatenate([np.arange(start), np.asarray(picked) + start, np.arange(start + n, t)])


def numpy_shares(attn: np.ndarray, valid: np.ndarray, start: int, stop: int, offset: int = 0):
    """Head mean; text queries' mass on the image key slots, image queries' mass on the
    others (the call's tokens sit at key slots offset + i)."""
    a = np.asarray(attn, np.float64).mean(axis=1)  # [B, T, S]
    t, s = a.shape[1:]
    image_q, image_k = np.zeros(t, bool), np.zeros(s, bool)
    image_q[start:stop] = True
    image_k[offset + start : offset + stop] = True
    t2v, v2t = [], []
    for row in range(a.shape[0]):
        text_rows = a[row][valid[row] & ~image_q]
        image_rows = a[row][valid[row] & image_q]
        t2v.append(text_rows[:, image_k].sum(axis=1).mean())
        v2t.append(image_rows[:, ~image_k].sum(axis=1).mean())
    return np.array(t2v), np.array(v2t)


# ------------------------------------------------------------------------------ specs


def test_spec_budgets_and_tokens_per_layer():
    assert FEATHER.num_grid == 4 and FEATHER.num_keep == (8, 4) and FEATHER.num_image == 16
    assert FEATHER.tokens_per_layer(L, T_PROMPT) == (24, 16, 16, 12)
    assert FEATHER.pruning_layers(L) == (1, 3)
    published = FeatherSpec(0, 576, grid=(24, 24))  # LLaVA-1.5: G = 64, int(0.3 * 576) = 172
    assert published.num_grid == uniform_grid((24, 24), 3).size == 64
    assert published.num_keep == (236, 21) and published.layers == (8, 16)
    one = FeatherSpec(0, 729, grid=[27, 27], layers=[8], ratios=[0.3])
    assert (
        one.num_keep == (218 + 81,)
        and one.grid == (27, 27)
        and hash(one) == hash(FeatherSpec(0, 729, grid=(27, 27), layers=(8,), ratios=(0.3,)))
    )
    assert FeatherSpec(0, 4, grid=(2, 2), layers=(1,), ratios=(1.0,)).num_keep == (4,)  # <= N
    assert FeatherSpec(1, 577) == FeatherSpec(1, 577, grid=(24, 24))  # None: square, resolved
    todre = TodreSpec(START, STOP)
    assert [todre.layer_for(n) for n in (32, 24, 16, 8)] == [28, 21, 14, 7]
    assert todre.tokens_per_layer(8, 30) == (30,) * 8
    phys = TodreSpec(START, STOP, physical=True)
    assert phys.tokens_per_layer(8, 30) == (30,) * 7 + (14,)
    fastv = FastVSpec(start=START, stop=STOP, layer=2)
    assert fastv.tokens_per_layer(L, T_PROMPT) == (24, 24, 16, 16)
    for spec in (FEATHER, todre, fastv):
        assert (spec.start, spec.stop, spec.num_image) == (START, STOP, 16)


# ------------------------------------------------------------------------------ FEATHER


def test_feather_criterion_and_selection_equal_numpy(model):
    ids = ids_of()
    out = forward(model, ids, prune=FEATHER, return_hidden_states=True)
    assert sorted(out.prune_info) == ["scores_1", "scores_3"]
    # stage 1: the 16 image tokens entering layer 1
    h1 = np.asarray(out.hidden_states[1])
    assert h1.shape == (2, 24, CFG.hidden_size)
    want1 = numpy_feather_criterion(model, 1, h1, START, 16)
    np.testing.assert_allclose(out.prune_info["scores_1"], want1, atol=1e-6)
    sel1 = [numpy_feather_select(s, 8, (4, 4), 2) for s in want1]
    kept1 = np.stack([span_keep(s, START, 16, T_PROMPT) for s in sel1])
    # stage 2: the 8 survivors entering layer 3
    h3 = np.asarray(out.hidden_states[3])
    assert h3.shape == (2, 16, CFG.hidden_size)
    want3 = numpy_feather_criterion(model, 3, h3, START, 8)
    np.testing.assert_allclose(out.prune_info["scores_3"], want3, atol=1e-6)
    local = np.stack([span_keep(numpy_top(s, 4), START, 8, 16) for s in want3])
    np.testing.assert_array_equal(out.kept, np.take_along_axis(kept1, local, 1))
    np.testing.assert_array_equal(out.positions, out.kept)  # original positions
    assert [h.shape[1] for h in out.hidden_states] == [24, 24, 16, 16, 12]
    # a non-degenerate criterion (not uniform over the image tokens)
    assert not np.allclose(want1, want1.mean(axis=1, keepdims=True))


def test_feather_forward_equals_manual_gather(model):
    """The stage-1 selection from the NumPy oracle on the dense hidden states; a hand-built
    gather at each stage; logits equal to 1e-5."""
    ids = ids_of(seed=2)
    out = forward(model, ids, prune=FEATHER)
    # dense run up to layer 1 (no pruning before it), then the oracle's stage-1 pick
    dense = forward(model, ids, return_hidden_states=True)
    s1 = numpy_feather_criterion(model, 1, np.asarray(dense.hidden_states[1]), START, 16)
    loc1 = np.stack([span_keep(numpy_feather_select(s, 8, (4, 4), 2), START, 16, 24) for s in s1])
    # stage 2 from the hand-built run's own hidden state entering layer 3
    ident = jnp.broadcast_to(jnp.arange(16), (2, 16))
    _, entering = staged_logits(model, ids, (1, 3), (jnp.asarray(loc1), ident))
    s3 = numpy_feather_criterion(model, 3, np.asarray(entering[1]), START, 8)
    loc3 = np.stack([span_keep(numpy_top(s, 4), START, 8, 16) for s in s3])
    want, _ = staged_logits(model, ids, (1, 3), (jnp.asarray(loc1), jnp.asarray(loc3)))
    np.testing.assert_array_equal(out.kept, np.take_along_axis(loc1, loc3, 1))
    assert out.logits.shape == (2, 12, CFG.vocab_size)
    np.testing.assert_allclose(out.logits, want, atol=1e-5)


def test_feather_single_stage_at_layer_zero_and_stride_three(model):
    ids = ids_of(seed=4)
    spec = FeatherSpec(2, 20, grid=(3, 6), layers=(0,), ratios=(0.2,))  # G = 2, + 3 -> 5
    assert spec.num_keep == (5,) and spec.tokens_per_layer(L, 24) == (11,) * 4
    out = forward(model, ids, prune=spec)
    x0 = np.asarray(model.embed(ids))
    s = numpy_feather_criterion(model, 0, x0, 2, 18)
    loc = np.stack([span_keep(numpy_feather_select(r, 5, (3, 6), 3), 2, 18, 24) for r in s])
    assert set(np.asarray(loc[0])) >= {2, 5}  # grid cells 0 and 3 (row 0, cols 0 and 3)
    np.testing.assert_array_equal(out.kept, loc)
    want, _ = staged_logits(model, ids, (0,), (jnp.asarray(loc),))
    np.testing.assert_allclose(out.logits, want, atol=1e-5)


def test_feather_cache_sizes_and_decode_equal_recomputation(model):
    ids, n_new = ids_of(seed=5), 4
    cache = init_cache(CFG, 2, T_PROMPT + n_new, prune=FEATHER)
    assert cache.sizes == (28, 20, 20, 16)
    out = forward(model, ids, cache=cache, prune=FEATHER)
    np.testing.assert_allclose(out.logits, forward(model, ids, prune=FEATHER).logits, atol=1e-5)
    cache = out.cache
    np.testing.assert_array_equal(cache.lengths, [24, 16, 16, 12])
    stage1 = np.asarray(cache.positions[1][:, :16])  # original positions = global indices
    np.testing.assert_array_equal(cache.positions[2][:, :16], stage1)
    np.testing.assert_array_equal(cache.positions[3][:, :12], out.kept)
    for i, n in enumerate((24, 16, 16, 12)):
        assert bool(jnp.all(cache.valid[i][:, :n])) and not bool(jnp.any(cache.valid[i][:, n:]))
    new_tokens = ids_of((2, n_new), seed=11)
    steps = []
    for step in range(n_new):
        o = forward(model, new_tokens[:, step : step + 1], cache=cache)
        cache = o.cache
        np.testing.assert_array_equal(o.positions[:, 0], T_PROMPT + step)
        steps.append(o.logits[:, 0])
    np.testing.assert_array_equal(cache.lengths, [28, 20, 20, 16])
    seq = jnp.concatenate([ids, new_tokens], axis=1)
    local = to_local([with_new(stage1, 24, n_new), with_new(out.kept, 24, n_new)])
    want, _ = staged_logits(model, seq, (1, 3), local)
    np.testing.assert_allclose(np.stack(steps, axis=1), want[:, -n_new:], atol=2e-5)


def test_feather_after_a_cached_prefix_equals_one_shot(model):
    """The span is relative to the call's tokens; the criterion reads only the call's tokens."""
    ids = ids_of(seed=20)
    one_shot = forward(model, ids, prune=FEATHER)
    spec = FeatherSpec(0, 16, grid=(4, 4), layers=(1, 3), ratios=(0.25, 0.5), stride=2)
    cache = init_cache(CFG, 2, T_PROMPT, prune=spec)
    assert cache.sizes == (24, 16, 16, 12)
    cache = forward(model, ids[:, :3], cache=cache).cache
    out = forward(model, ids[:, 3:], cache=cache, prune=spec)
    np.testing.assert_array_equal(out.kept + 3, one_shot.kept[:, 3:])
    np.testing.assert_allclose(out.prune_info["scores_3"], one_shot.prune_info["scores_3"], 1e-5)
    np.testing.assert_allclose(out.logits[:, -1], one_shot.logits[:, -1], atol=1e-5)
    np.testing.assert_array_equal(out.cache.lengths, [24, 16, 16, 12])


def greedy_reference(model, ids, layers, stages, n_new):
    """Greedy tokens of the hand-built pruned model without a cache: a fixed-length buffer
    (causal, so the future slots do not matter), prompt kept per ``stages`` plus every new
    token."""
    b, t = ids.shape
    buf = np.concatenate([np.asarray(ids), np.zeros((b, n_new - 1), np.int32)], axis=1)
    local = to_local([with_new(s, t, n_new - 1) for s in stages])
    last = np.asarray(stages[-1]).shape[1] - 1  # the prompt's last token in the last layer
    tokens = []
    for step in range(n_new):
        logits, _ = staged_logits(model, jnp.asarray(buf), tuple(layers), local)
        tok = np.asarray(jnp.argmax(logits[:, last + step], axis=-1))
        tokens.append(tok)
        if step < n_new - 1:
            buf[:, t + step] = tok
    return np.stack(tokens, axis=1)


def test_generate_greedy_feather_equals_uncached_reference(model):
    ids, n_new = ids_of(seed=7), 5
    gen = generate_greedy(model, ids, n_new, prune=FEATHER)
    np.testing.assert_array_equal(gen.cache.lengths, [28, 20, 20, 16])
    stage1 = np.asarray(gen.cache.positions[1][:, :16])
    want = greedy_reference(model, ids, (1, 3), [stage1, np.asarray(gen.kept)], n_new)
    np.testing.assert_array_equal(gen.tokens, want)
    assert sorted(gen.prune_info) == ["scores_1", "scores_3"]


# ------------------------------------------------------------------------------ ToDRE


def test_todre_shares_equal_numpy_oracle(model):
    ids = ids_of(seed=6)
    mask = np.ones((2, T_PROMPT), bool)
    mask[1, :2] = False  # left padding in row 1 (outside the image span)
    spec = TodreSpec(START, STOP, layer=TODRE_K, tau=0.3)
    out = forward(model, ids, mask=jnp.asarray(mask), prune=spec, return_attention_at=(1,))
    t2v, v2t = numpy_shares(np.asarray(out.attentions[1]), mask, START, STOP)
    info = out.prune_info
    assert sorted(info) == ["drop", "text_to_visual", "visual_to_text"]
    np.testing.assert_allclose(info["text_to_visual"], t2v, atol=1e-6)
    np.testing.assert_allclose(info["visual_to_text"], v2t, atol=1e-6)
    np.testing.assert_array_equal(info["drop"], (t2v < 0.3) & (v2t < 0.3))
    assert np.all((t2v > 0) & (t2v < 1) & (v2t > 0) & (v2t < 1))
    np.testing.assert_array_equal(out.kept, np.broadcast_to(np.arange(24), (2, 24)))  # masked


def text_indices(b: int = 2, t: int = T_PROMPT) -> np.ndarray:
    text = np.concatenate([np.arange(START), np.arange(STOP, t)])
    return np.broadcast_to(text, (b, text.size))


def test_todre_always_drop_masked_equals_physical_equals_manual(model):
    ids = ids_of(seed=8)
    masked = forward(model, ids, prune=TodreSpec(START, STOP, layer=TODRE_K, tau=1.0))
    phys = forward(model, ids, prune=TodreSpec(START, STOP, layer=TODRE_K, tau=1.0, physical=True))
    assert bool(jnp.all(masked.prune_info["drop"])) and bool(jnp.all(phys.prune_info["drop"]))
    text = text_indices()
    np.testing.assert_array_equal(phys.kept, text)
    assert masked.logits.shape == (2, 24, CFG.vocab_size) and phys.logits.shape == (2, 8, 96)
    want, _ = staged_logits(model, ids, (TODRE_K,), (jnp.asarray(text),))
    np.testing.assert_allclose(phys.logits, want, atol=1e-5)
    np.testing.assert_allclose(
        np.take_along_axis(masked.logits, text[..., None], 1), want, atol=1e-5
    )
    # the image tokens did change the text tokens' logits: the check is not vacuous
    dense = forward(model, ids).logits
    assert np.abs(np.take_along_axis(np.asarray(dense), text[..., None], 1) - want).max() > 1e-3


def test_todre_never_drop_equals_dense_and_physical_drops_anyway(model):
    ids = ids_of(seed=9)
    dense = forward(model, ids)
    out = forward(model, ids, prune=TodreSpec(START, STOP, layer=TODRE_K, tau=0.0))
    assert not bool(jnp.any(out.prune_info["drop"]))
    np.testing.assert_allclose(out.logits, dense.logits, atol=1e-5)
    phys = forward(model, ids, prune=TodreSpec(START, STOP, layer=TODRE_K, tau=0.0, physical=True))
    assert not bool(jnp.any(phys.prune_info["drop"])) and phys.logits.shape[1] == 8


def test_todre_per_row_decision(model):
    """A tau between the rows' shares: the row that drops equals the image-free run, the other
    the dense model."""
    ids = ids_of(seed=12)
    probe = forward(model, ids, prune=TodreSpec(START, STOP, layer=TODRE_K, tau=0.0)).prune_info
    worst = np.maximum(probe["text_to_visual"], probe["visual_to_text"])
    drop_row = int(np.argmin(worst))
    tau = float(worst.mean())
    assert worst[drop_row] < tau < worst[1 - drop_row]
    out = forward(model, ids, prune=TodreSpec(START, STOP, layer=TODRE_K, tau=tau))
    np.testing.assert_array_equal(out.prune_info["drop"], np.arange(2) == drop_row)
    text = text_indices()
    removed, _ = staged_logits(model, ids, (TODRE_K,), (jnp.asarray(text),))
    got = np.take_along_axis(np.asarray(out.logits), text[..., None], 1)
    np.testing.assert_allclose(got[drop_row], removed[drop_row], atol=1e-5)
    dense = forward(model, ids).logits
    np.testing.assert_allclose(out.logits[1 - drop_row], dense[1 - drop_row], atol=1e-5)


@pytest.mark.parametrize("physical", [False, True])
def test_todre_cache_and_decode_equal_removal(model, physical):
    ids, n_new = ids_of(seed=13), 3
    spec = TodreSpec(START, STOP, layer=TODRE_K, tau=1.0, physical=physical)
    cache = init_cache(CFG, 2, T_PROMPT + n_new, prune=spec)
    assert cache.sizes == ((27, 27, 11, 11) if physical else (27,) * 4)
    out = forward(model, ids, cache=cache, prune=spec)
    cache = out.cache
    np.testing.assert_array_equal(cache.lengths, [24, 24, 8, 8] if physical else [24] * 4)
    if not physical:  # the image slots are invalid in layers >= K only
        image = np.zeros(27, bool)
        image[START:STOP] = True
        for i in range(L):
            want_valid = (np.arange(27) < 24) & ~(image & (i >= TODRE_K))
            np.testing.assert_array_equal(cache.valid[i], np.broadcast_to(want_valid, (2, 27)))
    new_tokens = ids_of((2, n_new), seed=14)
    steps = []
    for step in range(n_new):
        o = forward(model, new_tokens[:, step : step + 1], cache=cache)
        cache = o.cache
        steps.append(o.logits[:, 0])
    seq = jnp.concatenate([ids, new_tokens], axis=1)
    local = to_local([with_new(text_indices(), 24, n_new)])
    want, _ = staged_logits(model, seq, (TODRE_K,), local)
    np.testing.assert_allclose(np.stack(steps, axis=1), want[:, -n_new:], atol=2e-5)


def test_todre_after_a_cached_prefix(model):
    """The span is relative to the call's tokens: the shares read the image keys at their cache
    slots; dropping them gives the last logits of the one-shot image-free run."""
    ids = ids_of(seed=18)
    spec = TodreSpec(0, 16, layer=TODRE_K, tau=1.0)  # the image tokens [3, 19), 3 cached before
    cache = init_cache(CFG, 2, T_PROMPT, prune=spec)
    cache = forward(model, ids[:, :3], cache=cache).cache
    out = forward(model, ids[:, 3:], cache=cache, prune=spec, return_attention_at=(1,))
    attn = np.asarray(out.attentions[1])
    assert attn.shape == (2, 4, 21, 24)
    t2v, v2t = numpy_shares(attn, np.ones((2, 21), bool), 0, 16, offset=3)
    np.testing.assert_allclose(out.prune_info["text_to_visual"], t2v, atol=1e-6)
    np.testing.assert_allclose(out.prune_info["visual_to_text"], v2t, atol=1e-6)
    want, _ = staged_logits(model, ids, (TODRE_K,), (jnp.asarray(text_indices()),))
    np.testing.assert_allclose(out.logits[:, -1], want[:, -1], atol=1e-5)


def test_todre_masking_an_image_at_the_start_stays_finite(model):
    """Image tokens first (start = 0): masked out of every key, their own query rows are
    empty in layers >= K; no NaN reaches the text tokens."""
    ids = ids_of(seed=19)
    out = forward(model, ids, prune=TodreSpec(0, 16, layer=TODRE_K, tau=1.0))
    assert np.all(np.isfinite(out.logits))
    text = np.broadcast_to(np.arange(16, 24), (2, 8))
    want, _ = staged_logits(model, ids, (TODRE_K,), (jnp.asarray(text),))
    np.testing.assert_allclose(out.logits[:, 16:], want, atol=1e-5)


def test_generate_greedy_todre_equals_uncached_reference(model):
    ids, n_new = ids_of(seed=15), 4
    want = greedy_reference(model, ids, (TODRE_K,), [text_indices()], n_new)
    for physical in (False, True):
        spec = TodreSpec(START, STOP, layer=TODRE_K, tau=1.0, physical=physical)
        gen = generate_greedy(model, ids, n_new, prune=spec)
        np.testing.assert_array_equal(gen.tokens, want)
        assert bool(jnp.all(gen.prune_info["drop"]))


# ------------------------------------------------------------------------------ jit, errors


def test_jit_does_not_retrace_for_equal_specs(model, compile_counter):
    traces = []

    def run(m, ids, prune):
        traces.append(1)
        return m(ids, prune=prune)

    f = nnx.jit(run, static_argnames="prune")
    make = lambda: FeatherSpec(
        START, STOP, grid=[4, 4], layers=[1, 3], ratios=[0.25, 0.5], stride=2
    )
    a = f(model, ids_of(seed=16), make())
    b = f(model, ids_of(seed=17), make())
    assert len(traces) == 1 and not np.allclose(a.logits, b.logits)
    f(model, ids_of(seed=16), TodreSpec(START, STOP, layer=TODRE_K))
    f(model, ids_of(seed=17), TodreSpec(START, STOP, layer=TODRE_K))
    assert len(traces) == 2
    generate_greedy(model, ids_of(seed=16), 3, prune=make())
    with compile_counter() as counter:
        generate_greedy(model, ids_of(seed=17), 3, prune=make())
    assert counter.count == 0, counter.messages


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(start=3, stop=3, grid=(1, 1)), "start < stop"),
        (dict(start=0.0, stop=4, grid=(2, 2)), "start must be an int"),
        (dict(start=0, stop=16, grid=(4, 5)), r"grid \(4, 5\) has 20 cells.*N = 16"),
        (dict(start=0, stop=16, grid=16), r"grid must be \(rows, cols\)"),
        (dict(start=0, stop=12), "grid=None needs a square image"),
        (dict(start=0, stop=16, grid=(4, 4), layers=(3, 3)), "layers must be one or two"),
        (dict(start=0, stop=16, grid=(4, 4), layers=(4, 2)), "strictly increasing"),
        (dict(start=0, stop=16, grid=(4, 4), layers=(-1,), ratios=(0.3,)), "layers must be"),
        (dict(start=0, stop=16, grid=(4, 4), layers=(1, 2, 3)), "layers must be one or two"),
        (dict(start=0, stop=16, grid=(4, 4), layers=(1,)), "ratios must have one entry"),
        (dict(start=0, stop=16, grid=(4, 4), ratios=(0.3, 1.5)), r"ratios must be in \(0, 1\]"),
        (dict(start=0, stop=16, grid=(4, 4), ratios=(0.0, 0.5)), r"ratios must be in \(0, 1\]"),
        (dict(start=0, stop=16, grid=(4, 4), ratios=(0.3, 0.01)), "stage 2 keeps no image"),
        (dict(start=0, stop=16, grid=(4, 4), stride=0), "stride must be an int >= 1"),
    ],
)
def test_feather_spec_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        FeatherSpec(**kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(start=5, stop=2), "start < stop"),
        (dict(start=0, stop=4, layer=0), "layer must be an int >= 1"),
        (dict(start=0, stop=4, layer=2.0), "layer must be an int >= 1"),
        (dict(start=0, stop=4, tau=1.5), r"tau must be a float in \[0, 1\]"),
        (dict(start=0, stop=4, tau=float("nan")), "tau must be"),
        (dict(start=0, stop=4, physical=1), "physical must be a bool"),
    ],
)
def test_todre_spec_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TodreSpec(**kw)


def test_call_errors(model):
    ids = ids_of((2, 20))
    cases = [
        (
            FeatherSpec(0, 16, grid=(4, 4), layers=(1, 4), ratios=(0.3, 0.5)),
            r"prune.layers\[-1\] must be < num_",
        ),
        (FeatherSpec(8, 24, grid=(4, 4), layers=(1,), ratios=(0.5,)), "inside the 20 input"),
        (TodreSpec(0, 4), "prune.layer must be < num_layers = 4; got 4"),  # round(3.5) = 4
        (TodreSpec(0, 4, layer=4), "prune.layer must be < num_layers"),
        (TodreSpec(0, 20, layer=2), "at least one text token"),
        (TodreSpec(4, 21, layer=2), "inside the 20 input"),
        ("feather", "prune must be a FastVSpec, FeatherSpec, TodreSpec or None"),
    ]
    for spec, match in cases:
        with pytest.raises(ValueError, match=match):
            model(ids, prune=spec)
    with pytest.raises(ValueError, match=r"init_cache: prune\.layers"):
        init_cache(
            CFG, 2, 24, prune=FeatherSpec(0, 16, grid=(4, 4), layers=(1, 4), ratios=(0.3, 0.5))
        )
    with pytest.raises(ValueError, match="init_cache: the image span"):
        init_cache(CFG, 2, 10, prune=FEATHER)
