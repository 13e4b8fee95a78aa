"""VisionZip / VisionDrop's vision stage as a ViT plan (``ContextualStage``) against a hand-run
pipeline: the dense pruneax blocks up to the stage, the published VisionZip selection and merge
on block ``layer - 1``'s CLS row (summed over heads) and key states (``tests/oracles.py``
``np_visionzip``), then the remaining dense blocks on ``[CLS, dominant, contextual]`` and the
head. Logits must agree to 1e-5 of their scale; ``kept`` marks the contextual tokens -1.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models.vit import ContextualStage, PruningPlan, ViT, ViTConfig, vit_flops
from tests._models import random_model
from tests.oracles import np_visionzip

CFG = ViTConfig(
    image_size=24, patch_size=4, num_channels=3, hidden_size=32, num_layers=4, num_heads=4,
    mlp_dim=64, num_classes=10, pre_norm=True, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
N = CFG.num_patches  # 36


@pytest.fixture(scope="module")
def setup():
    vit = random_model(ViT, CFG, 0, 0.35)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(3, 24, 24, 3)), jnp.float32)
    return vit, images


def hand_run(vit, images, layer, keep, c):
    """The residual stream after the last block (before the final norm and head) and the
    dominant picks, with the stage done by ``np_visionzip``."""
    x = vit.embed(images)
    if vit.pre_norm is not None:
        x = vit.pre_norm(x)
    for i in range(layer):
        if i == layer - 1:
            blk = vit.blocks[i]
            keys = blk.attn.key(blk.norm1(x)).reshape(*x.shape[:2], CFG.num_heads, -1)
            x, probs, _ = blk(x, return_attention=True)
        else:
            x = vit.blocks[i](x)[0]
    probs, keys, xs = np.asarray(probs), np.asarray(keys), np.asarray(x)
    rows, picks = [], []
    for b in range(xs.shape[0]):
        score = probs[b, :, 0, 1:].sum(axis=0)
        order = np.sort(score)[::-1]
        assert order[keep - c - 1] - order[keep - c] > 1e-6  # no near-tie at the cut
        if c:
            merged, dom = np_visionzip(score, xs[b, 1:], keys[b, 1:].mean(axis=1), keep - c, c)
        else:  # no contextual token (the published step would divide by 0): plain top-k
            dom, merged = np.sort(np.argsort(-score, kind="stable")[:keep]), xs[b, :0]
        rows.append(np.concatenate([xs[b, :1], xs[b, 1:][dom], merged]))
        picks.append(dom)
    x = jnp.asarray(np.stack(rows))
    for i in range(layer, CFG.num_layers):
        x = vit.blocks[i](x)[0]
    return x, np.stack(picks)


@pytest.mark.parametrize(("layer", "keep", "c"), [(2, 12, 3), (1, 8, 1), (3, 5, 0)])
def test_plan_equals_the_hand_run_pipeline(setup, layer, keep, c):
    vit, images = setup
    plan = PruningPlan((ContextualStage(layer=layer, keep=keep, contextual=c),))
    out = nnx.jit(lambda m, x: m(x, plan=plan))(vit, images)
    assert out.kept[-1].shape == (3, keep)
    want, dom = hand_run(vit, images, layer, keep, c)
    np.testing.assert_array_equal(out.kept[-1][:, : keep - c], dom)
    np.testing.assert_array_equal(out.kept[-1][:, keep - c :], -1)  # synthetic tokens
    hidden = vit(images, plan=plan, return_hidden_states=True).hidden_states[-1]
    assert hidden.shape == (3, 1 + keep, CFG.hidden_size)
    scale = max(1.0, float(jnp.abs(want).max()))
    np.testing.assert_allclose(hidden, want, atol=1e-5 * scale)


def test_default_contextual_flops_and_errors(setup):
    vit, images = setup
    s = ContextualStage(layer=2, keep=0.5)
    assert s.kept(N) == 18 and s.num_contextual(N) == 2  # 18 // 8
    plan = PruningPlan((s,))
    dense = vit_flops(CFG)
    assert vit_flops(CFG, plan=plan) < dense
    assert vit(images, plan=plan).logits.shape == (3, 10)
    for kw, match in (
        (dict(layer=0, keep=4), "layer must be an int >= 1"),
        (dict(layer=1, keep=0), "keep as a count must be >= 1"),
        (dict(layer=1, keep=1.5), "keep as a ratio must be in"),
        (dict(layer=1, keep=4, contextual=-1), "contextual must be an int >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            ContextualStage(**kw)
    with pytest.raises(ValueError, match="contextual must be < keep = 4"):
        vit(images, plan=PruningPlan((ContextualStage(layer=1, keep=4, contextual=4),)))
