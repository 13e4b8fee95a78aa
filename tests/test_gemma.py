"""Gemma (v1) in ``LlamaLM``: ``load_llm`` of a tiny random transformers ``GemmaForCausalLM``
(float32, eager attention, saved with ``save_pretrained``) against the PyTorch model: logits,
hidden states and attention probabilities, greedy generation, a left-padded batch of prompts
of different lengths, ``inputs_embeds`` (the embedding normaliser), the config mapping and its
refusals, and FastV / calibrated pruning on a Gemma model.

Every PyTorch parameter is redrawn (norm weights N(0, 0.2^2) around Gemma's unit offset, the
rest N(0, 0.2^2)) so that no norm weight is trivial. The config uses grouped-query attention
(4 heads, 2 KV heads) with a head_dim (24) unrelated to hidden_size / num_heads (16), the
legacy ``hidden_act="gelu"`` of the published checkpoints, and tied embeddings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models.llama import (
    FastVSpec,
    LlamaConfig,
    LlamaLM,
    calibrated_prune,
    generate_greedy,
    init_cache,
    llm_config,
    load_llm,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    rope_theta=1000.0,
    rms_norm_eps=1e-6,
)


def redraw(model, seed: int, std: float = 0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(the redrawn GemmaForCausalLM, its save_pretrained directory)."""
    config = transformers.GemmaConfig(**SIZES, hidden_act="gelu")
    model = transformers.GemmaForCausalLM(config)
    model.config._attn_implementation = "eager"
    model = redraw(model, seed=0)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    path = tmp_path_factory.mktemp("gemma")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def loaded(saved) -> LlamaLM:
    return load_llm(saved[1])


def token_ids(shape=(2, 13), seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, SIZES["vocab_size"], shape, generator=gen)


@nnx.jit
def forward(model, ids, mask):
    return model(ids, attention_mask=mask, return_attention_at=(0, 1), return_hidden_states=True)


def _np(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def diffs_against(hf, model, ids, mask=None, real=None) -> dict[str, float]:
    """max |ours - HF| of logits, every hidden state and both layers' attention (real tokens
    and keys only when ``real`` [B, T] is given)."""
    with torch.no_grad():
        ref = hf(
            ids,
            attention_mask=mask,
            output_attentions=True,
            output_hidden_states=True,
            use_cache=False,
        )
    out = forward(
        model, jnp.asarray(ids.numpy()), None if mask is None else jnp.asarray(mask.numpy())
    )
    sel = (lambda a: a) if real is None else (lambda a: a[real])
    d = {"logits": np.abs(sel(_np(ref.logits)) - sel(_np(out.logits))).max()}
    for i, r in enumerate(ref.hidden_states[:-1]):
        d[f"hidden{i}"] = np.abs(sel(_np(r)) - sel(_np(out.hidden_states[i]))).max()
    d["final_norm"] = np.abs(sel(_np(ref.hidden_states[-1])) - sel(_np(out.hidden))).max()
    for layer in (0, 1):
        a, b = _np(ref.attentions[layer]), _np(out.attentions[layer])
        rows = [np.ones(a.shape[2], bool)] * a.shape[0] if real is None else real
        d[f"attn{layer}"] = max(
            np.abs(a[i][:, r][:, :, r] - b[i][:, r][:, :, r]).max() for i, r in enumerate(rows)
        )
    return {k: float(v) for k, v in d.items()}


def test_config_mapping(loaded):
    cfg = loaded.config
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 24)
    assert cfg.hidden_act == "gelu_tanh" and cfg.rms_norm_unit_offset and cfg.scale_embeddings
    assert cfg.tie_word_embeddings and loaded.lm_head is None
    assert not cfg.attention_bias and not cfg.mlp_bias and cfg.rope_theta == 1000.0


def test_logits_hidden_states_and_attention_match(saved, loaded):
    d = diffs_against(saved[0], loaded, token_ids())
    assert max(d.values()) < TOL, d


def test_greedy_generation_matches_transformers(saved, loaded):
    hf = saved[0]
    ids = token_ids((2, 9), seed=3)
    with torch.no_grad():
        ref = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
        )
    out = generate_greedy(loaded, jnp.asarray(ids.numpy()), 8)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref[:, ids.shape[1] :].numpy())


