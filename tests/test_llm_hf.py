"""pruneax.models.load_llm / LlamaLM against transformers' LlamaForCausalLM and
Qwen2ForCausalLM (eager attention, CPU): tiny random models saved with ``save_pretrained`` must
give the same logits, hidden states and attention probabilities (also at shifted explicit
positions and on a left-padded batch), and greedy generation with our KV cache must produce
the same tokens as ``generate(do_sample=False)``; broken checkpoints fail with clear errors.

Every parameter of the PyTorch models is redrawn (norm scales 1 + N(0, 0.2^2), the rest
N(0, 0.2^2); the embedding N(0, 1)), so no bias or norm scale is trivial and a mapping or RoPE
layout mistake shows. The cases cover grouped-query attention (4 heads, 2 KV heads), Llama
with all four attention biases and MLP biases, the "llama3" RoPE scaling with a short original
context (all three frequency regimes), tied embeddings, and Qwen2's q/k/v-only biases.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pruneax.models import read_checkpoint
from pruneax.models.llama import LlamaLM, generate_greedy, llm_config, load_llm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st_numpy = pytest.importorskip("safetensors.numpy")

TOL = 1e-4
SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
LLAMA3 = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)
# name -> (transformers config class, model class, config overrides)
CASES = {
    "llama_gqa_bias": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(attention_bias=True, mlp_bias=True, rope_theta=500.0, rms_norm_eps=1e-5),
    ),
    "llama3_rope_tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_scaling=LLAMA3, rope_theta=10000.0, tie_word_embeddings=True),
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000.0)),
}


def redraw(model, seed: int, std: float = 0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = std * torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + noise)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(noise / std)
            else:
                p.copy_(noise)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[object, Path]]:
    """name -> (the redrawn PyTorch model, its save_pretrained directory)."""
    out = {}
    for i, (name, (cfg_cls, cls, overrides)) in enumerate(CASES.items()):
        overrides = {k: dict(v) if isinstance(v, dict) else v for k, v in overrides.items()}
        config = getattr(transformers, cfg_cls)(**SIZES, **overrides)  # (it mutates dicts)
        model = getattr(transformers, cls)(config)
        model.config._attn_implementation = "eager"
        model = redraw(model, seed=i)
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


@pytest.fixture(scope="module")
def loaded(saved) -> dict[str, LlamaLM]:
    return {name: load_llm(path) for name, (_, path) in saved.items()}


def token_ids(shape=(2, 13), seed=1):
    return torch.randint(
        0, SIZES["vocab_size"], shape, generator=torch.Generator().manual_seed(seed)
    )


@nnx.jit
def forward(model, ids, positions, mask):
    return model(
        ids,
        positions=positions,
        attention_mask=mask,
        return_attention_at=(0, 1),
        return_hidden_states=True,
    )


def diff(a, b, real=None) -> float:
    """max |a - b| (over the real tokens ``real`` [B, T] when given)."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if real is None:
        return float(np.abs(a - b).max())
    return float(np.abs(a[real] - b[real]).max())


def attn_diff(a, b, real=None) -> float:
    """max |a - b| over attention [B, H, T, T] (real queries and keys only when given)."""
    a, b = a.detach().numpy(), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if real is None:
        return float(np.abs(a - b).max())
    return max(
        float(np.abs(a[i][:, r][:, :, r] - b[i][:, r][:, :, r]).max()) for i, r in enumerate(real)
    )


def compare(hf, model, ids, *, position_ids=None, mask=None, real=None) -> dict[str, float]:
    with torch.no_grad():
        ref = hf(
            ids,
            attention_mask=mask,
            position_ids=position_ids,
            output_attentions=True,
            output_hidden_states=True,
            use_cache=False,
        )
    out = forward(
        model,
        jnp.asarray(ids.numpy()),
        None if position_ids is None else jnp.asarray(position_ids.numpy()),
        None if mask is None else jnp.asarray(mask.numpy()),
    )
    diffs = {"logits": diff(ref.logits, out.logits, real)}
    # HF: embeddings, layer outputs..., the last one after the final norm.
    for i, r in enumerate(ref.hidden_states[:-1]):
        diffs[f"hidden{i}"] = diff(r, out.hidden_states[i], real)
    diffs["final_norm"] = diff(ref.hidden_states[-1], out.hidden, real)
    for layer in (0, 1):
        diffs[f"attn{layer}"] = attn_diff(ref.attentions[layer], out.attentions[layer], real)
    return diffs


