"""TransPrune's LLM stages (``pruneax.models.llama.TransPruneSpec``) against a NumPy transcription
of the published ``compute_transf_weight`` / ``transprune_rank_drop`` (liaolea/TransPrune,
``llava/model/modeling_llama_transprune.py``).

Oracle: the blocks run by hand in JAX, sub-block by sub-block (``input_layernorm``, attention,
residual, ``post_attention_layernorm``, MLP, residual) on plain causal attention; at every
accumulating layer the (b, a) pairs of both sub-blocks go to NumPy (float64), where the
published TTV is written out per row (``||a|| / ||b|| * exp(1 - cos) / sum exp(1 - cos)`` over
the row's valid tokens) and stored; at the input of each pruning layer the hidden states go to
NumPy, where the published stage is written out: the stored vectors summed on the image span
and normalised, the IGA (block L + 1's RMSNorm, q / k projections with biases, RoPE at the
current positions, every token after the image span over every key with the causal mask,
softmax, head mean, image keys, query mean, normalised), their sum, the top k in original
order; tokens AND stored vectors gathered, positions renumbered 0..len-1. Cached prefill +
decode, ``generate_greedy`` and left padding are checked against that same oracle. The TTV
formula is also checked against the published one written in torch, and the (b, a) pairs of
``LlamaLM`` against hooks on transformers' ``LlamaDecoderLayer``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models.llama import (
    FastVSpec,
    LlamaLM,
    PruneContext,
    PruneStep,
    TransitionStats,
    TransPruneSpec,
    generate_greedy,
    init_cache,
    llm_config,
    load_llm,
    rope_inv_freq,
    transprune_iga,
    transprune_ttv,
)
from tests.test_llm import materialize

CFG = llm_config("tiny", vocab_size=96, attention_bias=True)  # 4 layers, H=4, KV=2, hd=16
T_PROMPT = 26
START, STOP = 3, 21  # 18 image tokens, 5 instruction tokens after them
# 18 -> 9 -> 4; layer 0's vectors (measured over 26 tokens) are gathered at layer 1 and
# summed at layer 3 with those of layers 1 and 2 (measured over 17 tokens)
SPEC = TransPruneSpec(START, STOP, layers=(1, 3), accumulate=(0, 1, 2), ratios=(0.5, 0.25))
# 18 -> 13 -> 9 -> 4; layer 1 is not accumulated
SPEC3 = TransPruneSpec(START, STOP, layers=(1, 2, 3), accumulate=(0, 2), ratios=(0.75, 0.5, 0.25))
EPS = 1e-8


@pytest.fixture(scope="module")
def model() -> LlamaLM:
    return materialize(CFG, seed=7)


def ids_of(shape=(2, T_PROMPT), seed=1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, CFG.vocab_size, shape), jnp.int32)


@functools.partial(nnx.jit, static_argnames=("prune",))
def forward(model, ids, cache=None, mask=None, prune=None):
    return model(ids, cache=cache, attention_mask=mask, prune=prune)


# ------------------------------------------------------------------------------ NumPy oracle


def _p(v) -> np.ndarray:
    return np.asarray(v[...], np.float64)


def published_ttv(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``compute_transf_weight`` on one row's tokens [T, D] (float64): the length ratio times
    the softmax of 1 - cos over the tokens (torch's cosine: each norm clamped at 1e-8)."""
    nb, na = np.linalg.norm(before, axis=-1), np.linalg.norm(after, axis=-1)
    unit_b = before / np.maximum(nb, EPS)[:, None]
    unit_a = after / np.maximum(na, EPS)[:, None]
    e = np.exp(1.0 - np.sum(unit_b * unit_a, axis=-1))
    return (na / nb) * (e / e.sum())


