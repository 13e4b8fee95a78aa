"""pruneax.models.LlamaLM without transformers: KV cache (prefill + decode == full forward
recomputation, chunked prefill, left padding), RoPE at explicit positions (relative property),
FastV in-LLM pruning against NumPy / manual oracles (selection, pruned forward, decode after a
pruned prefill, the shortened caches, a prefill after a cached prefix), greedy generation, jit
without retracing, and input / config errors.

Models are abstract (``nnx.eval_shape``) and filled from NumPy (``materialize``): JAX compiles
every random initializer per shape, which costs seconds on a busy 2-core CPU.
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
    LLM_VARIANTS,
    FastVSpec,
    KVCache,
    LlamaConfig,
    LlamaLM,
    generate_greedy,
    init_cache,
    llm_config,
)
from pruneax.weights import leaf_names, prunable_names
from tests._models import random_model

TINY = llm_config("tiny", vocab_size=96, num_layers=4)
SPEC = FastVSpec(layer=2, start=3, stop=19)  # 16 image tokens, R = 50% -> keep 8
T_PROMPT = 24


def materialize(config: LlamaConfig, seed: int = 0, std: float = 0.2, **kw) -> LlamaLM:
    """A LlamaLM with NumPy-drawn parameters (``tests._models.random_model``; embedding N(0, 1))."""
    return random_model(LlamaLM, config, seed, std, unit_embedding=True, **kw)


@pytest.fixture(scope="module")
def model() -> LlamaLM:
    return materialize(llm_config("tiny", vocab_size=96, attention_bias=True))


def ids_of(shape=(2, T_PROMPT), seed=1, vocab=TINY.vocab_size) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


@functools.partial(
    nnx.jit, static_argnames=("prune", "return_attention_at", "return_hidden_states")
)
def forward(
    model, ids, embeds=None, positions=None, cache=None, mask=None, prune=None,
    return_attention_at=(),
    return_hidden_states=False,
):  # fmt: skip
    return model(
        ids,
        inputs_embeds=embeds,
        positions=positions,
        cache=cache,
        attention_mask=mask,
        prune=prune,
        return_attention_at=return_attention_at,
        return_hidden_states=return_hidden_states,
    )


def causal(t: int) -> jax.Array:
    return jnp.tril(jnp.ones((t, t), bool))[None]


def run_layers(model, x, positions, layers):
    """Runs ``model.layers[layers]`` on x [B, T, D] at positions [B, T], plain causal; returns
    (x, attention probabilities of the last layer run)."""
    cos, sin = model.rope(positions)
    probs = None
    for i in layers:
        x, probs, _ = model.layers[i](x, cos, sin, causal(x.shape[1]), return_attention=True)
    return x, probs


def numpy_topk_kept(attn: np.ndarray, spec: FastVSpec, t: int) -> np.ndarray:
    """NumPy FastV oracle: head-mean of the last query's attention over the image span, the
    top num_keep (ties to the lower index), sorted, with the text tokens around them."""
    scores = np.asarray(attn, np.float64)[:, :, -1, spec.start : spec.stop].mean(axis=1)
    top = np.sort(np.argsort(-scores, axis=1, kind="stable")[:, : spec.num_keep], axis=1)
    b = attn.shape[0]
    head = np.broadcast_to(np.arange(spec.start), (b, spec.start))
    tail = np.broadcast_to(np.arange(spec.stop, t), (b, t - spec.stop))
    return np.concatenate([head, top + spec.start, tail], axis=1)


@functools.partial(nnx.jit, static_argnames="spec")
def manual_pruned_logits(model, ids, spec, kept) -> jax.Array:
    """Layers < K on the full sequence, gather ``kept`` with their ORIGINAL positions, run the
    remaining layers, final norm, head."""
    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    x, _ = run_layers(model, model.embed(ids), positions, range(spec.layer))
    x = jnp.take_along_axis(x, kept[..., None], axis=1)
    positions = jnp.take_along_axis(positions, kept, axis=1)
    x, _ = run_layers(model, x, positions, range(spec.layer, model.config.num_layers))
    return model.head(model.norm(x))


# ------------------------------------------------------------------------------ config


def test_variants_and_config():
    assert set(LLM_VARIANTS) >= {"tiny", "llama2-7b", "llama3.2-1b", "qwen2.5-0.5b"}
    cfg = llm_config("tiny")
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.num_groups) == (2, 16, 2)
    assert cfg.attention_out_bias is False
    q = llm_config("qwen2.5-0.5b")
    assert q.head_dim == 64 and q.attention_bias and not q.attention_out_bias
    l3 = llm_config("llama3.2-1b")
    assert l3.rope_scaling_dict["rope_type"] == "llama3" and hash(l3) == hash(
        llm_config("llama3.2-1b")
    )
    assert LlamaConfig(rope_scaling={"type": "default"}).rope_scaling is None
    assert LlamaConfig(rope_scaling={"type": "linear", "factor": 2}).rope_scaling_dict == {
        "rope_type": "linear",
        "factor": 2.0,
    }
    with pytest.raises(ValueError, match="unknown LlamaConfig fields"):
        llm_config("tiny", layers=3)
    with pytest.raises(ValueError, match="name must be one of"):
        llm_config("huge")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_heads=4, num_kv_heads=3, hidden_size=64), "multiple of num_kv_heads"),
        (dict(num_heads=4, hidden_size=12), "head_dim must be even"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps"),
        (dict(rope_theta=-1.0), "rope_theta"),
        (dict(mlp_bias=1), "mlp_bias"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn' is not supported"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs exactly the keys"),
        (dict(rope_scaling=[1, 2]), "rope_scaling must be None or a mapping"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(**kw)


def test_leaf_names_and_prunable_kernels(model):
    names = leaf_names(nnx.state(model, nnx.Param))
    assert "embed_tokens/embedding" in names and "lm_head/kernel" in names
    assert "layers/0/self_attn/q_proj/bias" in names
    assert "layers/0/self_attn/o_proj/bias" in names  # attention_out_bias=None follows it
    prunable = prunable_names(nnx.state(model, nnx.Param))
    assert "layers/3/mlp/down_proj/kernel" in prunable and "norm/scale" not in prunable


# ------------------------------------------------------------------------------ cache


def test_prefill_and_decode_equal_full_recomputation(model):
    ids = ids_of(seed=2)
    full = forward(model, ids).logits
    cache = init_cache(model.config, 2, 28)
    out = forward(model, ids[:, :15], cache=cache)  # prefill
    np.testing.assert_allclose(out.logits, full[:, :15], atol=1e-5)
    out = forward(model, ids[:, 15:18], cache=out.cache)  # a second chunk
    np.testing.assert_allclose(out.logits, full[:, 15:18], atol=1e-5)
    cache = out.cache
    for t in range(18, T_PROMPT):  # decode steps
        out = forward(model, ids[:, t : t + 1], cache=cache)
        cache = out.cache
        np.testing.assert_allclose(out.logits[:, 0], full[:, t], atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, [24] * 4)
    np.testing.assert_array_equal(cache.next_position, [24, 24])
    np.testing.assert_array_equal(
        cache.positions[0][:, :24], np.broadcast_to(np.arange(24), (2, 24))
    )
    assert bool(jnp.all(cache.valid[3][:, :24])) and not bool(jnp.any(cache.valid[3][:, 24:]))


def test_left_padding_equals_unpadded_rows(model):
    """A left-padded row gives the logits of its tokens run alone, in prefill and decode."""
    ids = ids_of(seed=3)
    alone = ids_of((1, 15), seed=4)
    batch = ids.at[1].set(jnp.pad(alone[0], (9, 0)))
    mask = jnp.arange(T_PROMPT)[None] >= jnp.array([[0], [9]])
    padded = forward(model, batch, mask=mask)
    np.testing.assert_array_equal(padded.positions[1, 9:], np.arange(15))
    np.testing.assert_allclose(padded.logits[1, 9:], forward(model, alone).logits[0], atol=1e-5)
    assert np.all(np.isfinite(padded.logits))  # padding queries: no NaN
    cache = forward(model, batch, cache=init_cache(model.config, 2, 28), mask=mask).cache
    step = forward(model, jnp.array([[5], [5]]), cache=cache)
    np.testing.assert_array_equal(step.positions[:, 0], [24, 15])
    want = forward(model, jnp.concatenate([alone, jnp.array([[5]])], axis=1)).logits
    np.testing.assert_allclose(step.logits[1, 0], want[0, -1], atol=1e-5)


def test_inputs_embeds_and_explicit_attention_path(model):
    ids = ids_of()
    plain = forward(model, ids)
    embedded = forward(model, None, model.embed(ids))
    np.testing.assert_allclose(embedded.logits, plain.logits, atol=1e-6)
    # the explicit-probabilities path (requested layers) equals the fused one
    probed = forward(model, ids, return_attention_at=(0, 1, 2, 3))
    np.testing.assert_allclose(probed.logits, plain.logits, atol=1e-5)
    assert sorted(probed.attentions) == [0, 1, 2, 3]
    attn = np.asarray(probed.attentions[2])
    assert attn.shape == (2, 4, T_PROMPT, T_PROMPT)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(attn, k=1) == 0)  # causal


# ------------------------------------------------------------------------------ RoPE


def test_rope_explicit_positions_are_relative(model):
    ids = ids_of(seed=6)
    layers = (0, 1, 2, 3)
    base = forward(model, ids, return_attention_at=layers)
    shifted = forward(model, ids, positions=jnp.arange(T_PROMPT) + 57, return_attention_at=layers)
    for i in layers:
        np.testing.assert_allclose(shifted.attentions[i], base.attentions[i], atol=2e-5)
    np.testing.assert_allclose(shifted.logits, base.logits, atol=1e-4)
    # ...but relative distances matter: spreading the positions changes the attention
    spread = forward(model, ids, positions=jnp.arange(T_PROMPT) * 3, return_attention_at=layers)
    assert np.abs(np.asarray(spread.attentions[0]) - np.asarray(base.attentions[0])).max() > 1e-2


# ------------------------------------------------------------------------------ FastV


def test_fastv_keep_ratio_one_is_no_pruning(model):
    ids = ids_of()
    full = forward(model, ids)
    spec = FastVSpec(layer=2, start=3, stop=19, keep_ratio=1.0)
    out = forward(model, ids, prune=spec)
    np.testing.assert_allclose(out.logits, full.logits, atol=1e-5)
    np.testing.assert_array_equal(out.kept, np.broadcast_to(np.arange(T_PROMPT), (2, T_PROMPT)))


def test_fastv_kept_indices_are_numpy_topk_of_last_query_attention(model):
    ids = ids_of()
    for spec in (SPEC, FastVSpec(layer=1, start=0, stop=20, drop_ratio=0.75)):
        out = forward(model, ids, prune=spec, return_attention_at=(spec.layer - 1,))
        attn = np.asarray(out.attentions[spec.layer - 1])
        assert attn.shape == (2, 4, T_PROMPT, T_PROMPT)  # stored before pruning
        np.testing.assert_array_equal(out.kept, numpy_topk_kept(attn, spec, T_PROMPT))
        assert out.logits.shape == (2, T_PROMPT - spec.num_dropped, TINY.vocab_size)
        np.testing.assert_array_equal(out.positions, out.kept)  # original positions
    assert SPEC.num_keep == 8 and SPEC.num_dropped == 8


def test_fastv_forward_equals_manual_computation(model):
    ids = ids_of()
    out = forward(model, ids, prune=SPEC, return_hidden_states=True)
    want = manual_pruned_logits(model, ids, SPEC, out.kept)  # jitted (eager is slow)
    np.testing.assert_allclose(out.logits, want, atol=1e-5)
    lengths = [h.shape[1] for h in out.hidden_states]
    assert lengths == [24, 24, 24, 16, 16]  # embeddings, then after each layer


def test_fastv_cache_is_shorter_and_decode_equals_recomputation(model):
    ids = ids_of()
    n_new = 4
    cache = init_cache(model.config, 2, T_PROMPT + n_new, prune=SPEC)
    assert cache.sizes == (28, 28, 20, 20)
    out = forward(model, ids, cache=cache, prune=SPEC)
    np.testing.assert_allclose(out.logits, forward(model, ids, prune=SPEC).logits, atol=1e-5)
    cache, kept, steps = out.cache, np.asarray(out.kept), []
    np.testing.assert_array_equal(cache.lengths, [24, 24, 16, 16])
    for i in (2, 3):  # the pruned layers hold only the kept tokens, at their original positions
        np.testing.assert_array_equal(cache.positions[i][:, :16], kept)
        assert bool(jnp.all(cache.valid[i][:, :16])) and not bool(jnp.any(cache.valid[i][:, 16:]))
    new_tokens = ids_of((2, n_new), seed=10)
    for step in range(n_new):
        out = forward(model, new_tokens[:, step : step + 1], cache=cache)
        cache = out.cache
        np.testing.assert_array_equal(out.positions[:, 0], T_PROMPT + step)
        steps.append(out.logits[:, 0])
    # recomputation (causal, so one pass serves every step): the same kept prompt tokens plus
    # all new tokens, at their original positions
    seq = jnp.concatenate([ids, new_tokens], axis=1)
    new = np.broadcast_to(np.arange(T_PROMPT, T_PROMPT + n_new), (2, n_new))
    want = manual_pruned_logits(model, seq, SPEC, jnp.concatenate([kept, new], axis=1))
    np.testing.assert_allclose(np.stack(steps, axis=1), want[:, -n_new:], atol=2e-5)
    np.testing.assert_array_equal(cache.lengths, [28, 28, 20, 20])


def test_fastv_after_a_cached_prefix_equals_one_shot(model):
    """A prefill after a cached prefix: the image span is relative to the call's tokens."""
    ids = ids_of()
    one_shot = forward(model, ids, prune=SPEC)
    spec = FastVSpec(layer=2, start=0, stop=16)  # the same 16 image tokens, after 3 cached
    cache = init_cache(model.config, 2, T_PROMPT, prune=spec)
    cache = forward(model, ids[:, :3], cache=cache).cache
    out = forward(model, ids[:, 3:], cache=cache, prune=spec)
    np.testing.assert_array_equal(out.kept + 3, one_shot.kept[:, 3:])
    np.testing.assert_allclose(out.logits[:, -1], one_shot.logits[:, -1], atol=1e-5)


