"""FoPru (``pruneax.tokens.focal_select`` / ``focal_significance``) against a NumPy transcription
of the published ``focal_prunning`` (rank) and its ``FocalPrunning`` class (row), index for
index, at LLaVA-1.5's shape (N = 576 patches on a 24 x 24 grid, 16 heads) and odd ones; and
the contract: sorted unique int32, vmap = loop, bfloat16 = float32 picks, no retrace.

The published function takes the patch-to-patch attention [B, H, N, N] (N must be a square for
"row", so the CLS row and column are not in it): rows of such a sub-matrix do not sum to 1, so
both s1 and s2 vary and the variance rule matters; the tests draw both cases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pruneax.tokens as T
from tests.oracles import np_focal_select as np_focal_rank
from tests.oracles import np_focal_significance as np_significance


def assert_same_picks(got: np.ndarray, scores: np.ndarray, k: int, rtol: float = 2e-6):
    """Equal to the oracle's top-k, except that tokens whose significance is within ``rtol``
    of the cut (float32 vs float64 rounding; the published ``torch.sort`` is unstable there
    anyway) may be exchanged; the number of such exchanges is returned."""
    sig = np_significance(scores)
    want = np_focal_rank(scores, k)
    cut = np.sort(sig)[::-1][k - 1]
    swapped = np.setxor1d(got, want)
    assert np.all(np.abs(sig[swapped] - cut) <= rtol * abs(cut)), (swapped, sig[swapped], cut)
    return len(swapped) // 2


def np_focal_row(scores: np.ndarray, keep_rows: int) -> np.ndarray:
    """The ``FocalPrunning`` class's row strategy (the function's buffer has a shape bug)."""
    sig = np_significance(scores)
    n = sig.shape[0]
    side = int(np.sqrt(n))
    per_row = sig.reshape(side, side).sum(axis=-1)
    order = np.argsort(-per_row, kind="stable")
    if keep_rows < side:
        assert per_row[order[keep_rows - 1]] - per_row[order[keep_rows]] > 1e-7
    picked = np.arange(n).reshape(side, side)[order[:keep_rows], :].reshape(-1)
    return np.sort(picked)


def patch_attention(rng, heads: int, n: int, with_cls: bool) -> np.ndarray:
    """Softmax-of-Gaussian attention over 1 + n tokens, CLS row / column dropped (with_cls),
    or a full row-stochastic n x n matrix (s2 constant: s1 must win)."""
    t = n + 1 if with_cls else n
    logits = 2.0 * rng.normal(size=(heads, t, t))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p[:, 1:, 1:] if with_cls else p).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("heads", "n", "k"), [(16, 576, 64), (16, 576, 192), (3, 49, 10)])
def test_rank_equals_the_published_function(seed, heads, n, k):
    rng = np.random.default_rng(seed)
    for with_cls in (True, False):
        a = patch_attention(rng, heads, n, with_cls)
        got = np.asarray(T.focal_select(a, k))
        assert len(np.unique(got)) == k
        assert assert_same_picks(got, a, k) <= 1
        np.testing.assert_allclose(T.focal_significance(a), np_significance(a), rtol=1e-5)


def test_the_variance_rule_picks_each_side():
    rng = np.random.default_rng(0)
    full = patch_attention(rng, 4, 16, with_cls=False)  # rows sum to 1: s2 constant
    m = full.mean(0)
    np.testing.assert_allclose(T.focal_significance(full), m.mean(axis=0), rtol=1e-6)
    # a matrix whose rows carry the signal (each query spends a different mass): s2 wins
    rows = np.linspace(0.1, 1.0, 16)[:, None] * np.full((16, 16), 1 / 16)
    np.testing.assert_allclose(T.focal_significance(rows), rows.mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("n", "rows"), [(576, 2), (576, 8), (49, 3)])
def test_row_equals_the_published_class(seed, n, rows):
    rng = np.random.default_rng(10 + seed)
    a = patch_attention(rng, 8, n, with_cls=True)
    side = int(np.sqrt(n))
    got = np.asarray(T.focal_select(a, rows * side, strategy="row"))
    np.testing.assert_array_equal(got, np_focal_row(a, rows))
    assert len(set(got // side)) == rows  # whole rows


def test_row_on_a_rectangular_grid():
    rng = np.random.default_rng(3)
    a = patch_attention(rng, 2, 12, with_cls=True)  # 3 rows x 4 cols
    sig = np_significance(a)
    best = np.argsort(-sig.reshape(3, 4).sum(1), kind="stable")[:2]
    want = np.sort((best[:, None] * 4 + np.arange(4)).reshape(-1))
    np.testing.assert_array_equal(T.focal_select(a, 8, strategy="row", grid=(3, 4)), want)


def test_contract_vmap_dtype_and_no_retrace(compile_counter):
    rng = np.random.default_rng(5)
    a = np.stack([patch_attention(rng, 4, 36, with_cls=True) for _ in range(3)])
    fn = jax.jit(jax.vmap(lambda x: T.focal_select(x, 12, strategy="row")))
    batched = np.asarray(fn(a))
    for b in range(3):
        np.testing.assert_array_equal(batched[b], T.focal_select(a[b], 12, strategy="row"))
    idx = T.focal_select(a[0], 7)
    assert idx.dtype == jnp.int32 and np.all(np.diff(np.asarray(idx)) > 0)
    half = jnp.asarray(a[0], jnp.bfloat16)
    assert T.focal_significance(half).dtype == jnp.float32
    # bf16 picks equal the f32 picks of the bf16-rounded input
    np.testing.assert_array_equal(
        T.focal_select(half, 7), T.focal_select(np.asarray(half, np.float32), 7)
    )
    T.focal_select(a[0], 7)  # compiled above for this shape / k
    with compile_counter() as cc:
        for b in range(1, 3):
            jax.block_until_ready(T.focal_select(a[b], 7))
    assert cc.count == 0, cc.messages


# ------------------------------------------------------------------------------ in the VLM


def test_vlm_fopru_equals_the_hand_run_selection():
    from flax import nnx

    from pruneax.models.llama import llm_config
    from pruneax.models.vit import ViTConfig
    from pruneax.models.vlm import VISION_SELECT_METHODS, VLM, VisualSelect, VLMConfig
    from tests._models import random_model

    vision = ViTConfig(
        image_size=24, patch_size=4, num_channels=3, hidden_size=32, num_layers=4, num_heads=4,
        mlp_dim=64, num_classes=0, pre_norm=True, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    llm = llm_config("tiny", vocab_size=40, num_layers=2, hidden_size=48, intermediate_size=64)
    config = VLMConfig(vision=vision, llm=llm)
    vlm = random_model(VLM, config, 0, 0.35, unit_embedding=True)
    images = jnp.asarray(np.random.default_rng(4).normal(size=(3, 24, 24, 3)), jnp.float32)
    assert "fopru" in VISION_SELECT_METHODS
    feats, attn = vlm.encode(images, attention_at=(config.feature_layer - 1,))
    patches = np.asarray(attn[config.feature_layer - 1])[:, :, 1:, 1:]  # CLS row / column out
    for strategy, k in (("rank", 9), ("row", 12)):  # grid 6 x 6: 2 whole rows
        select = VisualSelect("fopru", keep=k, options={"strategy": strategy})
        tokens, kept = nnx.jit(lambda m, x, s=select: m.select_visual(x, select=s))(vlm, images)
        for b in range(3):
            if strategy == "rank":
                assert assert_same_picks(np.asarray(kept[b]), patches[b], k) == 0
            else:
                np.testing.assert_array_equal(kept[b], np_focal_row(patches[b], 2))
        want = vlm.projector(jnp.take_along_axis(feats[:, 1:], kept[..., None], axis=1))
        scale = max(1.0, float(jnp.abs(want).max()))
        np.testing.assert_allclose(tokens, want, atol=1e-5 * scale)
    with pytest.raises(ValueError, match="k must be a multiple of the grid width 6"):
        vlm.select_visual(images, select=VisualSelect("fopru", keep=8, options={"strategy": "row"}))
    with pytest.raises(ValueError, match="takes no options"):
        VisualSelect("fopru", keep=8, options={"contextual": 2})
