"""pruneax.models.load_vlm against transformers' PaliGemmaForConditionalGeneration (eager
attention, CPU, float32): a tiny random PaliGemma (SigLIP tower 30x30 / patch 6 = 25 patches,
no CLS; linear projector; Gemma with one KV head, tied embeddings) saved with
``save_pretrained`` must give the same logits as transformers with its prefix-LM mask
(``token_type_ids == 0`` over the prompt; the causal logits differ, so the mask is tested) and
the same greedy tokens, also on a left-padded batch; the transformers 4.x key layout loads;
every pre-LLM method and in-LLM spec runs, and FasterVLM (which reads a [CLS] row SigLIP does
not have) ranks patches by the attention they receive.

Every parameter is redrawn (SigLIP LayerNorm scales 1 + N(0, 0.1^2), the rest of the tower and
the projector N(0, 0.1^2), every Gemma weight N(0, 0.3^2)) so logits are O(1), no bias is zero
and greedy generation does not just repeat a token.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models import FastVSpec, FeatherSpec, TodreSpec, read_checkpoint, write_safetensors
from pruneax.models.vlm import VLM_SELECT_METHODS, VisualSelect, load_vlm

NO_SELECT = VisualSelect()

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
N = 25
IMAGE = 99
PAD = 0
VISION = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=30,
    patch_size=6,
    vision_use_head=False,
)
TEXT = dict(
    model_type="gemma",
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=12,
    vocab_size=100,
    max_position_embeddings=128,
)


@pytest.fixture(scope="module")
def paligemma(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.PaliGemmaConfig(
        vision_config=VISION,
        text_config=TEXT,
        image_token_index=IMAGE,
        projection_dim=48,
        hidden_size=48,
        vocab_size=100,
    )
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision" in name and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "language_model" in name:  # also Gemma's unit-offset norm weights
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.config._attn_implementation = "eager"
    path = tmp_path_factory.mktemp("paligemma")
    model.save_pretrained(path, save_original_format=False)
    return model, path


@pytest.fixture(scope="module")
def vlm(paligemma):
    return load_vlm(paligemma[1])


@functools.partial(nnx.jit, static_argnames=("select", "prune", "logits_to_keep"))
def run(vlm, images, prefix, question, mask=None, *, select=NO_SELECT, prune=None, key=None,
        logits_to_keep=0):  # fmt: skip
    """``vlm(...)`` under one jit (much faster than eager dispatch for these small models)."""
    return vlm(
        images, prefix, question, attention_mask=mask, select=select, prune=prune, key=key,
        logits_to_keep=logits_to_keep,
    )  # fmt: skip


def images(b: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).normal(size=(b, 3, 30, 30))).float()


def nhwc(px: torch.Tensor) -> jax.Array:
    return jnp.asarray(px.numpy().transpose(0, 2, 3, 1))


def text(b: int = 2, q: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, IMAGE, (b, q))


def hf_ids(question: np.ndarray) -> torch.Tensor:
    b = question.shape[0]
    return torch.from_numpy(np.concatenate([np.full((b, N), IMAGE), question], 1))


def test_logits_match_transformers_prefix_lm(paligemma, vlm):
    model, _ = paligemma
    px, q = images(), text()
    ids = hf_ids(q)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=px, token_type_ids=torch.zeros_like(ids)).logits
        causal = model(input_ids=ids, pixel_values=px).logits.numpy()
    ref = ref.numpy()
    out = np.asarray(run(vlm, nhwc(px), None, jnp.asarray(q)).logits)
    assert out.shape == ref.shape == (2, N + 6, 100) and np.abs(ref).max() > 1.0
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)
    assert np.abs(ref - causal).max() > 100 * TOL  # the prefix-LM mask matters
    c = vlm.config
    assert c.prefix_lm and c.position_offset == 1 and c.vision.num_prefix == 0


def padded():
    """Texts of 6 and 4 real tokens: transformers left-pads the whole prompt ([pad pad]
    [image] [text]); the VLM's prompt has the image first, so the padding sits at the start
    of ``question_ids`` ([image] [pad pad text]) -- the same valid tokens, positions and
    attention."""
    q = text()
    q[1, :2] = PAD
    hf_mask = np.ones((2, N + 6), np.int64)
    hf_mask[1, :2] = 0
    ours = np.ones((2, N + 6), np.int64)
    ours[1, N : N + 2] = 0
    hf = np.concatenate([np.full((2, N), IMAGE), q], 1)
    hf[1] = np.concatenate([[PAD, PAD], np.full(N, IMAGE), q[1, 2:]])
    return q, torch.from_numpy(hf), torch.from_numpy(hf_mask), ours


def test_left_padded_batch_and_generation_match(paligemma, vlm):
    model, _ = paligemma
    px = images()
    q, ids, hf_mask, mask = padded()
    tt = torch.zeros_like(ids)
    pos = (hf_mask.cumsum(1) - 1).clamp(min=0) + 1  # what generate() passes (1-based)
    with torch.no_grad():
        ref = model(
            input_ids=ids, pixel_values=px, attention_mask=hf_mask, token_type_ids=tt,
            position_ids=pos,
        ).logits.numpy()  # fmt: skip
        gen = model.generate(
            input_ids=ids, pixel_values=px, attention_mask=hf_mask, token_type_ids=tt,
            max_new_tokens=8, do_sample=False, pad_token_id=PAD,
        )[:, ids.shape[1] :].numpy()  # fmt: skip
    out = np.asarray(run(vlm, nhwc(px), None, jnp.asarray(q), mask).logits)
    np.testing.assert_allclose(out[0], ref[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(out[1, mask[1] == 1], ref[1, 2:], atol=TOL, rtol=0)
    ours = vlm.generate(nhwc(px), None, q, 8, attention_mask=mask).tokens
    np.testing.assert_array_equal(np.asarray(ours), gen)
    assert len(set(gen.ravel().tolist())) > 2  # not one repeated token


def test_transformers4_key_layout(paligemma, vlm, tmp_path):
    _, path = paligemma
    rename = [
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
    ]
    tensors = {}
    for key, value in read_checkpoint(path).items():
        new = next((n + key[len(o) :] for o, n in rename if key.startswith(o)), None)
        assert new is not None, key
        tensors[new] = value
    write_safetensors(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    for a, b in zip(jax.tree.leaves(load_vlm(tmp_path)), jax.tree.leaves(vlm), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fastervlm_uses_received_attention(vlm):
    """SigLIP has no [CLS]: "fastervlm" ranks the patches by the attention they receive at the
    feature layer's block (mean over heads and queries), here recomputed by hand."""
    px = nhwc(images())
    h = vlm.config.feature_layer
    _, attn = vlm.encode(px, attention_at=(h - 1,))
    received = np.asarray(attn[h - 1]).mean(axis=(1, 2))  # [B, N]
    kept = np.asarray(vlm.select_visual(px, select=VisualSelect("fastervlm", keep=5))[1])
    want = np.sort(np.argsort(-received, axis=1, kind="stable")[:, :5], axis=1)
    np.testing.assert_array_equal(kept, want)


