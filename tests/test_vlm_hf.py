"""pruneax.models.load_vlm against transformers' LlavaForConditionalGeneration (eager attention,
CPU, float32): a tiny random LLaVA (CLIP tower 30x30 / patch 6 = 25 patches, 3 blocks; Llama
text model with grouped-query attention) saved with ``save_pretrained`` must give the same
logits (single and left-padded batches, transformers 5 and 4.x key layouts, the "full"
feature strategy) and the same greedy tokens as ``generate(do_sample=False)``; refused configs
fail naming the attribute; every pre-LLM selection method and in-LLM spec runs on the loaded
model.

Every parameter of the PyTorch model is redrawn (norm scales 1 + N(0, 0.1^2), the rest
N(0, 0.1^2), the embedding N(0, 1)) so that logits are O(1) and no bias is trivially zero.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

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
N = 25  # (30 / 6) ** 2 patches
IMAGE = 99  # image placeholder id (last of the vocabulary)
PAD = 0
VISION = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=30,
    patch_size=6,
    projection_dim=16,
)
TEXT = dict(
    model_type="llama",
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=100,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)


def make_llava(tmp: Path, text: dict | None = None, **overrides) -> tuple[object, Path]:
    """A tiny random LLaVA (every weight redrawn) saved with transformers 5's in-memory key
    layout (``model.vision_tower.*``, ...) into ``tmp``."""
    torch.manual_seed(0)
    config = transformers.LlavaConfig(
        vision_config=VISION,
        text_config=TEXT if text is None else text,
        image_token_index=IMAGE,
        image_seq_length=N + (overrides.get("vision_feature_select_strategy") == "full"),
        **overrides,
    )
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.config._attn_implementation = "eager"
    model.save_pretrained(tmp, save_original_format=False)
    return model, tmp


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def vlm(llava):
    return load_vlm(llava[1])


@functools.partial(nnx.jit, static_argnames=("select", "prune", "logits_to_keep"))
def run(vlm, images, prefix, question, mask=None, *, select=NO_SELECT, prune=None, key=None,
        logits_to_keep=0):  # fmt: skip
    """``vlm(...)`` under one jit (much faster than eager dispatch for these small models)."""
    return vlm(
        images, prefix, question, attention_mask=mask, select=select, prune=prune, key=key,
        logits_to_keep=logits_to_keep,
    )  # fmt: skip


def images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(b, 3, 30, 30))).float()


def nhwc(px: torch.Tensor) -> jax.Array:
    return jnp.asarray(px.numpy().transpose(0, 2, 3, 1))


def prompt(b: int = 2, p: int = 3, q: int = 5, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.integers(1, IMAGE, (b, p)), rng.integers(1, IMAGE, (b, q))


def hf_ids(prefix: np.ndarray, question: np.ndarray, n: int = N) -> torch.Tensor:
    b = prefix.shape[0]
    return torch.from_numpy(np.concatenate([prefix, np.full((b, n), IMAGE), question], 1))


def hf_logits(model, ids, px, mask=None) -> np.ndarray:
    kw = {}
    if mask is not None:  # transformers' forward numbers positions 0..T-1 unless told
        kw = dict(attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=px, **kw).logits.numpy()


def test_logits_match_transformers(llava, vlm):
    model, _ = llava
    px = images()
    prefix, question = prompt()
    ref = hf_logits(model, hf_ids(prefix, question), px)
    out = run(vlm, nhwc(px), jnp.asarray(prefix), jnp.asarray(question))
    assert out.logits.shape == ref.shape == (2, 3 + N + 5, 100)
    assert np.abs(ref).max() > 1.0  # not trivially small
    np.testing.assert_allclose(np.asarray(out.logits), ref, atol=TOL, rtol=0)
    assert vlm.config.image_token_id == IMAGE and vlm.config.num_visual == N


def left_padded(b: int = 2):
    """Prefixes of 4 and 2 real tokens, left-padded to 4; questions of 5."""
    prefix, question = prompt(b, 4, 5, seed=3)
    prefix[1, :2] = PAD
    mask = np.ones((b, 4 + N + 5), np.int64)
    mask[1, :2] = 0
    return prefix, question, mask


def test_left_padded_batch_matches_transformers(llava, vlm):
    model, _ = llava
    px = images()
    prefix, question, mask = left_padded()
    ref = hf_logits(model, hf_ids(prefix, question), px, torch.from_numpy(mask))
    out = run(vlm, nhwc(px), jnp.asarray(prefix), jnp.asarray(question), mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[valid], ref[valid], atol=TOL, rtol=0)
    # row 1 alone (no padding) gives the same valid logits
    alone = run(vlm, nhwc(px[1:]), jnp.asarray(prefix[1:, 2:]), jnp.asarray(question[1:]))
    np.testing.assert_allclose(
        np.asarray(out.logits)[1, 2:], np.asarray(alone.logits)[0], atol=TOL, rtol=0
    )


def test_greedy_generation_matches_transformers(llava, vlm):
    model, _ = llava
    px = images()
    prefix, question, mask = left_padded()
    with torch.no_grad():
        ref = model.generate(
            input_ids=hf_ids(prefix, question),
            pixel_values=px,
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=PAD,
        )[:, mask.shape[1] :].numpy()
    ours = vlm.generate(nhwc(px), prefix, question, 8, attention_mask=mask).tokens
    np.testing.assert_array_equal(np.asarray(ours), ref)
    assert len({tuple(r) for r in ref.tolist()}) == 2  # the rows differ


def test_transformers4_key_layout(llava, vlm, tmp_path):
    """The 4.x layout (``vision_tower.vision_model.*``, ``language_model.model.*``,
    ``language_model.lm_head.*``, ``multi_modal_projector.*``) loads to the same weights."""
    _, path = llava
    rename = [
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ]
    tensors = {}
    for key, value in read_checkpoint(path).items():
        new = next((n + key[len(o) :] for o, n in rename if key.startswith(o)), None)
        assert new is not None, key
        tensors[new] = value
    write_safetensors(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    old = load_vlm(tmp_path)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(vlm), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_default_save_layout(llava, vlm, tmp_path):
    """transformers 5's default ``save_pretrained`` (original format: ``vision_tower.*``
    without ``vision_model.``, ``language_model.model.*``) loads too."""
    model, _ = llava
    model.save_pretrained(tmp_path)
    keys = set(read_checkpoint(tmp_path))
    assert "language_model.lm_head.weight" in keys
    px = images()
    prefix, question = prompt()
    ref = hf_logits(model, hf_ids(prefix, question), px)
    out = run(load_vlm(tmp_path), nhwc(px), jnp.asarray(prefix), jnp.asarray(question))
    np.testing.assert_allclose(np.asarray(out.logits), ref, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """LLaVA with ``vision_feature_select_strategy="full"`` (CLS kept: N + 1 visual tokens),
    ``vision_feature_layer=-1`` (every block runs) and no projector bias."""
    return make_llava(
        tmp_path_factory.mktemp("full"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
    )


def test_full_strategy_and_last_layer(full):
    model, path = full
    vlm = load_vlm(path)
    assert vlm.config.num_visual == N + 1 and vlm.config.feature_layer == 3
    px = images()
    prefix, question = prompt()
    ref = hf_logits(model, hf_ids(prefix, question, N + 1), px)
    out = run(vlm, nhwc(px), jnp.asarray(prefix), jnp.asarray(question))
    np.testing.assert_allclose(np.asarray(out.logits), ref, atol=TOL, rtol=0)


@pytest.mark.slow
def test_full_strategy_with_selection_and_fastv(full):
    """CLS stays first and k patches follow; the in-LLM span covers both."""
    vlm = load_vlm(full[1])
    px = images()
    prefix, question = prompt()
    k = 6
    spec = FastVSpec(start=3, stop=3 + 1 + k, layer=1, keep_ratio=0.5)
    sel = run(
        vlm, nhwc(px), jnp.asarray(prefix), jnp.asarray(question),
        select=VisualSelect("divprune", keep=k), prune=spec,
    )  # fmt: skip
    assert sel.visual_kept.shape == (2, k) and np.isfinite(np.asarray(sel.logits)).all()
    assert sel.llm.kept.shape == (2, 3 + 5 + 4)  # FastV kept 4 of the 1 + k image tokens


def edit_config(path: Path, tmp: Path, edit) -> Path:
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (tmp / "config.json").write_text(json.dumps(cfg))
    (tmp / "model.safetensors").symlink_to(path / "model.safetensors")
    return tmp


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["text_config"].update(new_thing=1), "new_thing=1"),
        (lambda c: c["text_config"].update(hidden_act="gelu"), "hidden_act"),
        (lambda c: c["vision_config"].update(new_thing=2), "new_thing=2"),
        (lambda c: c.update(vision_feature_layer=[-2, -3]), "vision_feature_layer"),
        (lambda c: c.update(projector_hidden_act="relu"), "projector_hidden_act"),
        (lambda c: c.update(vision_feature_select_strategy="cls"), "select_strategy"),
        (lambda c: c.update(some_new_field=True), "some_new_field"),
        (lambda c: c["vision_config"].update(model_type="dinov2"), "dinov2"),
    ],
)
def test_refused_configs(llava, tmp_path, edit, match):
    path = edit_config(llava[1], tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        load_vlm(path)


@pytest.mark.slow
def test_every_pre_llm_method_runs(vlm):
    px = nhwc(images())
    prefix, question = (jnp.asarray(a) for a in prompt())
    key = jax.random.key(0)
    for method in VLM_SELECT_METHODS:
        select = VisualSelect(method) if method == "none" else VisualSelect(method, keep=8)
        out = run(vlm, px, prefix, question, select=select, key=key, logits_to_keep=1)
        k = N if method == "none" else 8
        assert out.visual_kept.shape == (2, k), method
        assert np.isfinite(np.asarray(out.logits)).all(), method
        kept = np.asarray(out.visual_kept)
        assert (np.diff(kept, axis=1) > 0).all() and kept.min() >= 0 and kept.max() < N, method


def test_fastervlm_uses_the_cls_attention(vlm):
    """On CLIP, FasterVLM ranks patches by the [CLS] row of the feature layer's attention."""
    px = nhwc(images())
    _, attn = vlm.encode(px, attention_at=(vlm.config.feature_layer - 1,))
    cls = np.asarray(attn[vlm.config.feature_layer - 1])[:, :, 0, 1:].mean(1)  # [B, N]
    kept = vlm.select_visual(px, select=VisualSelect("fastervlm", keep=5))[1]
    want = np.sort(np.argsort(-cls, axis=1, kind="stable")[:, :5], axis=1)
    np.testing.assert_array_equal(np.asarray(kept), want)


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda p, n: FastVSpec(start=p, stop=p + n, layer=1, keep_ratio=0.5),
        lambda p, n: FeatherSpec(start=p, stop=p + n, grid=None, layers=(1, 2), ratios=(0.5, 0.5)),
        lambda p, n: TodreSpec(start=p, stop=p + n, layer=2),
    ],
    ids=["fastv", "feather", "todre"],
)
def test_in_llm_specs_run(vlm, make):
    px = nhwc(images())
    prefix, question, mask = left_padded()
    spec = make(4, N)
    out = run(vlm, px, jnp.asarray(prefix), jnp.asarray(question), mask, prune=spec)
    assert out.logits.shape[0] == 2 and out.logits.shape[2] == 100
    assert np.isfinite(np.asarray(out.logits)).all()
    gen = vlm.generate(px, prefix, question, 3, attention_mask=mask, prune=spec)
    assert gen.tokens.shape == (2, 3)
    # after pre-LLM selection the span is the k = 9 kept tokens (a 3 x 3 grid for FEATHER)
    select = VisualSelect("divprune", keep=9)
    out = run(vlm, px, jnp.asarray(prefix), jnp.asarray(question), select=select, prune=make(4, 9))
    assert np.isfinite(np.asarray(out.logits)).all()