def test_left_padded_batch_matches_transformers(saved, loaded):
    """Two prompts of 11 and 6 tokens, left-padded: real tokens match, and so does greedy
    generation from the padded batch."""
    hf = saved[0]
    ids = token_ids((2, 11), seed=4)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    real = mask.numpy().astype(bool)
    d = diffs_against(hf, loaded, ids, mask=mask, real=real)
    assert max(d.values()) < TOL, d
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    gen = generate_greedy(loaded, jnp.asarray(ids.numpy()), 8, attention_mask=jnp.asarray(real))
    np.testing.assert_array_equal(np.asarray(gen.tokens), ref[:, ids.shape[1] :].numpy())


def test_inputs_embeds_get_the_normaliser(saved, loaded):
    """``inputs_embeds`` are scaled by sqrt(D) like the token embeddings (transformers 4.x's
    GemmaModel; 5.x scales inside the embedding layer, so it gets the scaled embeddings)."""
    hf = saved[0]
    ids = token_ids()
    raw = np.asarray(loaded.embed(jnp.asarray(ids.numpy())))
    np.testing.assert_allclose(raw, hf.model.embed_tokens.weight.detach().numpy()[ids.numpy()])
    scaled = torch.from_numpy(raw) * torch.tensor(SIZES["hidden_size"] ** 0.5)
    with torch.no_grad():
        ref = hf(inputs_embeds=scaled, use_cache=False).logits.numpy()
    ours = loaded(inputs_embeds=jnp.asarray(raw)).logits
    assert np.abs(np.asarray(ours) - ref).max() < TOL
    np.testing.assert_allclose(ours, loaded(jnp.asarray(ids.numpy())).logits, atol=1e-5)


def test_variant_is_gemma_2b():
    cfg = llm_config("gemma-2b")
    ref = transformers.GemmaConfig(
        hidden_size=2048,
        intermediate_size=16384,
        num_hidden_layers=18,
        num_attention_heads=8,
        num_key_value_heads=1,
    )
    assert (cfg.vocab_size, cfg.head_dim, cfg.max_position_embeddings) == (
        ref.vocab_size,
        ref.head_dim,
        ref.max_position_embeddings,
    )
    assert cfg.scale_embeddings and cfg.rms_norm_unit_offset and cfg.hidden_act == "gelu_tanh"
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        LlamaConfig(hidden_act="gelu")