@pytest.mark.slow
def test_every_pre_llm_method_runs(vlm):
    px, q = nhwc(images()), jnp.asarray(text())
    key = jax.random.key(0)
    for method in VLM_SELECT_METHODS:
        select = VisualSelect(method) if method == "none" else VisualSelect(method, keep=9)
        out = run(vlm, px, None, q, select=select, key=key, logits_to_keep=1)
        assert out.visual_kept.shape == (2, N if method == "none" else 9), method
        assert np.isfinite(np.asarray(out.logits)).all(), method


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda n: FastVSpec(start=0, stop=n, layer=1, keep_ratio=0.5),
        lambda n: FeatherSpec(start=0, stop=n, layers=(1,), ratios=(0.5,)),
        lambda n: TodreSpec(start=0, stop=n, layer=1),
    ],
    ids=["fastv", "feather", "todre"],
)
def test_in_llm_specs_run(vlm, make):
    px = nhwc(images())
    q, _, _, mask = padded()
    out = run(vlm, px, None, jnp.asarray(q), mask, prune=make(N))
    assert np.isfinite(np.asarray(out.logits)).all()
    assert vlm.generate(px, None, q, 3, attention_mask=mask, prune=make(N)).tokens.shape == (2, 3)
    select = VisualSelect("kcenter", keep=9)
    out = run(vlm, px, None, jnp.asarray(q), select=select, prune=make(9))
    assert np.isfinite(np.asarray(out.logits)).all()


def test_paligemma_hub_config_is_accepted(tmp_path):
    """google/paligemma-3b-pt-224's config.json (transformers 4.41 era, transcribed) passes
    the allowlist: loading stops only at the missing weights."""
    config = {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "bos_token_id": 2,
        "eos_token_id": 1,
        "hidden_size": 2048,
        "ignore_index": -100,
        "image_token_index": 257152,
        "model_type": "paligemma",
        "pad_token_id": 0,
        "projection_dim": 2048,
        "text_config": {
            "hidden_size": 2048,
            "intermediate_size": 16384,
            "model_type": "gemma",
            "num_attention_heads": 8,
            "num_hidden_layers": 18,
            "num_image_tokens": 256,
            "num_key_value_heads": 1,
            "torch_dtype": "float32",
            "vocab_size": 257216,
        },
        "torch_dtype": "float32",
        "transformers_version": "4.41.0.dev0",
        "vision_config": {
            "hidden_size": 1152,
            "image_size": 224,
            "intermediate_size": 4304,
            "model_type": "siglip_vision_model",
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "num_image_tokens": 256,
            "patch_size": 14,
            "projection_dim": 2048,
            "projector_hidden_act": "gelu_fast",
            "vision_use_head": False,
        },
        "vocab_size": 257216,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError):
        load_vlm(tmp_path)
    config["text_config"]["use_bidirectional_attention"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_bidirectional_attention=False"):
        load_vlm(tmp_path)
