"""VisionDrop's vision stage (= VisionZip's) as a pre-LLM method of the VLM
(``VisualSelect("visiondrop")``), and the whole VisionDrop pipeline (vision stage + LLM stages).

Oracle: a NumPy transcription of the published batched ``CLIPVisionTower_VisionZip.forward``
(Ruixxxx/VisionDrop@b9d5df9 ``llava/visionzip/clip_encoder.py``) fed with the feature block's
attention probabilities, its output hidden states and its key states (computed here from the
dense pruneax blocks): CLS + the top d - 1 patches by the head-summed CLS attention row (in
original order), the other patches merged into c contextual tokens; then the projector. The
VLM's LLM input must equal it to 1e-5.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pruneax.models as M
from pruneax.models.llama import VisionDropSpec, llm_config
from pruneax.models.vit import ViTConfig
from pruneax.models.vlm import VISION_SELECT_METHODS, VLM, VisualSelect, VLMConfig
from tests._models import random_model

VISION = ViTConfig(
    image_size=24, patch_size=4, num_channels=3, hidden_size=32, num_layers=6, num_heads=4,
    mlp_dim=64, num_classes=0, pre_norm=True, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
N = VISION.num_patches  # 36
LLM = llm_config("tiny", vocab_size=40, num_layers=4, hidden_size=48, intermediate_size=64)
CONFIG = VLMConfig(vision=VISION, llm=LLM)  # vision_layer -2: features after block 4 (h = 5)
H = CONFIG.feature_layer
B, P, Q, K, C = 3, 2, 3, 10, 3  # 10 tokens: CLS + 6 dominant patches + 3 contextual


@pytest.fixture(scope="module")
def setup():
    vlm = random_model(VLM, CONFIG, 0, 0.35, unit_embedding=True)
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.normal(size=(B, *VISION.image_hw, 3)), jnp.float32)
    prefix = jnp.asarray(rng.integers(0, LLM.vocab_size, (B, P)), jnp.int32)
    question = jnp.asarray(rng.integers(0, LLM.vocab_size, (B, Q)), jnp.int32)
    return vlm, images, prefix, question


@functools.partial(nnx.jit, static_argnames="select")
def embed(vlm, images, prefix, question, *, select):
    return vlm.embed_inputs(images, prefix, question, select=select)


def block_internals(vlm, images):
    """The feature block's attention probabilities [B, heads, T, T], output [B, T, Dv] and
    key states [B, T, heads, hd], from the dense pruneax blocks."""
    v = vlm.vision
    x = v.pre_norm(v.embed(images))
    for i in range(H - 1):
        x = v.blocks[i](x)[0]
    blk = v.blocks[H - 1]
    keys = blk.attn.key(blk.norm1(x)).reshape(*x.shape[:2], VISION.num_heads, -1)
    out, probs, _ = blk(x, return_attention=True)
    return np.asarray(probs, np.float64), np.asarray(out, np.float64), np.asarray(keys, np.float64)


def numpy_visionzip(attn, hidden, keys, dominant, contextual):
    """The published forward, batched as written (dominant counts the CLS)."""
    b, t, _ = hidden.shape
    cls_sum = attn[:, :, 0, 1:].sum(axis=1)  # [B, N]
    order = np.argsort(-cls_sum, axis=1, kind="stable")
    for r in range(b):  # no near-tie at the cut
        s = cls_sum[r, order[r]]
        assert s[dominant - 2] - s[dominant - 1] > 1e-6
    top = order[:, : dominant - 1] + 1
    all_idx = np.concatenate([np.zeros((b, 1), int), top], axis=1)
    mask = np.ones((b, t), bool)
    np.put_along_axis(mask, all_idx, False, axis=1)
    dom = np.stack([hidden[r][~mask[r]] for r in range(b)])  # original order, CLS first
    metric = keys.mean(axis=2)
    out, targets_all = [], []
    for r in range(b):
        m = metric[r][mask[r]]
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        hf = hidden[r][mask[r]]
        step = max(1, m.shape[0] // contextual)
        tgt = np.arange(0, m.shape[0], step)[:contextual]
        others = np.setdiff1d(np.arange(m.shape[0]), tgt)
        sim = m[others] @ m[tgt].T
        best = np.sort(sim, axis=1)
        assert np.all(best[:, -1] - best[:, -2] > 1e-6)
        one_hot = np.zeros((len(others), contextual))
        one_hot[np.arange(len(others)), sim.argmax(axis=1)] = 1
        counts = np.maximum(one_hot.sum(axis=0), 1)[:, None]
        ctx = hf[tgt] + one_hot.T @ hf[others] / counts
        out.append(np.concatenate([dom[r], ctx]))
        targets_all.append(np.nonzero(mask[r])[0][tgt] - 1)  # patch indices
    return np.stack(out), np.sort(top - 1, axis=1), np.stack(targets_all)


def test_llm_input_equals_the_published_visionzip_forward(setup):
    vlm, images, prefix, question = setup
    select = VisualSelect("visiondrop", keep=K, options={"contextual": C})
    embeds, kept = embed(vlm, images, prefix, question, select=select)
    assert (
        embeds.shape
        == (B, P + K + Q, LLM.hidden_size)
        == (B, vlm.prompt_length(P, Q, select), LLM.hidden_size)
    )
    attn, hidden, keys = block_internals(vlm, images)
    tokens, dom, targets = numpy_visionzip(attn, hidden, keys, K - C, C)
    want = np.asarray(vlm.projector(jnp.asarray(tokens, jnp.float32)))
    got = np.asarray(embeds[:, P : P + K])
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    np.testing.assert_array_equal(kept[:, 0], -1)
    np.testing.assert_array_equal(kept[:, 1 : K - C], dom)
    np.testing.assert_array_equal(kept[:, K - C :], targets)


def test_default_contextual_and_no_contextual(setup):
    vlm, images, prefix, question = setup
    s = VisualSelect("visiondrop", keep=16)
    assert s.in_vision and s.registry_name is None and s.num_kept(N) == 16
    _, kept = embed(vlm, images, prefix, question, select=s)
    assert kept.shape == (B, 16)
    # 16 // 8 = 2 contextual tokens: CLS, 13 dominant patches (ascending), 2 targets
    assert np.all(np.diff(np.asarray(kept[:, 1:14]), axis=1) > 0)
    zero = VisualSelect("visiondrop", keep=5, options={"contextual": 0})
    embeds, kept = embed(vlm, images, prefix, question, select=zero)
    attn, hidden, _ = block_internals(vlm, images)
    top = np.sort(np.argsort(-attn[:, :, 0, 1:].sum(axis=1), axis=1, kind="stable")[:, :4], axis=1)
    np.testing.assert_array_equal(kept[:, 1:], top)
    want = vlm.projector(
        jnp.asarray(
            np.concatenate(
                [hidden[:, :1], np.take_along_axis(hidden[:, 1:], top[..., None], 1)], 1
            ),
            jnp.float32,
        )
    )
    scale = max(1.0, float(jnp.abs(want).max()))  # eager vs jitted: 1e-5 of the scale
    np.testing.assert_allclose(embeds[:, P : P + 5], want, atol=1e-5 * scale)


def test_full_visiondrop_pipeline_runs_and_generates(setup):
    """Vision stage (10 tokens) + LLM stages (10 -> 6 -> 4); the LLM part equals feeding the
    same embeddings to the LLM with the spec."""
    vlm, images, prefix, question = setup
    select = VisualSelect("visiondrop", keep=K, options={"contextual": C})
    prune = VisionDropSpec(P, P + K, layers=(1, 3), tokens=((4, 2), (3, 1)))
    out = nnx.jit(lambda m, *a: m(*a, select=select, prune=prune))(vlm, images, prefix, question)
    embeds, kept = embed(vlm, images, prefix, question, select=select)
    want = vlm.llm(inputs_embeds=embeds, prune=prune)
    scale = max(1.0, float(jnp.abs(want.logits).max()))
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(want.logits), atol=1e-5 * scale)
    np.testing.assert_array_equal(out.visual_kept, kept)
    assert out.logits.shape == (B, P + 4 + Q, LLM.vocab_size)
    kw = dict(prefix_len=P, question_len=Q)
    full = M.vlm_prefill_flops(CONFIG, **kw)
    vd = M.vlm_prefill_flops(CONFIG, select=select, prune=prune, **kw)
    assert vd < M.vlm_prefill_flops(CONFIG, select=select, **kw) < full


def test_encoder_without_cls_scores_by_received_attention():
    no_cls = VLMConfig(
        vision=ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16,
                         num_layers=3, num_heads=2, mlp_dim=32, num_classes=0,
                         class_token=False, pool="mean"),
        llm=LLM,
    )  # fmt: skip
    vlm = random_model(VLM, no_cls, 1, 0.35, unit_embedding=True)
    images = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 3)), jnp.float32)
    select = VisualSelect("visiondrop", keep=6, options={"contextual": 2})
    _, kept = vlm.select_visual(images, select=select)
    assert kept.shape == (2, 6) and bool(jnp.all(kept >= 0))  # no CLS token among them
    _, attn = vlm.encode(images, attention_at=(no_cls.feature_layer - 1,))
    received = np.asarray(attn[no_cls.feature_layer - 1]).mean(axis=(1, 2))  # [B, N]
    top = np.sort(np.argsort(-received, axis=1, kind="stable")[:, :4], axis=1)
    np.testing.assert_array_equal(kept[:, :4], top)


def test_registry_and_errors(setup):
    vlm, images, prefix, question = setup
    assert "visiondrop" in VISION_SELECT_METHODS and "visiondrop" not in M.VLM_SELECT_METHODS
    with pytest.raises(ValueError, match="takes no options"):
        VisualSelect("visiondrop", keep=4, options={"batch_count": "max"})
    for bad in (K - 1, -1, 1.5):  # K - 1 leaves no dominant patch beside the CLS
        with pytest.raises(ValueError, match="options\\['contextual'\\]"):
            embed(
                vlm,
                images,
                prefix,
                question,
                select=VisualSelect("visiondrop", keep=K, options={"contextual": bad}),
            )
    with pytest.raises(ValueError, match="keep"):
        embed(vlm, images, prefix, question, select=VisualSelect("visiondrop", keep=N + 1))