def _variant(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(model_type="gemma2"), "'gemma2' is not supported: only Gemma 1"),
        (dict(model_type="gemma3_text"), "'gemma3_text' is not supported: only Gemma 1"),
        (dict(hidden_act="silu"), "activation must be the tanh GELU"),
        (dict(hidden_activation="gelu"), "activation must be the tanh GELU"),
        (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    ],
)
def test_config_refusals(saved, tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        load_llm(_variant(saved[1], tmp_path / "v", **changes))


def test_transformers_v4_style_config_loads(saved, loaded, tmp_path):
    """4.x configs: rope_theta at the top level, hidden_activation set."""
    cfg = json.loads((saved[1] / "config.json").read_text())
    theta = cfg.pop("rope_parameters", None) or {"rope_theta": 1000.0}
    path = tmp_path / "v4"
    shutil.copytree(saved[1], path)
    cfg.update(rope_theta=theta["rope_theta"], hidden_activation="gelu_pytorch_tanh")
    (path / "config.json").write_text(json.dumps(cfg))
    assert load_llm(path).config == loaded.config


@pytest.mark.slow
def test_fastv_on_gemma_keeps_the_top_image_tokens_of_transformers_attention(saved, loaded):
    """FastV at layer 1 keeps the image tokens that layer 0's head-averaged last-query
    attention (transformers') ranks highest, and the pruned model runs."""
    hf = saved[0]
    ids = token_ids((1, 16), seed=5)
    spec = FastVSpec(start=2, stop=12, layer=1, keep_ratio=0.5)
    with torch.no_grad():
        attn = hf(ids, output_attentions=True, use_cache=False).attentions[0].numpy()
    scores = attn[0, :, -1, 2:12].mean(0)
    want = np.sort(np.argsort(-scores, kind="stable")[:5]) + 2
    out = loaded(jnp.asarray(ids.numpy()), prune=spec)
    kept = np.asarray(out.kept[0])
    np.testing.assert_array_equal(kept, np.r_[0:2, want, 12:16])
    assert out.logits.shape == (1, 11, SIZES["vocab_size"]) and np.isfinite(out.logits).all()
    # the tokens before the image are untouched by the pruning: same logits as transformers
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits.numpy()
    assert np.abs(np.asarray(out.logits[0, :2]) - ref[0, :2]).max() < TOL


@pytest.mark.slow
def test_calibrated_prune_on_gemma_matches_transformers_with_the_same_masks(saved, loaded):
    """Wanda at 50 % on the Gemma model: the masked model's logits equal transformers' model
    with the same weights zeroed (the mapping and the forward pass agree after pruning), and
    layer 0's MLP masks follow Wanda's score from transformers' MLP inputs (which carry the
    embedding normaliser)."""
    hf = saved[0]
    ids = token_ids((2, 12), seed=6)
    pruned, masks = calibrated_prune(loaded, jnp.asarray(ids.numpy()), method="wanda", sparsity=0.5)
    gate = np.asarray(masks["layers"][0]["mlp"]["gate_proj"]["kernel"])  # [in, out]
    assert abs(gate.mean() - 0.5) < 1e-6
    inputs = {}
    hook = hf.model.layers[0].mlp.register_forward_hook(
        lambda m, args, out: inputs.setdefault("x", args[0].detach().numpy())
    )
    with torch.no_grad():
        hf(ids, use_cache=False)
    hook.remove()
    norms = np.sqrt((inputs["x"].reshape(-1, SIZES["hidden_size"]) ** 2).sum(0))  # [in]
    w = hf.model.layers[0].mlp.gate_proj.weight.detach().numpy()  # [out, in]
    score = np.abs(w) * norms[None]
    want = np.zeros_like(score, bool)
    top = np.argsort(-score, axis=1, kind="stable")[:, : score.shape[1] // 2]
    np.put_along_axis(want, top, True, axis=1)
    assert (want.T == gate).mean() > 0.99  # ties / float rounding aside
    hf2 = redraw(transformers.GemmaForCausalLM(hf.config), seed=0)
    hf2.load_state_dict(hf.state_dict())
    with torch.no_grad():
        for i, layer in enumerate(hf2.model.layers):
            for part, names in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))):
                for n in names:
                    name = f"{n}_proj"
                    m = np.asarray(masks["layers"][i][part][name]["kernel"]).T
                    lin = getattr(getattr(layer, part), name)
                    lin.weight.mul_(torch.from_numpy(m.astype(np.float32)))
        ref = hf2(ids, use_cache=False).logits.numpy()
    ours = np.asarray(pruned(jnp.asarray(ids.numpy())).logits)
    assert np.abs(ours - ref).max() < TOL


# ---------------------------------------------------------------- bidirectional prefix (prefix-LM)


def np_prefix_lm_mask(valid: np.ndarray, bidir: np.ndarray) -> np.ndarray:
    """Additive [B, 1, T, T] float32 mask: key j is visible to query i when it is valid and
    j <= i or both are flagged."""
    t = valid.shape[1]
    causal = np.tril(np.ones((t, t), bool))[None]
    allowed = valid[:, None, :] & (causal | (bidir[:, :, None] & bidir[:, None, :]))
    return np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None]


def test_bidirectional_flags_match_an_explicit_mask_oracle(saved, loaded):
    """Arbitrary (not only prefix-shaped) flags and left padding: transformers' model under the
    NumPy-built 4D mask gives the same logits and attention on the real tokens."""
    hf = saved[0]
    ids = token_ids((2, 12), seed=8)
    valid = np.ones((2, 12), bool)
    valid[1, :4] = False
    bidir = np.zeros((2, 12), bool)
    bidir[0, [1, 2, 5, 9]] = True
    bidir[1, 4:10] = True
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
    with torch.no_grad():
        ref = hf(
            ids,
            attention_mask=torch.from_numpy(np_prefix_lm_mask(valid, bidir)),
            position_ids=torch.from_numpy(positions),
            output_attentions=True,
            use_cache=False,
        )
    out = loaded(
        jnp.asarray(ids.numpy()),
        attention_mask=jnp.asarray(valid),
        bidirectional=jnp.asarray(bidir),
        return_attention_at=(0, 1),
    )
    assert np.abs(np.asarray(out.logits)[valid] - ref.logits.numpy()[valid]).max() < TOL
    for layer in (0, 1):
        a, b = ref.attentions[layer].numpy(), np.asarray(out.attentions[layer])
        for i, r in enumerate(valid):
            assert np.abs(a[i][:, r][:, :, r] - b[i][:, r][:, :, r]).max() < 1e-5
    causal = loaded(jnp.asarray(ids.numpy()), attention_mask=jnp.asarray(valid)).logits
    assert np.abs(np.asarray(causal) - np.asarray(out.logits))[valid].max() > 1e-2  # it bites


