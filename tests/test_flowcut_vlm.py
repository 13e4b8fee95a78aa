"""FlowCut as a pre-LLM method of the VLM (``VisualSelect("flowcut")``): the vision blocks up to
the feature layer run under ``PruningPlan.flowcut`` with ``select_layer = feature_layer - 1``
(LLaVA-1.5: 22), so exactly ``k`` patches reach the projector, in original order.

The reference is a hand-run pipeline: the NumPy transcription of the published encoder loop
(``tests/test_flowcut.py``: its sequence really shrinks) picks the patches; pruneax's dense
vision blocks run on the shortened sequences with those picks gathered in between; the CLS is
dropped and the projector applied. The VLM's LLM input must equal it to 1e-5, batched, jitted.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pruneax.models as M
from pruneax.models.llama import llm_config
from pruneax.models.vit import PruningPlan, ViTConfig
from pruneax.models.vlm import VISION_SELECT_METHODS, VLM, VisualSelect, VLMConfig
from tests._models import random_model, vit_block_weights
from tests.test_flowcut import np_published_encoder

VISION = ViTConfig(
    image_size=24, patch_size=4, num_channels=3, hidden_size=32, num_layers=6, num_heads=4,
    mlp_dim=64, num_classes=0, pre_norm=True, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
N = VISION.num_patches  # 36
LLM = llm_config("tiny", vocab_size=40, num_layers=2, hidden_size=48, intermediate_size=64)
CONFIG = VLMConfig(vision=VISION, llm=LLM)  # vision_layer -2: features after block 4 (h = 5)
H = CONFIG.feature_layer
B, P, Q, K = 4, 2, 3, 6


@pytest.fixture(scope="module")
def setup():
    vlm = random_model(VLM, CONFIG, 0, 0.35, unit_embedding=True)
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(B, *VISION.image_hw, 3)), jnp.float32)
    prefix = jnp.asarray(rng.integers(0, LLM.vocab_size, (B, P)), jnp.int32)
    question = jnp.asarray(rng.integers(0, LLM.vocab_size, (B, Q)), jnp.int32)
    emb = np.asarray(vlm.vision.pre_norm(vlm.vision.embed(images)), np.float32)
    return vlm, images, prefix, question, emb, vit_block_weights(vlm.vision)[:H]


@functools.partial(nnx.jit, static_argnames="select")
def embed(vlm, images, prefix, question, *, select):
    return vlm.embed_inputs(images, prefix, question, select=select)


def hand_run(vlm, emb, keeps, select_layer):
    """Dense pruneax blocks 0 .. H - 1 on the really shortened sequence of one example (the
    oracle's picks gathered after each scoring block), CLS dropped, projector."""
    h, current = jnp.asarray(emb)[None], np.arange(N)
    for i in range(H):
        h = vlm.vision.blocks[i](h)[0]
        if i < select_layer and len(keeps[i][0]) < len(current):
            pos = np.searchsorted(current, keeps[i][0])
            h = jnp.concatenate([h[:, :1], h[:, 1 + pos]], axis=1)
            current = keeps[i][0]
    return np.asarray(vlm.projector(h[:, 1:])[0]), current


def test_llm_input_equals_the_hand_run_pipeline(setup):
    vlm, images, prefix, question, emb, blocks = setup
    select = VisualSelect("flowcut", keep=K)
    embeds, kept = embed(vlm, images, prefix, question, select=select)
    assert embeds.shape == (B, vlm.prompt_length(P, Q, select), LLM.hidden_size)
    assert kept.shape == (B, K) and kept.dtype == jnp.int32
    amounts = set()
    for b in range(B):
        trace = {}
        _, keeps = np_published_encoder(emb[b : b + 1], blocks, K + 1, H - 1, 1e-5, trace)
        assert min(trace["margins"]) > 2e-6  # no near-tie: the comparison is meaningful
        amounts.add(tuple(len(kk[0]) for kk in keeps))
        want, current = hand_run(vlm, emb[b], keeps, H - 1)
        assert np.asarray(kept[b]).tolist() == current.tolist() == keeps[-1][0].tolist()
        got = np.asarray(embeds[b, P : P + K])
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
        text = np.asarray(vlm.llm.embed(jnp.concatenate([prefix[b], question[b]])[None])[0])
        np.testing.assert_array_equal(np.asarray(embeds[b, :P]), text[:P])
        np.testing.assert_array_equal(np.asarray(embeds[b, P + K :]), text[P:])
    assert len(amounts) > 1, amounts  # the examples pruned different adaptive amounts


def test_batch_max_matches_the_published_batch_and_logits_follow(setup):
    vlm, images, prefix, question, emb, blocks = setup
    select = VisualSelect("flowcut", keep=K, options={"batch_count": "max"})
    embeds, kept = embed(vlm, images, prefix, question, select=select)
    _, keeps = np_published_encoder(emb, blocks, K + 1, H - 1, 1e-5)
    assert np.asarray(kept).tolist() == keeps[-1].tolist()
    out = nnx.jit(lambda m, *a: m(*a, select=select))(vlm, images, prefix, question)
    np.testing.assert_array_equal(np.asarray(out.visual_kept), np.asarray(kept))
    want = vlm.llm(inputs_embeds=embeds).logits
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_equals_the_vit_under_the_default_flowcut_plan(setup):
    """vision_layer -2 = ``PruningPlan.flowcut``'s default select_layer (num_layers - 2; LLaVA-1.5:
    22 of 24): the VLM's kept patches and visual tokens are the ViT's ``kept[-1]`` and its
    projected hidden state ``H`` (CLS dropped)."""
    vlm, images, prefix, question, *_ = setup
    plan = PruningPlan.flowcut(K, num_layers=VISION.num_layers)
    assert plan.stages[-1].select_layer == H - 1
    out = vlm.vision(images, plan=plan, return_hidden_states=True)
    embeds, kept = embed(vlm, images, prefix, question, select=VisualSelect("flowcut", keep=K))
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(out.kept[-1]))
    want = np.asarray(vlm.projector(out.hidden_states[H][:, 1:]))
    got = np.asarray(embeds[:, P : P + K])  # eager ViT vs jitted VLM: 1e-5 of the scale
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_plan_flops_and_options():
    assert "flowcut" in VISION_SELECT_METHODS and "flowcut" not in M.VLM_SELECT_METHODS
    s = VisualSelect("flowcut", keep=0.25)
    assert s.in_vision and s.registry_name is None and s.method_options() == {}
    assert s.num_kept(576) == 144
    # the projector runs on the k kept tokens only; the LLM sees k as for any method
    kw = dict(prefix_len=P, question_len=Q)
    top = M.vlm_prefill_flops(CONFIG, select=VisualSelect("topk", keep=K), **kw)
    flow = M.vlm_prefill_flops(CONFIG, select=VisualSelect("flowcut", keep=K), **kw)
    d, dv = LLM.hidden_size, VISION.hidden_size
    assert top - flow == 2.0 * (N - K) * (dv * d + d * d)


