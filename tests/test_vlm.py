"""pruneax.models VLM (LLaVA-style ViT -> projector -> LlamaLM): the unpruned VLM equals composing
the parts by hand (full ViT forward, NumPy projector, LlamaLM on the concatenated embeddings);
every pre-LLM method equals its ``pruneax.tokens`` selector applied per example by hand to
independently computed scores / features; pre-LLM selection combined with FastV (cache sizes,
decode after the pruned prefill); prefill FLOPs by hand; jit without retracing; argument errors.

Models are abstract (``nnx.eval_shape``) and filled from NumPy, as in tests/test_llm.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from pruneax import tokens as T
from pruneax.models.llama import FastVSpec, init_cache, llm_config
from pruneax.models.vit import ViTConfig
from pruneax.models.vlm import (
    VLM,
    VLM_SELECT_METHODS,
    VisualSelect,
    VLMConfig,
    llm_tokens_per_layer,
    uniform_visual_indices,
    vlm_prefill_flops,
)
from tests._models import random_model

VISION = ViTConfig(
    image_size=16,
    patch_size=4,  # 4 x 4 grid, N = 16
    num_channels=1,
    hidden_size=32,
    num_layers=3,
    num_heads=2,
    mlp_dim=48,
    num_classes=0,
)
LLM = llm_config("tiny", vocab_size=40, num_layers=3, hidden_size=48, intermediate_size=64)
CONFIG = VLMConfig(vision=VISION, llm=LLM)  # features: hidden state -2 = after block 1
B, P, Q = 3, 2, 3


def materialize(config: VLMConfig, seed: int = 0, std: float = 0.2) -> VLM:
    """A VLM with NumPy-drawn variables (``tests._models.random_model``; embedding N(0, 1))."""
    return random_model(VLM, config, seed, std, unit_embedding=True)


@pytest.fixture(scope="module")
def vlm() -> VLM:
    return materialize(CONFIG)


def inputs(seed: int = 1, b: int = B):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(b, 16, 16, 1)), jnp.float32)
    prefix = jnp.asarray(rng.integers(0, LLM.vocab_size, (b, P)), jnp.int32)
    question = jnp.asarray(rng.integers(0, LLM.vocab_size, (b, Q)), jnp.int32)
    return images, prefix, question


@functools.partial(nnx.jit, static_argnames=("select", "prune", "logits_to_keep"))
def forward(vlm, images, prefix, question, *, select, prune=None, cache=None, key=None,
            logits_to_keep=0):  # fmt: skip
    return vlm(
        images, prefix, question, select=select, prune=prune, cache=cache, key=key,
        logits_to_keep=logits_to_keep,
    )  # fmt: skip


def numpy_projector(vlm: VLM, x: np.ndarray) -> np.ndarray:
    p = vlm.projector
    w1, b1 = np.asarray(p.linear_1.kernel[...], np.float64), np.asarray(p.linear_1.bias[...])
    w2, b2 = np.asarray(p.linear_2.kernel[...], np.float64), np.asarray(p.linear_2.bias[...])
    hid = np.asarray(x, np.float64) @ w1 + b1
    hid = 0.5 * hid * (1.0 + erf(hid / np.sqrt(2.0)))
    return hid @ w2 + b2


def manual(vlm: VLM, images, prefix, question):
    """Features, projector outputs and attention from the FULL ViT forward (all blocks)."""
    out = vlm.vision(images, return_attention=True, return_hidden_states=True)
    h = CONFIG.feature_layer
    assert h == VISION.num_layers - 1
    feats = np.asarray(out.hidden_states[-2])[:, VISION.num_prefix :]
    proj = numpy_projector(vlm, feats)
    return feats, proj, out.attentions


def manual_logits(vlm: VLM, prefix, question, visual):
    embeds = jnp.concatenate(
        [vlm.llm.embed(prefix), jnp.asarray(visual, jnp.float32), vlm.llm.embed(question)], axis=1
    )
    return vlm.llm(inputs_embeds=embeds).logits


def test_no_selection_equals_manual_composition(vlm):
    images, prefix, question = inputs()
    out = forward(vlm, images, prefix, question, select=VisualSelect())
    _, proj, _ = manual(vlm, images, prefix, question)
    want = manual_logits(vlm, prefix, question, proj)
    assert out.logits.shape == (B, P + 16 + Q, LLM.vocab_size)
    np.testing.assert_allclose(out.logits, want, rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(out.visual_kept, np.tile(np.arange(16), (B, 1)))
    # contiguous positions 0 .. T - 1
    np.testing.assert_array_equal(out.llm.positions, np.tile(np.arange(P + 16 + Q), (B, 1)))


def _by_hand(method, vlm, images, question, k, key):
    """The selector applied per example (Python loop) to independently computed inputs."""
    feats, proj, attns = manual(vlm, images, None, question)
    h = CONFIG.feature_layer
    cls = [np.asarray(T.cls_attention(a, num_prefix=1)) for a in attns[h - 1]]
    out = []
    keys = jax.random.split(key, B)
    for b in range(B):
        f, x = feats[b].astype(np.float32), proj[b].astype(np.float32)
        if method in ("fastervlm", "topk"):  # "fastervlm" is the VLM's alias of "topk"
            i = T.topk(cls[b], k)
        elif method == "divprune":
            i = T.maxmin_diversity(x, k)
        elif method == "kcenter":
            i = T.kcenter(x, k, pivot=int(np.argmax(cls[b])))
        elif method == "maxsum":
            i = T.maxsum_diversity(x, k, pivot=int(np.argmax(cls[b])))
        elif method == "coverage":
            z = np.asarray(vlm.llm.embed(question[b : b + 1])[0])
            i = T.coverage(x, k, text=z, x_vision=f, alpha=0.5, tau_tv=0.02, tau_vv=0.2)
        elif method == "hiprune":
            shallow = T.received_attention(attns[0][b], num_prefix=1)  # round(2 * 9/24) - 1 = 0
            deep = T.received_attention(attns[h - 1][b], num_prefix=1)
            i = T.hiprune(shallow, deep, k, grid=(4, 4), alpha=1.0)
        elif method == "holov":
            i = T.holov(cls[b], x, k, num_chunks=8)  # min(16, N // 2)
        elif method == "feather":
            i = T.feather(cls[b], k, grid=(4, 4), stride=3)
        elif method == "random":
            i = T.random(keys[b], 16, k)
        elif method == "uniform":
            i = uniform_visual_indices((4, 4), k)
        out.append(np.asarray(i))
    idx = np.stack(out)
    return idx, np.take_along_axis(proj, idx[..., None], axis=1)


@pytest.mark.parametrize("method", [m for m in VLM_SELECT_METHODS if m != "none"])
def test_each_method_equals_its_selector_by_hand(vlm, method):
    images, prefix, question = inputs(seed=2)
    k = 6
    select = VisualSelect(method, keep=k, hiprune_alpha=1.0)  # 1 anchor + its buffers
    key = jax.random.key(5)
    out = forward(vlm, images, prefix, question, select=select, key=key)
    idx, visual = _by_hand(method, vlm, images, question, k, key)
    np.testing.assert_array_equal(out.visual_kept, idx)
    assert out.visual_kept.shape == (B, k)
    tokens, kept = vlm.select_visual(images, question, select=select, key=key)
    np.testing.assert_array_equal(kept, idx)
    np.testing.assert_allclose(tokens, visual, rtol=2e-4, atol=2e-5)
    want = manual_logits(vlm, prefix, question, visual)
    np.testing.assert_allclose(out.logits, want, rtol=2e-4, atol=2e-4)
    if method not in ("random", "uniform"):  # the examples' picks differ (per-example vmap)
        assert len({tuple(r) for r in np.asarray(idx)}) > 1 or method == "hiprune"


def test_keep_positions_equals_llm_at_original_positions(vlm):
    images, prefix, question = inputs(seed=9)
    select = VisualSelect("divprune", keep=5, keep_positions=True)
    out = forward(vlm, images, prefix, question, select=select)
    _, proj, _ = manual(vlm, images, prefix, question)
    idx = np.asarray(out.visual_kept)
    visual = np.take_along_axis(proj, idx[..., None], axis=1)
    pos = np.concatenate(
        [np.tile(np.arange(P), (B, 1)), P + idx, np.tile(P + 16 + np.arange(Q), (B, 1))], axis=1
    )
    embeds = jnp.concatenate(
        [vlm.llm.embed(prefix), jnp.asarray(visual, jnp.float32), vlm.llm.embed(question)], 1
    )
    want = vlm.llm(inputs_embeds=embeds, positions=jnp.asarray(pos, jnp.int32)).logits
    np.testing.assert_allclose(out.logits, want, rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(out.llm.positions, pos)
    renumbered = forward(vlm, images, prefix, question, select=VisualSelect("divprune", keep=5))
    assert not np.allclose(renumbered.logits, out.logits)  # the positions matter
    # with a cache: decode continues after the original last position
    cache = init_cache(LLM, B, P + 5 + Q + 1)
    got = forward(vlm, images, prefix, question, select=select, cache=cache)
    np.testing.assert_allclose(got.logits, want, rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(got.cache.next_position, [P + 16 + Q] * B)


def test_coverage_without_question_is_vision_only(vlm):
    images, prefix, _ = inputs(seed=3)
    select = VisualSelect("coverage", keep=0.25)
    out = forward(vlm, images, prefix, None, select=select)
    feats, proj, _ = manual(vlm, images, prefix, None)
    for b in range(B):
        want = T.coverage(proj[b].astype(np.float32), 4, x_vision=feats[b], tau_tv=0.02)
        np.testing.assert_array_equal(out.visual_kept[b], want)
    assert out.logits.shape == (B, P + 4, LLM.vocab_size)
    # coverage_text=False ignores the question
    _, prefix, question = inputs(seed=3)
    off = VisualSelect("coverage", keep=0.25, coverage_text=False)
    got = forward(vlm, images, prefix, question, select=off)
    np.testing.assert_array_equal(got.visual_kept, out.visual_kept)


def test_pre_llm_selection_with_fastv_and_cache(vlm):
    images, prefix, question = inputs(seed=4)
    select = VisualSelect("divprune", keep=0.5)  # 8 visual tokens
    spec = FastVSpec(start=P, stop=P + 8, layer=1, keep_ratio=0.5)  # keeps 4 of them
    t = vlm.prompt_length(P, Q, select)
    assert t == P + 8 + Q
    cache = init_cache(LLM, B, t + 2, prune=spec)
    assert cache.sizes == (t + 2, t + 2 - 4, t + 2 - 4)
    out = forward(vlm, images, prefix, question, select=select, prune=spec, cache=cache)
    ref = forward(vlm, images, prefix, question, select=select, prune=spec)
    np.testing.assert_allclose(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out.cache.lengths, [t, t - 4, t - 4])
    assert out.llm.kept.shape == (B, t - 4)
    # FastV on the selected sequence == FastV on an LLM fed the selected embeddings by hand
    embeds, kept = nnx.jit(lambda m, *a: m.embed_inputs(*a, select=select))(
        vlm, images, prefix, question
    )
    direct = nnx.jit(lambda m, e: m.llm(inputs_embeds=e, prune=spec))(vlm, embeds)
    np.testing.assert_allclose(out.logits, direct.logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out.visual_kept, kept)
    # one decode step on the pruned cache
    nxt = jnp.argmax(out.logits[:, -1], axis=-1)[:, None].astype(jnp.int32)
    step = nnx.jit(lambda m, i, c: m.llm(i, cache=c))(vlm, nxt, out.cache)
    np.testing.assert_array_equal(step.cache.lengths, [t + 1, t - 3, t - 3])
    assert np.all(np.isfinite(step.logits))


def test_fastv_keep_all_equals_selection_alone(vlm):
    images, prefix, question = inputs(seed=6)
    select = VisualSelect("fastervlm", keep=0.5)
    spec = FastVSpec(start=P, stop=P + 8, layer=2, keep_ratio=1.0)
    a = forward(vlm, images, prefix, question, select=select, prune=spec)
    b = forward(vlm, images, prefix, question, select=select)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_jit_does_not_retrace(vlm, compile_counter):
    traces = []

    @nnx.jit
    def f(m, images, prefix, question):
        traces.append(1)
        return m(images, prefix, question, select=VisualSelect("kcenter", keep=4)).logits

    a = f(vlm, *inputs(seed=7))
    with compile_counter() as counter:
        b = f(vlm, *inputs(seed=8))
    assert len(traces) == 1 and counter.count == 0, counter.messages
    assert not np.allclose(a, b)


def test_uniform_visual_indices():
    grid = (12, 12)
    np.testing.assert_array_equal(uniform_visual_indices(grid, 36), T.uniform_grid(grid, 2))
    np.testing.assert_array_equal(uniform_visual_indices(grid, 16), T.uniform_grid(grid, 3))
    seven = uniform_visual_indices(grid, 7)  # thinned from the 3 x 3 stride-5 grid
    assert set(seven) <= set(T.uniform_grid(grid, 5)) and seven[0] == 0 and seven[-1] == 130
    for k in range(1, 145):
        idx = uniform_visual_indices(grid, k)
        assert len(idx) == k and np.all(np.diff(idx) > 0) and idx.max() < 144


def test_prefill_flops_by_hand():
    c = LLM
    d, f, hd, h, kv, v = c.hidden_size, c.intermediate_size, c.head_dim, 4, 2, c.vocab_size

    def layer(t):
        return 2 * (2 * t * d * h * hd + 2 * t * d * kv * hd + 2 * t * t * h * hd + 3 * t * d * f)

    proj = 2 * 16 * (VISION.hidden_size * d + d * d)
    t = P + 16 + Q
    assert (
        vlm_prefill_flops(CONFIG, prefix_len=P, question_len=Q) == proj + 3 * layer(t) + 2 * d * v
    )
    select = VisualSelect("divprune", keep=4)
    spec = FastVSpec(start=P, stop=P + 4, layer=1, keep_ratio=0.5)
    t = P + 4 + Q
    assert llm_tokens_per_layer(3, t, spec) == (t, t - 2, t - 2)
    got = vlm_prefill_flops(CONFIG, prefix_len=P, question_len=Q, select=select, prune=spec)
    assert got == proj + layer(t) + 2 * layer(t - 2) + 2 * d * v

    class Other:  # any spec with tokens_per_layer (FEATHER / ToDRE)
        def tokens_per_layer(self, num_layers, t):
            return [t - i for i in range(num_layers)]

    assert llm_tokens_per_layer(3, 10, Other()) == (10, 9, 8)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="magic"), "method must be one of"),
        (dict(method="fastervlm", keep=0), "keep as a count"),
        (dict(method="fastervlm", keep=1.5), "keep as a ratio"),
        (dict(method="fastervlm", keep="half"), "keep must be an int or a float"),
        (dict(method="none", keep=0.5), "keeps every token"),
        (dict(method="hiprune", keep=4, hiprune_alpha=2.0), "hiprune_alpha"),
        (dict(method="hiprune", keep=4, shallow_layer=-1), "shallow_layer"),
        (dict(method="holov", keep=4, num_chunks=0), "num_chunks"),
        (dict(method="coverage", keep=4, tau_tv=0.0), "tau_tv"),
        (dict(method="coverage", keep=4, coverage_text=1), "coverage_text"),
        (dict(method="coverage", keep=4, keep_positions=None), "keep_positions"),
    ],
)
def test_visual_select_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        VisualSelect(**kw)


def test_config_errors():
    with pytest.raises(ValueError, match="num_classes must be 0"):
        VLMConfig(vision=ViTConfig(image_size=16, patch_size=4, num_classes=10), llm=LLM)
    with pytest.raises(ValueError, match="vision_layer must be an int"):
        VLMConfig(vision=VISION, llm=LLM, vision_layer=4)
    with pytest.raises(ValueError, match="selects the embeddings"):
        VLMConfig(vision=VISION, llm=LLM, vision_layer=0)
    with pytest.raises(ValueError, match="llm must be a LlamaConfig"):
        VLMConfig(vision=VISION, llm=VISION)
    with pytest.raises(ValueError, match="config must be a VLMConfig"):
        VLM(LLM, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="prefix_len"):
        vlm_prefill_flops(CONFIG, prefix_len=-1, question_len=0)


def test_call_errors(vlm):
    images, prefix, question = inputs()
    with pytest.raises(ValueError, match="needs a PRNG key"):
        vlm(images, prefix, question, select=VisualSelect("random", keep=4))
    with pytest.raises(ValueError, match=r"image span must be \[P, P \+ k\) = \[2, 6\)"):
        spec = FastVSpec(start=P, stop=P + 16, layer=1)
        vlm(images, prefix, question, select=VisualSelect("divprune", keep=4), prune=spec)
    with pytest.raises(ValueError, match="question_ids must be integer"):
        vlm(images, prefix, question[:2])
    with pytest.raises(ValueError, match="prefix_ids must be integer"):
        vlm(images, prefix.astype(jnp.float32), question)
    with pytest.raises(ValueError, match="exceeds the 16 visual tokens"):
        vlm(images, prefix, question, select=VisualSelect("fastervlm", keep=17))
    with pytest.raises(ValueError, match="shallow_layer must be < 2"):
        vlm(images, prefix, question, select=VisualSelect("hiprune", keep=4, shallow_layer=2))
    with pytest.raises(ValueError, match="select must be a VisualSelect"):
        vlm(images, prefix, question, select="divprune")
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        vlm(images[:, :8], prefix, question)