def test_generate_greedy_equals_a_python_loop(model):
    """One jitted program (prefill + scan) == prefill and decode calls in a Python loop, with
    FastV (without pruning, generation is checked against transformers in test_llm_hf)."""
    ids = ids_of((2, T_PROMPT), seed=7)
    gen = generate_greedy(model, ids, 5, prune=SPEC)
    cache = init_cache(model.config, 2, T_PROMPT + 4, prune=SPEC)
    out = forward(model, ids, cache=cache, prune=SPEC)
    np.testing.assert_array_equal(gen.kept, out.kept)
    tokens = [jnp.argmax(out.logits[:, -1], -1)]
    for _ in range(4):
        out = forward(model, tokens[-1][:, None], cache=out.cache)
        tokens.append(jnp.argmax(out.logits[:, -1], -1))
    np.testing.assert_array_equal(gen.tokens, np.stack(tokens, axis=1))
    np.testing.assert_array_equal(gen.cache.lengths, [28, 28, 20, 20])


@pytest.mark.slow
def test_generate_greedy_pads_after_eos(model):
    ids = ids_of((2, T_PROMPT), seed=7)
    gen = generate_greedy(model, ids, 5, prune=SPEC)
    eos = int(gen.tokens[0, 1])
    out = generate_greedy(model, ids, 5, prune=SPEC, eos_token_id=eos, pad_token_id=0)
    want = np.asarray(gen.tokens).copy()
    for row in want:  # after a row's first EOS, the pad id
        hits = np.flatnonzero(row == eos)
        if hits.size:
            row[hits[0] + 1 :] = 0
    np.testing.assert_array_equal(out.tokens, want)
    np.testing.assert_array_equal(out.tokens[0, 2:], [0, 0, 0])