def test_keep_positions_with_padding_match_transformers(llava, vlm):
    """Original positions (``keep_positions``) of a left-padded prompt are transformers'
    (``cumsum(mask) - 1``): with every token kept they give transformers' logits; with a
    selection they equal the positions of the kept columns."""
    model, _ = llava
    px = images()
    prefix, question, mask = left_padded()
    ref = hf_logits(model, hf_ids(prefix, question), px, torch.from_numpy(mask))
    out = run(
        vlm, nhwc(px), jnp.asarray(prefix), jnp.asarray(question), mask,
        select=VisualSelect(keep_positions=True),
    )  # fmt: skip
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[valid], ref[valid], atol=TOL, rtol=0)
    kept = jnp.asarray([[0, 7, 24], [3, 4, 5]], jnp.int32)
    pos = np.asarray(vlm.positions(4, kept, 5, mask))
    full = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    cols = np.concatenate([np.tile(np.arange(4), (2, 1)), np.asarray(kept) + 4,
                           np.tile(np.arange(5) + 4 + N, (2, 1))], 1)  # fmt: skip
    np.testing.assert_array_equal(pos, np.take_along_axis(full, cols, 1))
    np.testing.assert_array_equal(
        np.asarray(vlm.llm_attention_mask(mask, kept, 4)), np.take_along_axis(valid, cols, 1)
    )


