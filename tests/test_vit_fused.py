"""The ViT's fused attention and its [CLS]-row path against the explicit (materialised) path.

Oracles: ``Attention(..., return_attention=True)`` (explicit float32 softmax, unchanged) and a
NumPy transcription of ``softmax(q_0 K^T / sqrt(hd) + log size)``. A plan whose stages read
only the CLS row must keep the same tokens whether the model computes that row alone (fused
blocks) or materialises every block's probabilities (``return_attention=True``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models.vit import (
    Attention,
    Block,
    PruneStage,
    PruningPlan,
    ViT,
    apply_stage,
    cls_row_attention,
    vit_config,
)

B, T, D, H = 2, 17, 32, 4


def _randomize(module: nnx.Module, seed: int = 0, std: float = 0.3) -> nnx.Module:
    """Redraws every parameter ~ N(0, std^2) (LayerNorm scales 1 + N): the default 0.02 init
    gives near-uniform attention, where selections tie."""
    state = nnx.state(module, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [std * jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves, strict=True)]
    nnx.update(module, jax.tree.unflatten(tree, new))
    return module


def _x(seed=1, shape=(B, T, D)):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _sizes(seed=2):
    return jax.random.randint(jax.random.key(seed), (B, T), 1, 6).astype(jnp.float32)


@pytest.fixture(scope="module")
def attn():
    return _randomize(Attention(D, H, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("with_size", [False, True])
def test_fused_attention_matches_explicit(attn, with_size):
    x, size = _x(), (_sizes() if with_size else None)
    fused, none, _ = attn(x, size=size)
    explicit, probs, _ = attn(x, size=size, return_attention=True)
    assert none is None and probs.shape == (B, H, T, T)
    err = float(jnp.abs(fused - explicit).max())
    assert err < 1e-5, err
    if with_size:  # the bias matters: without it the output differs
        assert float(jnp.abs(attn(x)[0] - fused).max()) > 1e-3


@pytest.mark.parametrize("with_size", [False, True])
def test_fused_block_matches_explicit(with_size):
    cfg = vit_config("mnist/4", hidden_size=D, num_heads=H, mlp_dim=48, num_layers=1)
    blk = _randomize(Block(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(3)))
    x, size = _x(4), (_sizes(5) if with_size else None)
    fused, _, _ = blk(x, size=size)
    explicit, _, _ = blk(x, size=size, return_attention=True)
    err = float(jnp.abs(fused - explicit).max())
    assert err < 1e-5, err


@pytest.mark.parametrize("with_size", [False, True])
def test_cls_row_is_row_zero_of_the_probabilities(attn, with_size):
    x, size = _x(6), (_sizes(7) if with_size else None)
    out_row, row, _ = attn(x, size=size, return_cls_attention=True)
    out_full, probs, _ = attn(x, size=size, return_attention=True)
    assert row.shape == (B, H, T) and row.dtype == jnp.float32
    assert float(jnp.abs(row - probs[:, :, 0]).max()) < 1e-6
    assert float(jnp.abs(out_row - out_full).max()) < 1e-5
    with pytest.raises(ValueError, match="not both"):
        attn(x, return_attention=True, return_cls_attention=True)


def test_cls_row_attention_numpy_oracle():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(B, T, H, 8)).astype(np.float32)
    k = rng.normal(size=(B, T, H, 8)).astype(np.float32)
    size = rng.integers(1, 5, size=(B, T)).astype(np.float32)
    logits = np.einsum("bhd,bkhd->bhk", q[:, 0].astype(np.float64), k) / np.sqrt(8)
    logits = logits + np.log(size)[:, None, :]
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    bias = jnp.log(jnp.asarray(size))[:, None, None]
    got = cls_row_attention(jnp.asarray(q), jnp.asarray(k), bias)
    assert float(np.abs(np.asarray(got) - want).max()) < 1e-6
    with pytest.raises(ValueError, match="share B, H and hd"):
        cls_row_attention(jnp.asarray(q), jnp.asarray(k[:, :, :2]))


# ------------------------------------------------------------------------------ plans


@pytest.fixture(scope="module")
def vit():
    cfg = vit_config("mnist/4", hidden_size=D, num_heads=H, mlp_dim=48, num_layers=4)
    model = _randomize(ViT(cfg, rngs=nnx.Rngs(8)), seed=9, std=0.15)
    x = jax.random.normal(jax.random.key(10), (B, 28, 28, 1), jnp.float32)
    return model, x


@functools.partial(nnx.jit, static_argnames=("plan", "return_attention"))
def _call(model, x, plan, return_attention=False):
    return model(x, plan=plan, return_attention=return_attention)


PLANS = {
    "evit": PruningPlan.at((1, 3), 0.5, "evit"),
    "topk": PruningPlan.at((1, 2), 0.6, "topk"),
    "holov+kcenter": PruningPlan(
        (
            PruneStage(layer=1, keep=30, method="holov"),
            PruneStage(layer=3, keep=12, method="kcenter"),
        )
    ),
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if "+" in n else n for n in PLANS]
)
def test_plan_keeps_the_same_tokens_via_the_cls_row(vit, name):
    model, x = vit
    plan = PLANS[name]
    assert all(plan.cls_row_only(s.layer - 1) for s in plan.stages)
    row = _call(model, x, plan)  # the read blocks compute the CLS row alone
    full = _call(model, x, plan, return_attention=True)  # every block materialised
    assert len(row.kept) == len(full.kept) == len(plan.stages)
    for a, b in zip(row.kept, full.kept, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    err = float(jnp.abs(row.logits - full.logits).max())
    assert err < 1e-5, err
    # and the dense model is really pruned: a different result from no plan
    assert float(jnp.abs(_call(model, x, None).logits - row.logits).max()) > 1e-4


def test_received_attention_keeps_the_full_matrix():
    """HiPrune scores by attention received from every query: its blocks are not row-only, and
    a stage handed only the CLS row refuses to guess."""
    plan = PruningPlan.at(3, 8, "hiprune")
    assert not plan.cls_row_only(2) and not plan.cls_row_only(1)
    mixed = PruningPlan((PruneStage(layer=3, keep=8, method="hiprune", shallow_layer=2),))
    assert not mixed.cls_row_only(2)
    rng = np.random.default_rng(0)
    n, t = 16, 17
    logits = rng.normal(size=(B, H, t, t)).astype(np.float32)
    probs = jnp.asarray(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    x = jnp.asarray(rng.normal(size=(B, t, D)).astype(np.float32))
    kw = dict(
        size=jnp.ones((B, t)), patch_ids=jnp.broadcast_to(jnp.arange(n), (B, n)), num_prefix=1,
        grid=(4, 4), key=None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="full attention probabilities"):
        apply_stage(
            plan.stages[0], x, aux={1: {"attn": probs}, 2: {"cls_attn": probs[:, :, 0]}}, **kw
        )
    # a row-only stage gives the same result from the row as from the full matrix
    for method in ("evit", "topk"):
        stage = PruneStage(layer=3, keep=6, method=method)
        a = apply_stage(stage, x, aux={2: {"attn": probs}}, **kw)
        b = apply_stage(stage, x, aux={2: {"cls_attn": probs[:, :, 0]}}, **kw)
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=1e-6)