def test_bad_inputs_name_the_argument(setup):
    vlm, images, prefix, question, *_ = setup
    with pytest.raises(ValueError, match="batch_count"):
        VisualSelect("flowcut", keep=4, options={"batch_count": "min"})
    with pytest.raises(ValueError, match="takes no options"):
        VisualSelect("flowcut", keep=4, options={"alpha": 0.1})
    with pytest.raises(ValueError, match="keep"):
        embed(vlm, images, prefix, question, select=VisualSelect("flowcut", keep=N + 1))
    no_cls = VLMConfig(
        vision=ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16,
                         num_layers=3, num_heads=2, mlp_dim=32, num_classes=0,
                         class_token=False, pool="mean"),
        llm=LLM,
    )  # fmt: skip
    siglip_like = VLM(no_cls, rngs=nnx.Rngs(0))
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="CLS"):
        siglip_like.embed_inputs(x, None, None, select=VisualSelect("flowcut", keep=4))
    first = VLM(VLMConfig(vision=no_cls.vision, llm=LLM, vision_layer=1), rngs=nnx.Rngs(0))
    del first  # no CLS either; the block-0 case needs a CLS encoder:
    shallow = VLMConfig(vision=VISION, llm=LLM, vision_layer=1)
    with pytest.raises(ValueError, match="vision_layer"):
        VLM(shallow, rngs=nnx.Rngs(0)).embed_inputs(
            images[:1], None, None, select=VisualSelect("flowcut", keep=4)
        )
