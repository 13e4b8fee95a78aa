"""ToMe and EViT inside the ViT against NumPy transcriptions of the published models.

``tests/oracles.py``: ``np_tome_vit_blocks`` (``facebookresearch/ToMe``: ``ToMeBlock`` merges
after the attention residual and before the MLP, proportional attention, the published output
order ``[unmerged A; B]`` feeding the next merge) and ``np_evit_vit_blocks``
(``youweiliang/evit``: top-k by CLS attention and one fused token after the attention residual,
before the MLP). Several consecutive merging / fusing blocks on a random small ViT; tokens,
sizes, surviving patches and logits are compared.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import pruneax.models as M
from pruneax.models.vit import PruneStage, PruningPlan
from tests import oracles as O
from tests._models import random_model, vit_block_weights

# 56x56 images, 4x4 patches: 196 patches + CLS = 197 tokens, as ViT-B/16 at 224.
BASE = M.ViTConfig(
    image_size=56, patch_size=4, num_channels=3, hidden_size=32, num_layers=4, num_heads=2,
    mlp_dim=64, num_classes=5,
)  # fmt: skip
ATOL = 1e-5


def _np(a) -> np.ndarray:
    return np.asarray(a, np.float32)


def _setup(config, seed=0):
    model = random_model(M.ViT, config, seed, 0.2)
    x = jax.random.normal(jax.random.key(seed + 1), (2, *config.image_hw, config.num_channels))
    return model, x, _np(model.embed(x)), vit_block_weights(model)


def _logits(model: M.ViT, tokens: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The head on oracle tokens in NumPy: final LayerNorm, CLS or size-weighted mean pool."""
    cfg = model.config
    norm = (_np(model.norm.scale[...]), _np(model.norm.bias[...]))
    t = O.np_layer_norm(tokens, *norm, cfg.layer_norm_eps)
    if cfg.pool == "mean":  # pruneax weighs merged tokens by size (timm's avg pool does not)
        w = size[cfg.num_prefix :, None]
        pooled = (t[cfg.num_prefix :] * w).sum(0) / w.sum()
    else:
        pooled = t[0]
    return pooled @ _np(model.head.kernel[...]) + _np(model.head.bias[...])


def _forward(model, x, plan):
    return nnx.jit(lambda m, x: m(x, plan=plan, return_hidden_states=True))(model, x)


@pytest.mark.parametrize("class_token", [True, False])
def test_multi_layer_tome_matches_the_published_blocks(class_token):
    config = BASE if class_token else dataclasses.replace(BASE, class_token=False, pool="mean")
    p = config.num_prefix
    model, x, emb, blocks = _setup(config)
    rs = [30, 30, 30, 0]  # three consecutive merging blocks, then a plain one
    plan = PruningPlan.tome(30, num_layers=4, num_patches=196, num_prefix=p)
    assert [s.layer for s in plan.stages] == [1, 2, 3] and all(s.in_block for s in plan.stages)
    out = _forward(model, x, plan)
    for b in range(x.shape[0]):
        trace = {}
        outs, size, rep = O.np_tome_vit_blocks(emb[b], blocks, rs, class_token, trace=trace)
        assert min(trace["margins"]) > 1e-5, "near-tie in a matching: choose another seed"
        for i, want in enumerate(outs):  # the stream after every block, row for row
            np.testing.assert_allclose(_np(out.hidden_states[i + 1][b]), want, atol=ATOL)
        np.testing.assert_array_equal(_np(out.sizes[b]), size)
        np.testing.assert_array_equal(np.asarray(out.kept[-1][b]), rep[p:] - p)
        np.testing.assert_allclose(_np(out.logits[b]), _logits(model, outs[-1], size), atol=ATOL)
    assert out.hidden.shape[1] == p + 196 - 90


def test_second_merge_splits_over_the_published_order():
    """The old split over the original token order merges other groups at the second merge
    (197 tokens, r = 30: the issue counted 41-47 of 137 groups)."""
    _, _, emb, blocks = _setup(BASE)
    differ = []
    for b in range(emb.shape[0]):
        y, _, keys = O.np_vit_attention(emb[b], blocks[0])
        y, size, first, _ = O.np_tome_published(y, keys.mean(0), 30, None)
        y = O.np_vit_mlp(y, blocks[0])
        y, _, keys = O.np_vit_attention(y, blocks[1], size)
        _, _, out_pos, dest = O.np_tome_published(y, keys.mean(0), 30, size)
        order = np.argsort(first)  # the same tokens in original order
        m = keys.mean(0)[order]
        _, _, out_pos2, dest2 = O.np_tome_published(y[order], m, 30, size[order])
        groups = lambda o, d, pos: {tuple(sorted(pos[np.flatnonzero(d == q)])) for q in o}
        published = groups(out_pos, dest, np.arange(len(y)))
        old = groups(out_pos2, dest2, order)
        assert len(published) == len(old) == 137
        differ.append(len(published - old))
    assert min(differ) >= 10, differ


def test_multi_layer_evit_matches_the_published_blocks():
    config = dataclasses.replace(BASE, image_size=32)  # 64 patches
    model, x, emb, blocks = _setup(config, seed=3)
    plan = PruningPlan.at((2, 3), 0.7, "evit")  # fuses inside blocks 1 and 2
    out = _forward(model, x, plan)
    assert plan.token_counts(64) == (46, 34)
    assert out.hidden_states[2].shape[1] == 1 + 46  # block 1's MLP ran on the kept tokens
    for b in range(x.shape[0]):
        outs, label = O.np_evit_vit_blocks(emb[b], blocks, [1.0, 0.7, 0.7, 1.0])
        # pruneax keeps original order, the published code descending CLS attention: match
        # rows by origin (patch id; synthetic tokens in the order they were made)
        ids = np.asarray(out.kept[-1][b])
        synth = np.flatnonzero(ids < 0)
        got_label = np.concatenate([[0], ids + 1])  # CLS, then input positions
        got_label[1 + synth] = [-2, -3][-len(synth) :]
        want = np.argsort(label, kind="stable")
        got = np.argsort(got_label, kind="stable")
        np.testing.assert_array_equal(got_label[got], label[want])
        np.testing.assert_allclose(_np(out.hidden_states[4][b])[got], outs[-1][want], atol=ATOL)
        np.testing.assert_allclose(
            _np(out.logits[b]), _logits(model, outs[-1], np.ones(len(label))), atol=ATOL
        )


def test_between_blocks_placement_is_an_option():
    """``placement="between_blocks"`` fuses after the MLP (the old placement): block 1's MLP
    sees every token and the result differs from the published in-block fusion."""
    config = dataclasses.replace(BASE, image_size=32)
    model, x, _, _ = _setup(config, seed=3)
    between = PruningPlan((PruneStage(2, 0.5, "evit", placement="between_blocks"),))
    inside = PruningPlan((PruneStage(2, 0.5, "evit"),))
    a, b = _forward(model, x, between), _forward(model, x, inside)
    assert a.hidden_states[2].shape[1] == 65 and b.hidden_states[2].shape[1] == 34
    np.testing.assert_array_equal(a.kept[0], b.kept[0])  # same attention, same selection
    assert np.abs(_np(a.logits) - _np(b.logits)).max() > 1e-4