@pytest.fixture(scope="module")
def paligemma(saved):
    """transformers' PaliGemma whose language model holds the saved Gemma's weights."""
    hf = saved[0]
    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        projection_dim=SIZES["hidden_size"],
    )
    config = transformers.PaliGemmaConfig(
        vision_config=vision, text_config=hf.config.to_dict(), image_token_id=127
    )
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    model.config._attn_implementation = "eager"
    model.config.text_config._attn_implementation = "eager"
    model.model.language_model.load_state_dict(hf.model.state_dict())
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def test_bidirectional_prefix_matches_paligemma_language_path(paligemma, loaded):
    """PaliGemma's prefix-LM mask (token_type_ids == 0 attend bidirectionally) on a text-only,
    left-padded batch, at PaliGemma's 1-based positions: logits, then greedy generation (the
    prompt bidirectional, the generated tokens causal, through our KV cache)."""
    ids = token_ids((2, 10), seed=7)
    ids[ids == 127] = 5  # no image placeholder
    types = torch.ones_like(ids)
    types[:, :6] = 0
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    real = mask.numpy().astype(bool)
    positions = (np.maximum(np.cumsum(real, 1) - 1, 0) + 1).astype(np.int32)
    with torch.no_grad():
        ref = paligemma(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            position_ids=torch.from_numpy(positions).long(),
            use_cache=False,
        ).logits.numpy()
        gen = paligemma.generate(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=types,
            max_new_tokens=8,
            do_sample=False,
        )[:, ids.shape[1] :].numpy()
    kw = dict(
        attention_mask=jnp.asarray(real),
        positions=jnp.asarray(positions),
        bidirectional=jnp.asarray(types.numpy() == 0),
    )
    out = loaded(jnp.asarray(ids.numpy()), **kw)
    assert np.abs(np.asarray(out.logits)[real] - ref[real]).max() < TOL
    tokens = generate_greedy(loaded, jnp.asarray(ids.numpy()), 8, **kw).tokens
    np.testing.assert_array_equal(np.asarray(tokens), gen)


@pytest.mark.slow
def test_bidirectional_flags_follow_the_tokens_fastv_keeps(saved, loaded):
    """FastV at layer 1 with a bidirectional prefix: transformers' layers run one by one (layer
    0 on every token, layer 1 on the kept ones, each under the NumPy prefix-LM mask of its
    tokens) give the same logits; with and without a KV cache."""
    hf = saved[0]
    ids = token_ids((2, 14), seed=9)
    bidir = np.zeros((2, 14), bool)
    bidir[:, :10] = True  # [2 text][8 image][text] prefix, 4 suffix tokens
    spec = FastVSpec(start=2, stop=10, layer=1, keep_ratio=0.5)
    out = loaded(jnp.asarray(ids.numpy()), bidirectional=jnp.asarray(bidir), prune=spec)
    kept = np.asarray(out.kept)
    valid = np.ones((2, 14), bool)
    with torch.no_grad():
        lm = hf.model
        x = lm.embed_tokens(ids)
        pos = torch.arange(14)[None].repeat(2, 1)
        cos, sin = lm.rotary_emb(x, pos)
        x = lm.layers[0](
            x,
            attention_mask=torch.from_numpy(np_prefix_lm_mask(valid, bidir)),
            position_embeddings=(cos, sin),
        )
        k = torch.from_numpy(kept).long()
        take = lambda a: torch.stack([a[i, k[i]] for i in range(2)])
        kept_bidir = np.take_along_axis(bidir, kept, 1)
        x = lm.layers[1](
            take(x),
            attention_mask=torch.from_numpy(np_prefix_lm_mask(valid[:, :10], kept_bidir)),
            position_embeddings=(take(cos), take(sin)),
        )
        ref = hf.lm_head(lm.norm(x)).numpy()
    assert np.abs(np.asarray(out.logits) - ref).max() < TOL
    cached = loaded(
        jnp.asarray(ids.numpy()),
        bidirectional=jnp.asarray(bidir),
        prune=spec,
        cache=init_cache(loaded.config, 2, 14, prune=spec),
    )
    assert np.abs(np.asarray(cached.logits) - ref).max() < TOL