def numpy_rope(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """x [T, heads, hd] rotated at positions [T] (rotate-half layout)."""
    inv = np.asarray(rope_inv_freq(CFG), np.float64)
    ang = positions[:, None].astype(np.float64) * inv[None]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def numpy_iga(model, layer, h, positions, valid, start, n) -> np.ndarray:
    """The published IGA on ONE row: h [T, D] entering ``layer`` (block L + 1)."""
    blk = model.layers[layer]
    normed = h / np.sqrt(np.mean(h**2, axis=-1, keepdims=True) + CFG.rms_norm_eps)
    normed = normed * _p(blk.input_layernorm.scale)
    att = blk.self_attn
    t, hd = h.shape[0], CFG.head_dim
    q = (normed @ _p(att.q_proj.kernel) + _p(att.q_proj.bias)).reshape(t, CFG.num_heads, hd)
    k = (normed @ _p(att.k_proj.kernel) + _p(att.k_proj.bias)).reshape(t, CFG.num_kv_heads, hd)
    q, k = numpy_rope(q, positions), numpy_rope(k, positions)
    rows = np.arange(start + n, t)  # the instruction tokens after the image
    probs = np.zeros((rows.size, t))
    for head in range(CFG.num_heads):
        logits = q[rows, head] @ k[:, head // CFG.num_groups].T / np.sqrt(hd)
        allowed = (np.arange(t)[None] <= rows[:, None]) & valid[None]
        logits = np.where(allowed, logits, -np.inf)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs += e / e.sum(axis=1, keepdims=True)
    img = (probs / CFG.num_heads)[:, start : start + n]
    iga = img[valid[rows]].mean(axis=0)
    return iga / (iga.sum() + 1e-8)


def numpy_stage(model, layer, h, positions, valid, start, n, k, stored):
    """One published stage on ONE row; ``stored``: the row's kept TTV vectors [T] (current
    tokens). Returns (scores, ttv, iga [n], picked [k] ascending)."""
    iga = numpy_iga(model, layer, h, positions, valid, start, n)
    ttv = np.zeros(n)
    for w in stored:
        ttv += w[start : start + n]
    ttv = ttv / (ttv.sum() + 1e-8)
    scores = ttv + iga
    order = np.argsort(-scores, kind="stable")
    assert scores[order[k - 1]] - scores[order[k]] > 1e-5, "near tie at the cut"
    return scores, ttv, iga, np.sort(order[:k])


def hand_block(model, block, x, positions, valid):
    """One block sub-block by sub-block in JAX; returns the output and its (b, a) pairs."""
    xj = jnp.asarray(x, jnp.float32)
    cos, sin = model.rope(jnp.asarray(positions, jnp.int32))
    tt = x.shape[1]
    mask = jnp.tril(jnp.ones((tt, tt), bool))[None] & jnp.asarray(valid)[:, None, :]
    b_attn = block.input_layernorm(xj)
    a_attn, _, _ = block.self_attn(b_attn, cos, sin, mask)
    h = xj + a_attn
    b_mlp = block.post_attention_layernorm(h)
    a_mlp = block.mlp(b_mlp)
    pairs = [np.asarray(v, np.float64) for v in (b_attn, a_attn, b_mlp, a_mlp)]
    return np.asarray(h + a_mlp, np.float64), pairs


def oracle(model, ids, spec, mask=None, skip_ttv=False, prompt=None):
    """The hand-run pipeline. ``prompt``: the criteria see only the first ``prompt`` tokens (a
    prefill of those, then decode steps; default all). Returns (logits [B, T', V], kept [B, T']
    call indices, {layer: (scores, ttv, iga) each [B, n]})."""
    b, t = ids.shape
    tp = t if prompt is None else prompt  # the prompt's tokens at the current layer
    valid = np.ones((b, t), bool) if mask is None else np.asarray(mask, bool)
    x = np.asarray(model.embed(ids), np.float64)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    kept = np.broadcast_to(np.arange(t), (b, t)).copy()
    stored: list[np.ndarray] = []  # [B, T_current] per accumulated layer
    n, info = spec.num_image, {}
    for i, block in enumerate(model.layers):
        if i in spec.layers:
            s = spec.layers.index(i)
            k = spec.num_kept[s]
            rows = [
                numpy_stage(
                    model, i, x[r, :tp], positions[r, :tp], valid[r, :tp], spec.start, n, k,
                    [] if skip_ttv else [w[r, :tp] for w in stored],
                )
                for r in range(b)
            ]  # fmt: skip
            info[i] = tuple(np.stack([row[j] for row in rows]) for j in range(3))
            a, z = spec.start, spec.start + n
            tail = np.arange(z, x.shape[1])
            order = np.stack([np.concatenate([np.arange(a), a + row[3], tail]) for row in rows])
            x = np.take_along_axis(x, order[..., None], axis=1)
            kept, valid, *stored = (np.take_along_axis(v, order, 1) for v in (kept, valid, *stored))
            positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
            tp, n = tp - n + k, k
        x, (b1, a1, b2, a2) = hand_block(model, block, x, positions, valid)
        if i in spec.accumulate:
            w = np.zeros(valid.shape)
            for r in range(b):
                v = valid[r] & (np.arange(valid.shape[1]) < tp)
                w[r, v] = published_ttv(b1[r, v], a1[r, v]) + published_ttv(b2[r, v], a2[r, v])
            stored.append(w)
    logits = model.head(model.norm(jnp.asarray(x, jnp.float32)))
    return np.asarray(logits), kept, info


# ------------------------------------------------------------------------------ tests


def test_spec_budgets_defaults_and_tokens_per_layer():
    assert SPEC.num_kept == (9, 4) and SPEC3.num_kept == (13, 9, 4)
    assert SPEC.tokens_per_layer(4, T_PROMPT) == (26, 17, 17, 12)
    assert SPEC.transition_layers(4) == frozenset({0, 1, 2})
    published = TransPruneSpec(35, 611)  # LLaVA-1.5: 576 image tokens after the system prompt
    assert published.layers == (7, 9, 12) and published.accumulate == tuple(range(6, 12))
    assert published.ratios == (0.875, 0.625, 0.125)
    assert published.num_kept == (504, 360, 72)  # int(576 * ratio), the scripts' schedule
    spec = TransPruneSpec(0, 10, layers=[2], accumulate=[], ratios=[1])
    assert (spec.layers, spec.accumulate, spec.ratios, spec.num_kept) == ((2,), (), (1.0,), (10,))
    assert hash(SPEC) == hash(dataclasses.replace(SPEC))


def test_ttv_equals_the_published_formula_in_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    def compute_transf_weight(before, after):  # the published formula, batch as given
        length_ratio = torch.norm(after, dim=-1) / torch.norm(before, dim=-1)
        e = torch.exp(1 - F.cosine_similarity(before, after, dim=-1))
        return length_ratio * (e / e.sum())

    rng = np.random.default_rng(0)
    b = rng.normal(size=(2, 11, 32))
    a = 0.3 * b + rng.normal(size=(2, 11, 32)) * rng.uniform(0.1, 2.0, size=(2, 11, 1))
    ours = np.asarray(transprune_ttv(jnp.asarray(b, jnp.float32), jnp.asarray(a, jnp.float32)))
    for r in range(2):  # batch 1: identical
        want = compute_transf_weight(torch.tensor(b[r : r + 1]), torch.tensor(a[r : r + 1]))
        np.testing.assert_allclose(ours[r], want[0].numpy(), rtol=2e-5)
        np.testing.assert_allclose(ours[r], published_ttv(b[r], a[r]), rtol=2e-5)
    coupled = compute_transf_weight(torch.tensor(b), torch.tensor(a)).numpy()
    assert not np.allclose(ours, coupled, rtol=1e-2)  # the published batch softmax differs
    # padding: the softmax runs over the valid tokens; a zero b (zero padding) stays finite
    valid = np.ones((2, 11), bool)
    valid[1, :3] = False
    b[1, :3] = 0.0
    ours = np.asarray(transprune_ttv(jnp.asarray(b), jnp.asarray(a), jnp.asarray(valid)))
    np.testing.assert_array_equal(ours[1, :3], 0.0)
    np.testing.assert_allclose(ours[1, 3:], published_ttv(b[1, 3:], a[1, 3:]), rtol=2e-5)
    assert np.all(np.isfinite(np.asarray(transprune_ttv(jnp.asarray(b), jnp.asarray(a)))))


def test_iga_equals_numpy(model):
    x = model.embed(ids_of(seed=2))
    pos = jnp.broadcast_to(jnp.arange(T_PROMPT), (2, T_PROMPT))
    valid = jnp.ones((2, T_PROMPT), bool)
    iga = transprune_iga(model.layers[1], x, pos, valid, START, STOP)
    assert iga.shape == (2, 18)
    for r in range(2):
        want = numpy_iga(
            model, 1, np.asarray(x[r], np.float64), np.arange(T_PROMPT), np.ones(T_PROMPT, bool),
            START, 18,
        )  # fmt: skip
        np.testing.assert_allclose(iga[r], want, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(iga.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("spec, seed", [(SPEC, 1), (SPEC, 4), (SPEC3, 2)])
def test_forward_equals_hand_run_pipeline(model, spec, seed):
    ids = ids_of(seed=seed)
    out = forward(model, ids, prune=spec)
    logits, kept, info = oracle(model, ids, spec)
    np.testing.assert_array_equal(out.kept, kept)
    for layer in spec.layers:
        for j, name in enumerate(("scores", "ttv", "iga")):
            got = out.prune_info[f"{name}_{layer}"]
            np.testing.assert_allclose(got, info[layer][j], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out.logits, logits, atol=1e-4)
    t_last = T_PROMPT - spec.num_image + spec.num_kept[-1]
    np.testing.assert_array_equal(out.positions, np.broadcast_to(np.arange(t_last), (2, t_last)))
    # the TTV matters: the IGA alone picks other tokens
    _, kept_iga, _ = oracle(model, ids, spec, skip_ttv=True)
    assert not np.array_equal(kept_iga, kept)


def test_ttv_matches_hooks_on_transformers_llama(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch.nn.functional as F

    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = 0.2 * torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
            if name.endswith("embed_tokens.weight"):
                p.copy_(noise / 0.2)
    hf.eval().save_pretrained(tmp_path)
    ours = load_llm(tmp_path)
    spec = TransPruneSpec(2, 16, layers=(3,), accumulate=(0, 2), ratios=(0.5,))
    ids = np.random.default_rng(3).integers(0, 128, (1, 20))
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, _inputs, output):
            seen[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return record

    for i in spec.accumulate:
        layer = hf.model.layers[i]
        for part in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            getattr(layer, part).register_forward_hook(hook(f"{i}.{part}"))
    with torch.no_grad():
        hf(torch.tensor(ids))

    def compute_transf_weight(before, after):  # the published formula
        length_ratio = torch.norm(after, dim=-1) / torch.norm(before, dim=-1)
        e = torch.exp(1 - F.cosine_similarity(before, after, dim=-1))
        return length_ratio * (e / e.sum())

    total = sum(
        compute_transf_weight(seen[f"{i}.input_layernorm"], seen[f"{i}.self_attn"])
        + compute_transf_weight(seen[f"{i}.post_attention_layernorm"], seen[f"{i}.mlp"])
        for i in spec.accumulate
    )[0, 2:16].numpy()
    out = ours(jnp.asarray(ids, jnp.int32), prune=spec)
    np.testing.assert_allclose(out.prune_info["ttv_3"][0], total / (total.sum() + 1e-8), rtol=1e-4)


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
    spec = dataclasses.replace(SPEC, start=START - pad, stop=STOP - pad)
    alone = forward(model, ids[1:, pad:], prune=spec)
    np.testing.assert_allclose(out.logits[1, -1], alone.logits[0, -1], atol=1e-4)
    for name in ("ttv_1", "iga_1", "scores_3"):
        np.testing.assert_allclose(out.prune_info[name][1], alone.prune_info[name][0], rtol=1e-4)
    np.testing.assert_array_equal(out.kept[1, pad:] - pad, alone.kept[0])
    np.testing.assert_array_equal(out.positions[1, -1], alone.positions[0, -1])


def test_cache_prefill_and_decode_continue_each_layers_numbering(model):
    ids, n_new = ids_of(seed=3), 4
    cache = init_cache(CFG, 2, T_PROMPT + n_new, prune=SPEC)
    assert cache.sizes == (30, 21, 21, 16)
    out = forward(model, ids, cache=cache, prune=SPEC)
    np.testing.assert_allclose(out.logits, forward(model, ids, prune=SPEC).logits, atol=1e-5)
    cache = out.cache
    np.testing.assert_array_equal(cache.lengths, [26, 17, 17, 12])
    np.testing.assert_array_equal(
        cache.positions[3][:, :12], np.broadcast_to(np.arange(12), (2, 12))
    )
    new_tokens = ids_of((2, n_new), seed=12)
    steps = []
    for step in range(n_new):
        o = forward(model, new_tokens[:, step : step + 1], cache=cache)
        cache = o.cache
        np.testing.assert_array_equal(cache.next_position, T_PROMPT + step + 1)  # layer 0's
        np.testing.assert_array_equal(o.positions[:, 0], 12 + step)  # the last layer's
        steps.append(o.logits[:, 0])
    # the published decode shift: position - (tokens removed before the layer)
    np.testing.assert_array_equal(cache.positions[1][:, 17:21], np.tile(np.arange(17, 21), (2, 1)))
    seq = jnp.concatenate([ids, new_tokens], axis=1)
    want, _, _ = oracle(model, seq, SPEC, prompt=T_PROMPT)  # the criteria see the prompt only
    np.testing.assert_allclose(np.stack(steps, axis=1), want[:, -n_new:], atol=1e-4)


@pytest.mark.slow  # ~40 s; prefill + cached decode vs the oracle is checked by the test above
def test_generate_greedy_equals_the_oracle(model):
    ids, n_new = ids_of(seed=8), 3
    gen = generate_greedy(model, ids, n_new, prune=SPEC)
    buf = np.asarray(ids)
    for step in range(n_new):
        logits, _, _ = oracle(model, jnp.asarray(buf), SPEC, prompt=T_PROMPT)
        tok = logits[:, -1].argmax(-1)
        np.testing.assert_array_equal(gen.tokens[:, step], tok)
        buf = np.concatenate([buf, tok[:, None].astype(np.int32)], axis=1)


@dataclasses.dataclass(frozen=True)
class _Recorder:
    """A spec that drops the token at ``start`` at layers 1, 2 and 3 and asks for the
    transition statistics of ``transitions``: it reports what the generic hook hands it."""

    transitions: tuple = (0, 1)
    start: int = START
    stop: int = STOP

    def validate(self, num_layers, length, where):
        pass

    def pruning_layers(self, num_layers):
        return (1, 2, 3)

    def attention_layers(self, num_layers):
        return frozenset()

    def transition_layers(self, num_layers):
        return frozenset(self.transitions)

    def tokens_per_layer(self, num_layers, t):
        return (t, t - 1, t - 2, t - 3)

    def apply(self, layer, num_layers, ctx):
        b, t = ctx.valid.shape
        keep = jnp.broadcast_to(jnp.r_[0 : self.start, self.start + 1 : t], (b, t - 1))
        info = {}
        for i, st in ctx.transitions.items():
            assert isinstance(st, TransitionStats)
            info[f"stats_{i}_{layer}"] = st.current()
            info[f"index_{i}_{layer}"] = st.index
        return PruneStep(keep.astype(jnp.int32), None, info)


def test_transition_hook_measures_keeps_and_gathers(model):
    ids = ids_of(seed=5)
    out = model(ids, prune=_Recorder())
    names = {f"{k}_{i}_{lay}" for k in ("stats", "index") for i, lay in ((0, 1), (0, 2), (1, 2))}
    assert set(out.prune_info) == names | {"stats_0_3", "index_0_3", "stats_1_3", "index_1_3"}
    x = np.asarray(model.embed(ids), np.float64)
    pos = np.broadcast_to(np.arange(T_PROMPT), (2, T_PROMPT))
    _, (b1, a1, b2, a2) = hand_block(model, model.layers[0], x, pos, np.ones((2, T_PROMPT), bool))

    def stats(bb, aa):
        nb, na = np.linalg.norm(bb, axis=-1), np.linalg.norm(aa, axis=-1)
        return np.stack([nb, na, np.sum(bb * aa, -1) / (nb * na)], -1)

    want = np.concatenate([stats(b1, a1), stats(b2, a2)], -1)  # layer 0, all 26 tokens
    np.testing.assert_allclose(out.prune_info["stats_0_1"], want, rtol=1e-4, atol=1e-5)
    row = lambda idx: np.broadcast_to(idx, (2, len(idx)))
    # layer 0's tokens: START went at layer 1, START + 1 at layer 2; layer 1's: its START at 2
    np.testing.assert_array_equal(out.prune_info["index_0_3"], row(np.r_[0:START, START + 2 : 26]))
    np.testing.assert_allclose(
        out.prune_info["stats_0_3"], want[:, np.r_[0:START, START + 2 : 26]], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(out.prune_info["index_1_2"], row(np.arange(25)))
    np.testing.assert_array_equal(out.prune_info["index_1_3"], row(np.r_[0:START, START + 1 : 25]))
    assert out.prune_info["stats_1_3"].shape == (2, 24, 6)
    with pytest.raises(ValueError, match=r"transition_layers\(4\) must be ints in \[0, 4\)"):
        model(ids, prune=_Recorder(transitions=(4,)))


@dataclasses.dataclass(frozen=True)
class _Plain(_Recorder):
    transition_layers = None  # a spec without the optional method


def test_specs_without_transition_layers_get_none(model):
    """A spec without ``transition_layers`` sees an empty dict; FastV runs as before."""
    ids = ids_of(seed=4)
    out = model(ids, prune=_Plain())
    assert out.prune_info is None and out.kept.shape == (2, T_PROMPT - 3)
    out = forward(model, ids, prune=FastVSpec(start=START, stop=STOP, layer=2))
    assert out.kept.shape == (2, T_PROMPT - 9) and out.prune_info is None


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(layers=(3, 1), ratios=(0.5, 0.25)), "layers must be strictly increasing ints >= 1"),
        (dict(layers=(0,), accumulate=(), ratios=(0.5,)), "layers must be strictly increasing"),
        (dict(layers=(), ratios=()), "layers must be strictly increasing ints >= 1"),
        (dict(layers=(2,), accumulate=(0, 2), ratios=(0.5,)), r"accumulate must be .* \[0, "),
        (dict(layers=(2,), accumulate=(1, 0), ratios=(0.5,)), "accumulate must be strictly"),
        (dict(layers=(2,), accumulate=(-1,), ratios=(0.5,)), "accumulate must be strictly"),
        (dict(layers=(2,), accumulate=0, ratios=(0.5,)), "accumulate must be strictly"),
        (
            dict(layers=(1, 2), accumulate=(), ratios=(0.5,)),
            r"ratios must be one real in \(0, 1\] per layer",
        ),
        (
            dict(layers=(1,), accumulate=(), ratios=(1.5,)),
            r"ratios must be one real in \(0, 1\] per layer",
        ),
        (
            dict(layers=(1,), accumulate=(), ratios=(0.0,)),
            r"ratios must be one real in \(0, 1\] per layer",
        ),
        (
            dict(layers=(1,), accumulate=(), ratios=(True,)),
            r"ratios must be one real in \(0, 1\] per layer",
        ),
        (
            dict(layers=(1,), accumulate=(), ratios=0.5),
            r"ratios must be one real in \(0, 1\] per layer",
        ),
        (dict(layers=(1, 2), accumulate=(), ratios=(0.25, 0.5)), "ratios must be non-increasing"),
        (
            dict(layers=(1,), accumulate=(), ratios=(0.05,)),
            "keep at least one of the 18 image tokens",
        ),
    ],
)
def test_spec_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TransPruneSpec(START, STOP, **kw)


def test_call_and_function_errors(model):
    with pytest.raises(ValueError, match="need 0 <= start < stop"):
        TransPruneSpec(5, 5)
    with pytest.raises(ValueError, match="start must be an int"):
        TransPruneSpec(1.5, 5)
    small = dict(layers=(4,), accumulate=(0,), ratios=(0.5,))
    with pytest.raises(ValueError, match=r"prune.layers\[-1\] must be < num_layers"):
        forward(model, ids_of(), prune=TransPruneSpec(START, STOP, **small))
    with pytest.raises(ValueError, match="must end before the 21 input tokens"):
        forward(model, ids_of((2, 21)), prune=SPEC)
    x = jnp.ones((1, 6, CFG.hidden_size))
    pos, valid = jnp.zeros((1, 6), jnp.int32), jnp.ones((1, 6), bool)
    with pytest.raises(ValueError, match="transprune_iga: positions must be \\[B, T\\]"):
        transprune_iga(model.layers[0], x, pos[:, :3], valid, 1, 4)
    with pytest.raises(ValueError, match="transprune_iga: valid must be \\[B, T\\]"):
        transprune_iga(model.layers[0], x, pos, valid[:, :2], 1, 4)
    with pytest.raises(ValueError, match="need 0 <= start < stop < T = 6"):
        transprune_iga(model.layers[0], x, pos, valid, 2, 6)
    with pytest.raises(ValueError, match="transprune_iga: x must be \\[B, T, D\\]"):
        transprune_iga(model.layers[0], x[0], pos, valid, 1, 4)
    with pytest.raises(ValueError, match="before and after must both be \\[B, T, D\\]"):
        transprune_ttv(x, x[:, :3])
    with pytest.raises(ValueError, match="before and after must both be \\[B, T, D\\]"):
        transprune_ttv(x[0], x[0])
    with pytest.raises(ValueError, match="transprune_ttv: valid must be \\[B, T\\]"):
        transprune_ttv(x, x, valid[:, :2])
    # a hand-built context without the transition statistics the spec needs
    ctx = PruneContext(model.embed(ids_of()), jnp.ones((2, T_PROMPT), bool), None, 0,
                       model.layers[1])  # fmt: skip
    with pytest.raises(ValueError, match=r"PruneContext.transitions lacks layers \[0\]"):
        SPEC.apply(1, 4, ctx)


def test_with_budget_keeps_exactly_k_at_one_layer():
    for n, k, layer in ((16, 4, 2), (576, 64, 2), (576, 576, 3), (7, 1, 1)):
        spec = TransPruneSpec.with_budget(3, 3 + n, k, layer)
        assert spec.num_kept == (k,) and spec.layers == (layer,)
        assert spec.accumulate == (layer - 1,)
    with pytest.raises(ValueError, match="keep must be an int in \\[1, 16\\]"):
        TransPruneSpec.with_budget(3, 19, 0, 2)
    with pytest.raises(ValueError, match="layers must be strictly increasing ints >= 1"):
        TransPruneSpec.with_budget(3, 19, 4, 0)
