"""The shared Hugging Face loader's config allowlist, through load_vit / load_llm / load_mamba.

For every supported ``model_type`` a tiny random transformers model is saved with
``save_pretrained``; only its config.json is then rewritten (the weights are shared by symlink).

Oracle for the defaults tables: transformers itself. The tables are private, so they are checked
through what they do: (1) a config.json holding *every* attribute of the transformers config
class at transformers' value (``to_json_string(use_diff=False)``) must load -- an attribute the
loader neither handles nor knows, or whose default it records differently, would be refused --
and (2) a config.json holding only the sizes must load to the same model config, so every
handled attribute's recorded default equals transformers'. A wrong default of a harmless
attribute (dropout, initialiser scale) is not visible this way, and cannot change a load.

Exhaustive check: every scalar attribute of the transformers class, set to another value, must
either be refused (ValueError), change the loaded config, or be in this file's own list of
attributes that cannot change the model (``HARMLESS``, each with its reason) -- and then load
to the same config. No attribute can change the checkpoint's model while being ignored.

Unknown attributes (not in transformers' class) are refused: nothing says what they do
(penzai's converters make the same choice).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pruneax.models import load_llm, load_mamba, load_vit
from tests.test_hf_import import SIZES as VIT_SIZES
from tests.test_hf_import import clip_full, clip_vision_config, deit_config, vit_config
from tests.test_llm_hf import SIZES as LLM_SIZES
from tests.test_mamba_hf import SIZES as MAMBA_SIZES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# model_type -> (builder of the transformers model, the sizes it was built with)
CASES = {
    "vit": (lambda tr: tr.ViTModel(vit_config(tr)), VIT_SIZES),  # with its pooler
    "deit": (
        lambda tr: tr.DeiTForImageClassificationWithTeacher(deit_config(tr, num_labels=3)),
        VIT_SIZES,
    ),
    "clip_vision_model": (lambda tr: tr.CLIPVisionModel(clip_vision_config(tr)), VIT_SIZES),
    "clip": (clip_full, {}),
    "llama": (lambda tr: tr.LlamaForCausalLM(tr.LlamaConfig(**LLM_SIZES)), LLM_SIZES),
    "qwen2": (lambda tr: tr.Qwen2ForCausalLM(tr.Qwen2Config(**LLM_SIZES)), LLM_SIZES),
    "mamba": (lambda tr: tr.MambaForCausalLM(tr.MambaConfig(**MAMBA_SIZES)), MAMBA_SIZES),
}
LOADERS = {
    "vit": load_vit,
    "deit": load_vit,
    "clip_vision_model": load_vit,
    "clip": load_vit,
    "llama": load_llm,
    "qwen2": load_llm,
    "mamba": load_mamba,
}

# Attributes of every PretrainedConfig that cannot change the forward pass.
COMMON = {
    "transformers_version",
    "_name_or_path",
    "dtype",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_cache",
    "chunk_size_feed_forward",
    "problem_type",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
}
# Per architecture, the attributes that cannot change the loaded model (this file's own list,
# independent of the loader's tables).
_VIT_HARMLESS = {
    "hidden_dropout_prob",  # dropout: identity at inference
    "attention_probs_dropout_prob",
    "initializer_range",  # initialisation only
    "encoder_stride",  # ViTForMaskedImageModeling's decoder only
}
HARMLESS = {
    "vit": _VIT_HARMLESS,
    # a DeiT classifier with teacher has no pooler, so the pooler's settings are unused
    "deit": _VIT_HARMLESS | {"pooler_output_size", "pooler_act"},
    # the projection is not part of the vision tower
    "clip_vision_model": {
        "projection_dim",
        "attention_dropout",
        "initializer_range",
        "initializer_factor",
    },
    "clip": {"projection_dim", "logit_scale_init_value", "initializer_factor"},
    # pretraining_tp: transformers < 5 sums pretraining_tp slices of each matmul (the same
    # product up to rounding); transformers 5 ignores it
    "llama": {"initializer_range", "attention_dropout", "pretraining_tp"},
    # the config's explicit layer_types (all full attention) decide; sliding is refused
    # elsewhere (test_llm_hf.test_config_errors)
    "qwen2": {
        "initializer_range",
        "attention_dropout",
        "use_sliding_window",
        "sliding_window",
        "max_window_layers",
    },
    # initialisation only, or which PyTorch code path runs the same scan
    "mamba": {
        "initializer_range",
        "time_step_init_scheme",
        "rescale_prenorm_residual",
        "use_mambapy",
        "use_associative_scan",
    },
}
# Changing these tests something else: the type (model_type / architectures), label tables
# (sized by the head's tensors), nested configs and per-layer lists (tested on their own).
SKIP = {
    "model_type",
    "architectures",
    "id2label",
    "label2id",
    "text_config",
    "vision_config",
    "layer_types",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for model_type, (build, _) in CASES.items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(model_type)
        build(transformers).save_pretrained(path)
        out[model_type] = path
    return out


@pytest.fixture(scope="module")
def baseline(saved) -> dict[str, Any]:
    """model_type -> the loaded model's config (from save_pretrained's own config.json)."""
    return {t: LOADERS[t](path).config for t, path in saved.items()}


def _with_config(src: Path, dst: Path, cfg: dict[str, Any]) -> Path:
    """A checkpoint directory with ``cfg`` as config.json and ``src``'s weights."""
    dst.mkdir(parents=True)
    (dst / "config.json").write_text(json.dumps(cfg))
    os.symlink(src / "model.safetensors", dst / "model.safetensors")
    return dst