@pytest.mark.parametrize("case", list(CASES))
def test_logits_hidden_states_and_attention_match(saved, loaded, case):
    hf, _ = saved[case]
    model = loaded[case]
    ids = token_ids()
    diffs = compare(hf, model, ids)
    assert max(diffs.values()) < TOL, diffs
    # explicit positions far from 0 (RoPE's llama3 regimes, position plumbing)
    positions = torch.arange(ids.shape[1])[None].repeat(2, 1) + torch.tensor([[37], [90]])
    diffs = compare(hf, model, ids, position_ids=positions)
    assert max(diffs.values()) < TOL, diffs


def test_config_mapping(loaded):
    gqa = loaded["llama_gqa_bias"].config
    assert (gqa.num_heads, gqa.num_kv_heads, gqa.head_dim) == (4, 2, 16)
    assert gqa.attention_bias and gqa.attention_out_bias and gqa.mlp_bias
    assert gqa.rope_theta == 500.0 and gqa.rope_scaling is None and gqa.rms_norm_eps == 1e-5
    tied = loaded["llama3_rope_tied"]
    assert tied.config.tie_word_embeddings and tied.lm_head is None
    assert tied.config.rope_scaling_dict == {**LLAMA3}
    qwen = loaded["qwen2"].config
    assert qwen.attention_bias and not qwen.attention_out_bias and not qwen.mlp_bias
    assert not qwen.tie_word_embeddings


def test_rope_frequencies_match_transformers(saved, loaded):
    from pruneax.models.llama import rope_inv_freq

    for case in CASES:
        hf, _ = saved[case]
        ref = hf.model.rotary_emb.inv_freq.numpy()
        np.testing.assert_allclose(rope_inv_freq(loaded[case].config), ref, rtol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_generation_matches_transformers(saved, loaded, case):
    hf, _ = saved[case]
    ids = token_ids((2, 9), seed=3)
    with torch.no_grad():  # an explicit mask: HF would mask the ids equal to pad_token_id
        mask = torch.ones_like(ids)
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    ref = ref[:, ids.shape[1] :]
    out = generate_greedy(loaded[case], jnp.asarray(ids.numpy()), 10)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref.numpy())


def test_left_padded_batch_matches_transformers(saved, loaded):
    """Left padding: HF's positions cumsum(mask) - 1 are our default; real tokens match, and
    greedy generation from the padded batch matches ``generate``."""
    hf, _ = saved["qwen2"]
    model = loaded["qwen2"]
    ids = token_ids((3, 11), seed=4)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    real = np.asarray(mask.numpy(), bool)
    diffs = compare(hf, model, ids, position_ids=position_ids, mask=mask, real=real)
    assert max(diffs.values()) < TOL, diffs
    out = model(jnp.asarray(ids.numpy()), attention_mask=jnp.asarray(mask.numpy()))
    np.testing.assert_allclose(out.positions[real], position_ids.numpy()[real])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    gen = generate_greedy(model, jnp.asarray(ids.numpy()), 8, attention_mask=jnp.asarray(real))
    np.testing.assert_array_equal(np.asarray(gen.tokens), ref[:, ids.shape[1] :].numpy())


def test_inputs_embeds_match_input_ids(saved, loaded):
    hf, _ = saved["llama_gqa_bias"]
    model = loaded["llama_gqa_bias"]
    ids = token_ids()
    embeds = hf.get_input_embeddings()(ids).detach().numpy()
    a = model(jnp.asarray(ids.numpy()))
    b = model(inputs_embeds=jnp.asarray(embeds))
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