# ------------------------------------------------------------------------------ jit, errors


def test_jit_does_not_retrace(model, compile_counter):
    traces = []

    def run(m, ids, cache):
        traces.append(1)
        return m(ids, cache=cache, prune=SPEC)

    f = nnx.jit(run)
    cache = init_cache(model.config, 2, T_PROMPT, prune=SPEC)
    a = f(model, ids_of(seed=8), cache)
    b = f(model, ids_of(seed=9), cache)
    assert len(traces) == 1 and not np.allclose(a.logits, b.logits)
    generate_greedy(model, ids_of(seed=8), 5, prune=SPEC)
    with compile_counter() as counter:
        generate_greedy(model, ids_of(seed=9), 5, prune=SPEC)
    assert counter.count == 0, counter.messages


def test_cache_overflow(model):
    cache = init_cache(model.config, 2, 8)
    with pytest.raises(ValueError, match="cache layer 0 holds 0 of 8 slots and cannot take 9"):
        model(ids_of((2, 9)), cache=cache)
    cache = forward(model, ids_of((2, 15)), cache=init_cache(model.config, 2, 28)).cache
    for _ in range(4):
        cache = forward(model, ids_of((2, 3)), cache=cache).cache
    with pytest.raises(ValueError, match="cache layer 0 holds 27 of 28 slots and cannot take 3"):
        model(ids_of((2, 3)), cache=cache)
    # under jit the lengths are traced: NaN logits instead of a silent truncation
    assert np.all(np.isnan(forward(model, ids_of((2, 3)), cache=cache).logits))


