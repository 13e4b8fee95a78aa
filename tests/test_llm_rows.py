"""Row-only attention scores of the in-LLM pruning specs: FastV reads only the last query's
probabilities and ToDRE only each query's probability mass on the image keys, both computed
from q and k without the layer's [B, H, T, S] probabilities (``attention_form``); FEATHER reads
its own projections. Each must equal what the fully materialised probabilities give (a
recording spec whose ``attention_form`` is ``"probs"``, and ``return_attention_at``), within
1e-6, without a cache, with left padding, and after a cached prefix; and the traced program
of a row-only call must hold no explicit [B, KV, G, T, S] attention logits.
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
    FeatherSpec,
    LlamaLM,
    PruneStep,
    TodreSpec,
    init_cache,
    llm_config,
    todre_shares,
)

TOL = 1e-6  # scores / shares
LOGITS_TOL = 2e-5  # logits of size ~5: the fused and explicit attention round differently


@pytest.fixture(scope="module")
def model() -> LlamaLM:
    """A tiny 3-layer model with weights N(0, 0.2^2) (peaked, untied attention)."""
    m = LlamaLM(llm_config("tiny", num_layers=3), rngs=nnx.Rngs(0))
    state = nnx.state(m, nnx.Param)
    nnx.update(m, jax.tree.map(lambda a: a if a.ndim == 1 else a * 10.0, state))
    return m


@functools.partial(nnx.jit, static_argnames=("prune", "attn", "hidden"))
def run(model, x, mask=None, prune=None, cache=None, attn=(), hidden=False):
    return model(
        x,
        attention_mask=mask,
        prune=prune,
        cache=cache,
        return_attention_at=attn,
        return_hidden_states=hidden,
    )


def ids(b=2, t=24, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, 256)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordFastV(FastVSpec):
    """FastV that reports what it read (``ctx.attn``); ``full`` reads the whole matrix."""

    full: bool = False

    def attention_form(self, layer, num_layers):
        return "probs" if self.full else super().attention_form(layer, num_layers)

    def apply(self, layer, num_layers, ctx):
        step = super().apply(layer, num_layers, ctx)
        return PruneStep(step.keep, step.hide, {"attn": ctx.attn})


@dataclasses.dataclass(frozen=True)
class FullTodre(TodreSpec):
    """ToDRE reading the materialised probabilities (the pre-row-only behaviour)."""

    def attention_form(self, layer, num_layers):
        return "probs"


def _max(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("padded", [pytest.param(False, marks=pytest.mark.slow), True])
def test_fastv_last_query_row_equals_materialised(model, padded):
    x = ids()
    mask = np.ones(x.shape, bool)
    if padded:
        mask[1, :5] = False
    mask = jnp.asarray(mask)
    row = RecordFastV(start=3, stop=19, layer=2)
    full = RecordFastV(start=3, stop=19, layer=2, full=True)
    a = run(model, x, mask, row)
    b = run(model, x, mask, full)
    assert a.prune_info["attn"].shape == (2, 4, 1, 24)
    assert b.prune_info["attn"].shape == (2, 4, 24, 24)
    assert _max(a.prune_info["attn"], b.prune_info["attn"][:, :, -1:]) < TOL
    np.testing.assert_array_equal(a.kept, b.kept)
    assert _max(a.logits, b.logits) < LOGITS_TOL  # fused vs explicit layer output
    # the layer's probabilities also asked for: the row is taken from them
    c = run(model, x, mask, row, attn=(1,))
    assert c.attentions[1].shape == (2, 4, 24, 24) and c.prune_info["attn"].shape == (2, 4, 1, 24)
    assert _max(c.prune_info["attn"], b.prune_info["attn"][:, :, -1:]) < TOL
    assert _max(c.attentions[1], b.prune_info["attn"]) < TOL


@pytest.mark.slow
def test_fastv_rows_after_a_cached_prefix(model):
    """Prefix of 5 tokens in the cache, then a FastV call: the row spans the cache slots."""
    x = ids(t=29, seed=1)
    spec_row = RecordFastV(start=2, stop=18, layer=1)
    spec_full = RecordFastV(start=2, stop=18, layer=1, full=True)
    outs = []
    for spec in (spec_row, spec_full):
        cache = init_cache(model.config, 2, 29, prune=spec)
        cache = run(model, x[:, :5], cache=cache).cache
        outs.append(run(model, x[:, 5:], prune=spec, cache=cache))
    a, b = outs
    assert a.prune_info["attn"].shape == (2, 4, 1, 29)
    assert _max(a.prune_info["attn"], b.prune_info["attn"][:, :, -1:]) < TOL
    np.testing.assert_array_equal(a.kept, b.kept)
    assert _max(a.logits, b.logits) < LOGITS_TOL  # fused vs explicit layer output


@pytest.mark.parametrize("physical", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_todre_key_mass_shares_equal_materialised(model, physical):
    x = ids(t=20, seed=2)
    mask = np.ones(x.shape, bool)
    mask[0, :3] = False
    mask = jnp.asarray(mask)
    kw = dict(layer=2, tau=0.5, physical=physical)
    a = run(model, x, mask, TodreSpec(4, 14, **kw))
    b = run(model, x, mask, FullTodre(4, 14, **kw))
    for key in ("text_to_visual", "visual_to_text"):
        assert _max(a.prune_info[key], b.prune_info[key]) < TOL, key
    np.testing.assert_array_equal(a.prune_info["drop"], b.prune_info["drop"])
    probs = run(model, x, mask, attn=(1,)).attentions[1]
    t2v, v2t = todre_shares(probs, mask, 4, 14)
    assert _max(a.prune_info["text_to_visual"], t2v) < TOL
    assert _max(a.prune_info["visual_to_text"], v2t) < TOL
    assert _max(a.logits, b.logits) < LOGITS_TOL  # fused vs explicit layer output


@pytest.mark.slow
def test_todre_key_mass_long_call_and_cached_prefix(model):
    """More queries than one block of the blocked computation (T = 300, not a multiple of the
    block), and after a cached prefix (the image keys sit at cache offsets)."""
    x = ids(b=1, t=300, seed=3)
    kw = dict(layer=1, tau=0.5)
    a = run(model, x, prune=TodreSpec(10, 250, **kw))
    b = run(model, x, prune=FullTodre(10, 250, **kw))
    for key in ("text_to_visual", "visual_to_text"):
        assert _max(a.prune_info[key], b.prune_info[key]) < TOL, key
    y = ids(t=26, seed=4)
    infos = []
    for spec in (TodreSpec(3, 15, **kw), FullTodre(3, 15, **kw)):
        cache = run(model, y[:, :6], cache=init_cache(model.config, 2, 26, prune=spec)).cache
        infos.append(run(model, y[:, 6:], prune=spec, cache=cache).prune_info)
    for key in ("text_to_visual", "visual_to_text"):
        assert _max(infos[0][key], infos[1][key]) < TOL, key


def _square_logits(model, spec, x) -> int:
    """How many [B, KV, G, T, T] arrays (the layout of attention logits over the call's T
    tokens) the traced call holds."""
    graphdef, state = nnx.split(model)
    b, t = x.shape
    cfg = model.config
    target = (b, cfg.num_kv_heads, cfg.num_groups, t, t)

    def run(state, x):
        return nnx.merge(graphdef, state)(x, prune=spec).logits

    def count(jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            n += sum(tuple(getattr(v.aval, "shape", ())) == target for v in eqn.outvars)
            n += sum(count(sub) for sub in jax.core.jaxprs_in_params(eqn.params))
        return n

    return count(jax.make_jaxpr(run)(state, x).jaxpr)


@pytest.mark.parametrize(
    "spec, full, t",
    [
        (
            FastVSpec(start=3, stop=19, layer=2),
            RecordFastV(start=3, stop=19, layer=2, full=True),
            24,
        ),
        (TodreSpec(3, 290, layer=2), FullTodre(3, 290, layer=2), 300),
        (FeatherSpec(3, 19, grid=(4, 4), layers=(2,), ratios=(0.5,), stride=2), None, 24),
    ],
)
def test_no_attention_matrix_beyond_the_fused_attention(model, spec, full, t):
    """The spec's layers add no [T, T] logits to those the fused attention of every layer
    processing all T tokens holds (ToDRE's key mass runs over blocks of fewer queries)."""
    x = ids(b=1, t=t)
    layers = model.config.num_layers
    per_layer = _square_logits(model, None, x) / layers
    full_length = sum(n == t for n in spec.tokens_per_layer(layers, t))
    assert _square_logits(model, spec, x) == per_layer * full_length
    if full is not None:  # the count does see a materialised matrix
        assert _square_logits(model, full, x) > per_layer * full_length


@pytest.mark.slow
def test_feather_scores_equal_a_materialised_numpy_matrix(model):
    """FEATHER's criterion: the last row of the full no-RoPE q . K^T matrix of layer l's own
    projections (NumPy), restricted to the image keys, softmaxed, head-averaged."""
    x = ids(t=24, seed=5)
    spec = FeatherSpec(3, 19, grid=(4, 4), layers=(1,), ratios=(0.5,), stride=2)
    out = run(model, x, prune=spec, hidden=True)
    h = np.asarray(out.hidden_states[1], np.float64)  # input of layer 1
    block = model.layers[1]
    w = np.asarray(block.input_layernorm.scale[...], np.float64)
    normed = h / np.sqrt((h**2).mean(-1, keepdims=True) + model.config.rms_norm_eps) * w
    attn = block.self_attn
    q = normed @ np.asarray(attn.q_proj.kernel[...], np.float64)
    k = normed @ np.asarray(attn.k_proj.kernel[...], np.float64)
    hd, g = model.config.head_dim, model.config.num_groups
    q = q.reshape(2, 24, -1, hd)
    k = np.repeat(k.reshape(2, 24, -1, hd), g, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd)  # the whole [T, S] matrix
    z = logits[:, :, -1, 3:19]
    p = np.exp(z - z.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)).mean(1)
    assert _max(out.prune_info["scores_1"], want) < 1e-5