def _config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


def _full(path: Path) -> dict[str, Any]:
    """Every attribute of the transformers config class, at transformers' value."""
    config = transformers.AutoConfig.from_pretrained(path)
    return json.loads(config.to_json_string(use_diff=False))


def _load(model_type: str, src: Path, dst: Path, cfg: dict[str, Any]):
    return LOADERS[model_type](_with_config(src, dst, cfg))


# ------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize("model_type", list(CASES))
def test_defaults_tables_agree_with_transformers(saved, baseline, tmp_path, model_type):
    full = _full(saved[model_type])
    assert (
        _load(model_type, saved[model_type], tmp_path / "full", full).config
        == (baseline[model_type])
    )
    keep = set(CASES[model_type][1]) | {"model_type", "architectures", "id2label", "label2id"}
    minimal = {k: v for k, v in full.items() if k in keep}
    if model_type == "clip":
        minimal["vision_config"] = {k: full["vision_config"][k] for k in VIT_SIZES}
    loaded = _load(model_type, saved[model_type], tmp_path / "minimal", minimal)
    assert loaded.config == baseline[model_type]


def _other(key: str, value: Any) -> Any:
    """A different value of the same kind (None for values this test does not vary)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.25
    if isinstance(value, str):
        return value + "_other"
    if value is None:
        return 3
    if key == "rope_parameters":
        return {**value, "rope_theta": 2 * value["rope_theta"] + 1}
    return None


def _variations(model_type: str) -> list[tuple[str, str]]:
    """``(model_type, attribute)`` for every attribute of the transformers config class."""
    cls = {
        "vit": "ViTConfig",
        "deit": "DeiTConfig",
        "clip_vision_model": "CLIPVisionConfig",
        "clip": "CLIPConfig",
        "llama": "LlamaConfig",
        "qwen2": "Qwen2Config",
        "mamba": "MambaConfig",
    }[model_type]
    keys = getattr(transformers, cls)().to_dict()
    return [(model_type, k) for k in sorted(keys) if k not in SKIP]


@pytest.mark.parametrize(
    "model_type, key",
    [pytest.param(t, k, id=f"{t}-{k}") for m in CASES for t, k in _variations(m)],
)
def test_no_attribute_is_silently_ignored(saved, baseline, tmp_path, model_type, key):
    full = _full(saved[model_type])
    if key not in full:
        pytest.skip(f"{key} is not written for this checkpoint")
    value = _other(key, full[key])
    if value is None:
        pytest.skip(f"{key}={full[key]!r} is not varied here")
    cfg = {**full, key: value}
    if key in COMMON or key in HARMLESS[model_type]:
        loaded = _load(model_type, saved[model_type], tmp_path / "c", cfg)
        assert loaded.config == baseline[model_type]
        return
    try:
        loaded = _load(model_type, saved[model_type], tmp_path / "c", cfg)
    except ValueError:
        return
    assert loaded.config != baseline[model_type], f"{key}={value!r} was ignored"


def test_clip_vision_config_attributes_are_checked(saved, baseline, tmp_path):
    full = _full(saved["clip"])
    for i, (key, value) in enumerate(_full(saved["clip_vision_model"]).items()):
        other = _other(key, value)
        if key in SKIP or key in COMMON or other is None or key not in full["vision_config"]:
            continue
        cfg = {**full, "vision_config": {**full["vision_config"], key: other}}
        if key in HARMLESS["clip_vision_model"]:
            loaded = _load("clip", saved["clip"], tmp_path / str(i), cfg)
            assert loaded.config == baseline["clip"], key
            continue
        try:
            loaded = _load("clip", saved["clip"], tmp_path / str(i), cfg)
        except ValueError:
            continue
        assert loaded.config != baseline["clip"], f"vision_config {key}={other!r} was ignored"


# ------------------------------------------------------------------------------ refusals

REFUSED = [
    # a made-up future attribute: unknown, so refused
    ("llama", {"new_thing": 1}, r"new_thing=1 \(not an attribute of LlamaConfig\)"),
    # Gemma-2-style logit soft-capping would change the attention
    ("llama", {"attn_logit_softcapping": 50.0}, r"attn_logit_softcapping=50\.0 \(not an"),
    # a PretrainedConfig attribute that would remove heads
    ("llama", {"pruned_heads": {"0": [1]}}, r"pruned_heads=\{'0': \[1\]\} \(LlamaConfig default"),
    # Qwen2 hard-codes its biases: a config that claims otherwise is not a Qwen2
    ("qwen2", {"attention_bias": False}, r"attention_bias=False \(not an attribute of Qwen2"),
    # quantised weights must not load as float weights
    ("qwen2", {"quantization_config": {"quant_method": "gptq"}}, r"quantization_config="),
    ("vit", {"add_cross_attention": True}, r"add_cross_attention=True \(ViTConfig default False"),
    ("deit", {"new_thing": 1}, r"new_thing=1 \(not an attribute of DeiTConfig\)"),
    ("clip_vision_model", {"new_thing": 1}, r"not an attribute of CLIPVisionConfig"),
    ("clip", {"new_thing": 1}, r"new_thing=1 \(not an attribute of CLIPConfig\)"),
    ("clip", {"vision_config_dict": {"new_thing": 1}}, r"not an attribute of CLIPVisionConfig"),
    # mamba_ssm's rms_norm=False means LayerNorm
    ("mamba", {"rms_norm": False}, r"rms_norm=False \(not an attribute of MambaConfig\)"),
]


@pytest.mark.parametrize("model_type, change, match", REFUSED, ids=lambda x: str(x)[:40])
def test_unhandled_attribute_is_refused(saved, tmp_path, model_type, change, match):
    cfg = {**_config(saved[model_type]), **change}
    with pytest.raises(ValueError, match=r"does not handle: .*" + match):
        _load(model_type, saved[model_type], tmp_path / "c", cfg)


def test_clip_vision_config_is_checked(saved, tmp_path):
    cfg = _config(saved["clip"])
    cfg["vision_config"] = {**cfg["vision_config"], "new_thing": 1}
    match = r"config\.json vision_config sets .*new_thing=1 \(not an attribute of CLIPVision"
    with pytest.raises(ValueError, match=match):
        _load("clip", saved["clip"], tmp_path / "c", cfg)


ACCEPTED = [
    ("llama", {"pretraining_tp": 2, "attention_dropout": 0.1, "initializer_range": 1.0}),
    # transformers < 5 bookkeeping and generation settings
    ("llama", {"torch_dtype": "bfloat16", "max_length": 20, "pruned_heads": {}}),
    ("qwen2", {"sliding_window": 7, "attention_dropout": 0.1}),
    ("vit", {"encoder_stride": 4, "hidden_dropout_prob": 0.1, "tie_word_embeddings": True}),
    ("deit", {"initializer_range": 1.0, "attention_probs_dropout_prob": 0.1}),
    ("clip_vision_model", {"projection_dim": 7, "attention_dropout": 0.1}),
    ("clip", {"logit_scale_init_value": 1.0, "projection_dim": 7, "text_config": {}}),
    ("mamba", {"use_mambapy": True, "use_associative_scan": False, "initializer_range": 1.0}),
]


@pytest.mark.parametrize("model_type, change", ACCEPTED, ids=lambda x: str(x)[:40])
def test_harmless_attributes_still_load(saved, baseline, tmp_path, model_type, change):
    cfg = {**_config(saved[model_type]), **change}
    assert (
        _load(model_type, saved[model_type], tmp_path / "c", cfg).config == (baseline[model_type])
    )


# The PretrainedConfig attributes transformers 4.x wrote into every config.json (and into CLIP's
# vision_config), at their 4.x defaults: real hub checkpoints carry them.
V4_PRETRAINED = dict(
    torchscript=False,
    torch_dtype="float32",
    use_bfloat16=False,
    tf_legacy_loss=False,
    pruned_heads={},
    is_decoder=False,
    cross_attention_hidden_size=None,
    add_cross_attention=False,
    tie_encoder_decoder=False,
    max_length=20,
    min_length=0,
    do_sample=False,
    early_stopping=False,
    num_beams=1,
    num_beam_groups=1,
    diversity_penalty=0.0,
    temperature=1.0,
    top_k=50,
    top_p=1.0,
    typical_p=1.0,
    repetition_penalty=1.0,
    length_penalty=1.0,
    no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0,
    bad_words_ids=None,
    num_return_sequences=1,
    output_scores=False,
    return_dict_in_generate=False,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    remove_invalid_values=False,
    exponential_decay_length_penalty=None,
    suppress_tokens=None,
    begin_suppress_tokens=None,
    finetuning_task=None,
    tokenizer_class=None,
    prefix=None,
    sep_token_id=None,
    decoder_start_token_id=None,
    task_specific_params=None,
)


@pytest.mark.parametrize("model_type", list(CASES))
def test_transformers4_pretrained_attributes_load(saved, baseline, tmp_path, model_type):
    cfg = {**V4_PRETRAINED, **_config(saved[model_type])}
    if model_type == "clip":
        cfg["vision_config"] = {**V4_PRETRAINED, **cfg["vision_config"]}
    assert (
        _load(model_type, saved[model_type], tmp_path / "c", cfg).config == (baseline[model_type])
    )


@pytest.mark.parametrize(
    "model_type, key, value, field",
    [
        ("llama", "rms_norm_eps", 1e-3, "rms_norm_eps"),
        ("qwen2", "max_position_embeddings", 99, "max_position_embeddings"),
        ("vit", "layer_norm_eps", 1e-3, "layer_norm_eps"),
        ("mamba", "layer_norm_epsilon", 1e-3, "layer_norm_epsilon"),
    ],
)
def test_handled_attribute_is_mapped(saved, tmp_path, model_type, key, value, field):
    cfg = {**_config(saved[model_type]), key: value}
    loaded = _load(model_type, saved[model_type], tmp_path / "c", cfg)
    assert getattr(loaded.config, field) == value