def test_bfloat16_model_runs_close_to_float32(saved):
    _, path = saved["llama_gqa_bias"]
    ids = jnp.asarray(token_ids().numpy())
    ref = load_llm(path)(ids)
    model = load_llm(path, dtype=jnp.bfloat16)
    assert jax.tree.leaves(nnx.state(model))[0].dtype == jnp.bfloat16
    out = model(ids)
    assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out.logits) - np.asarray(ref.logits)).max()
    assert err < 0.1 * np.abs(np.asarray(ref.logits)).max()


def test_transformers_v4_config_layout_loads(saved, tmp_path):
    """transformers < 5 writes ``rope_theta`` and ``rope_scaling`` at the top level."""
    _, src = saved["llama3_rope_tied"]
    path = _copy(src, tmp_path / "v4")
    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    (path / "config.json").write_text(json.dumps(cfg))
    assert load_llm(path).config == load_llm(src).config


def test_variant_table_matches_transformers_shapes():
    """The published variants build (abstractly) with the parameter counts of their papers."""
    from pruneax.models import param_count

    counts = {}
    for name in ("llama2-7b", "llama3.2-1b", "qwen2.5-0.5b"):
        cfg = llm_config(name)
        counts[name] = param_count(nnx.eval_shape(lambda c=cfg: LlamaLM(c, rngs=nnx.Rngs(0))))
    assert counts["llama2-7b"] == 6_738_415_616
    assert counts["llama3.2-1b"] == 1_235_814_400
    assert counts["qwen2.5-0.5b"] == 494_032_768


# ------------------------------------------------------------------------------ errors


def _copy(src: Path, dst: Path, drop: str | None = None, add: dict | None = None) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = {k: np.ascontiguousarray(v) for k, v in read_checkpoint(src).items() if k != drop}
    tensors.update(add or {})
    st_numpy.save_file(tensors, str(dst / "model.safetensors"))
    return dst


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_wrong_shape_and_unused_tensors(saved, tmp_path):
    _, src = saved["qwen2"]
    path = _copy(src, tmp_path / "m", drop="model.layers.1.self_attn.k_proj.bias")
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_llm(path)
    path = _copy(src, tmp_path / "h", drop="lm_head.weight")
    with pytest.raises(ValueError, match=r"missing.*lm_head\.weight"):
        load_llm(path)
    bad = {"model.norm.weight": np.zeros((3,), np.float32)}
    with pytest.raises(
        ValueError, match=r"wrong shape.*model\.norm\.weight: \[3\], expected \[64\]"
    ):
        load_llm(_copy(src, tmp_path / "s", add=bad))
    extra = {"model.layers.0.self_attn.o_proj.bias": np.zeros((64,), np.float32)}
    with pytest.raises(ValueError, match=r"does not use.*o_proj\.bias"):
        load_llm(_copy(src, tmp_path / "u", add=extra))


def test_tied_checkpoint_with_a_stored_head_loads(saved, tmp_path):
    _, src = saved["llama3_rope_tied"]
    head = {"lm_head.weight": np.zeros((128, 64), np.float32)}
    model = load_llm(_copy(src, tmp_path / "t", add=head))
    assert model.lm_head is None


def test_config_errors(saved, tmp_path):
    _, src = saved["llama_gqa_bias"]
    path = _copy(src, tmp_path / "c")
    _edit_config(path, model_type="mistral")
    with pytest.raises(ValueError, match=r"model_type 'mistral'.*not supported"):
        load_llm(path)
    _edit_config(path, model_type="llama", architectures=["LlamaModel"])
    with pytest.raises(ValueError, match=r"architecture 'LlamaModel'"):
        load_llm(path)
    _edit_config(path, architectures=["LlamaForCausalLM"], hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act"):
        load_llm(path)
    _edit_config(path, hidden_act="silu", rope_parameters={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match=r"rope_type 'yarn' is not supported"):
        load_llm(path)
    _edit_config(path, rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        load_llm(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_llm(path)
    qwen = _copy(saved["qwen2"][1], tmp_path / "q")
    _edit_config(qwen, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ValueError, match="sliding-window"):
        load_llm(qwen)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_llm(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_llm(tmp_path / "empty")