def test_mask_and_config_errors(vlm):
    px = nhwc(images())
    prefix, question = (jnp.asarray(a) for a in prompt())
    with pytest.raises(ValueError, match=r"attention_mask must be .* \[B, P \+ Nv \+ Q\]"):
        vlm(px, prefix, question, attention_mask=np.ones((2, 3 + 8 + 5)))
    base = vlm.config
    for kw, match in [
        (dict(feature_select="cls"), "feature_select"),
        (dict(projector="mlp3x"), "projector"),
        (dict(projector_act="relu"), "projector_act"),
        (dict(image_scale=0.0), "image_scale"),
        (dict(vision_norm=True), "vision_norm"),
        (dict(position_offset=-1), "position_offset"),
        (dict(image_token_id=-3), "image_token_id"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(base, **kw)


@pytest.mark.slow
def test_qwen2_text_model(tmp_path):
    """A Qwen2 text model (q/k/v biases) behind the LLaVA projector."""
    text = {**TEXT, "model_type": "qwen2"}
    del text["rms_norm_eps"]
    model, path = make_llava(tmp_path, text)
    vlm = load_vlm(path)
    assert vlm.config.llm.attention_bias
    px = images()
    prefix, question = prompt()
    ref = hf_logits(model, hf_ids(prefix, question), px)
    out = run(vlm, nhwc(px), jnp.asarray(prefix), jnp.asarray(question))
    np.testing.assert_allclose(np.asarray(out.logits), ref, atol=TOL, rtol=0)


def test_llava15_hub_config_is_accepted(tmp_path):
    """llava-hf/llava-1.5-7b-hf's config.json (transformers 4.36 era, transcribed) passes the
    allowlist: loading stops only at the missing weights."""
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": 32000,
        "model_type": "llava",
        "pad_token_id": 32001,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": 32064,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {
            "hidden_size": 1024,
            "image_size": 336,
            "intermediate_size": 4096,
            "model_type": "clip_vision_model",
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "projection_dim": 768,
            "vocab_size": 32000,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": 32064,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError):
        load_vlm(tmp_path)