def test_call_errors(model):
    ids = ids_of((2, 5))
    cases = [
        (dict(), "exactly one of input_ids and inputs_embeds"),
        (dict(input_ids=ids, inputs_embeds=model.embed(ids)), "exactly one"),
        (dict(input_ids=ids.astype(jnp.float32)), "input_ids must be integer"),
        (dict(inputs_embeds=jnp.zeros((2, 5, 3))), r"inputs_embeds must be \[B, T, D=64\]"),
        (dict(input_ids=ids, attention_mask=jnp.ones((2, 4))), "attention_mask must be"),
        (dict(input_ids=ids, positions=jnp.arange(4)), "positions must be integer"),
        (dict(input_ids=ids, positions=jnp.arange(5.0)), "positions must be integer"),
        (dict(input_ids=ids, return_attention_at=(4,)), r"ints in \[0, 4\)"),
        (dict(input_ids=ids, return_attention_at=3), "tuple of layer indices"),
        (dict(input_ids=ids, prune=FastVSpec(start=1, stop=3, layer=4)), "prune.layer must be"),
        (dict(input_ids=ids, prune=FastVSpec(start=1, stop=9)), "inside the 5 input tokens"),
        (dict(input_ids=ids, prune="fastv"), "prune must be a FastVSpec"),
        (dict(input_ids=ids, cache=(1, 2)), "cache must be a KVCache"),
        (dict(input_ids=ids, cache=init_cache(TINY, 3, 8)), "cache layer 0 must hold"),
        (dict(input_ids=ids, logits_to_keep=-1), "logits_to_keep"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            model(**kw)
    short = init_cache(dataclasses.replace(TINY, num_layers=2), 2, 8)
    with pytest.raises(ValueError, match="cache has 2 layers"):
        model(ids, cache=short)
    with pytest.raises(ValueError, match="config must be a LlamaConfig"):
        LlamaLM({"hidden_size": 8}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_greedy(model, ids, 0)
    with pytest.raises(ValueError, match="max_len"):
        init_cache(TINY, 2, 0)
    assert isinstance(init_cache(TINY, 1, 4), KVCache)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(start=3, stop=3), "start < stop"),
        (dict(start=0, stop=4, layer=0), "layer must be >= 1"),
        (dict(start=0, stop=4, keep_ratio=0.5, drop_ratio=0.5), "not both"),
        (dict(start=0, stop=4, keep_ratio=1.5), "keep_ratio"),
        (dict(start=0, stop=4, drop_ratio=1.0), "drop_ratio"),
        (dict(start=0, stop=4, keep_ratio=0.1), "keeps no image token"),
        (dict(start=0.0, stop=4), "start must be an int"),
    ],
)
def test_fastv_spec_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        FastVSpec(**kw)


def test_bfloat16_runs_close_to_float32():
    f32 = materialize(TINY, std=0.1)
    bf16 = materialize(TINY, std=0.1, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    ids = ids_of((2, 10))
    a, b = forward(f32, ids).logits, forward(bf16, ids).logits
    assert b.dtype == jnp.float32 and np.all(np.isfinite(b))
    assert np.abs(np.asarray(b) - np.asarray(a)).max() < 0.1 * np.abs(a).max()
