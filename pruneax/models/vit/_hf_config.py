"""What ``load_vit`` accepts from a Hugging Face ``config.json``: the supported model types,
transformers' defaults and the attributes handled or harmless (the loader's allowlist), and the
small config-field conversions."""

from __future__ import annotations

from typing import Any

from pruneax.models._shared.loader import ConfigRules

SUPPORTED_MODEL_TYPES = (
    "vit",
    "deit",
    "clip_vision_model",
    "clip",
    "siglip_vision_model",
    "siglip",
)

# HF ``hidden_act`` -> ``ViTConfig.hidden_act`` (gelu_new / gelu_fast / gelu_pytorch_tanh are
# all the tanh approximation).
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
}

# transformers' ViTConfig / DeiTConfig (v5) __init__ defaults (pooler_output_size None =
# hidden_size). Harmless at inference: the two dropouts (identity at eval), initializer_range
# (initialisation only), encoder_stride (only ViTForMaskedImageModeling's decoder reads it; its
# weights would be unused tensors here) and tie_word_embeddings (a v4 PretrainedConfig field; a
# ViT has no word embeddings).
_VIT_DEFAULTS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
    image_size=224,
    patch_size=16,
    num_channels=3,
    qkv_bias=True,
    encoder_stride=16,
    pooler_output_size=None,
    pooler_act="tanh",
)
_HANDLED = frozenset(
    "hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act "
    "layer_norm_eps image_size patch_size num_channels".split()
)
_VIT_RULES = {
    name: ConfigRules(
        name,
        _VIT_DEFAULTS,
        handled=_HANDLED | {"qkv_bias", "pooler_output_size", "pooler_act"},
        harmless=frozenset(
            "hidden_dropout_prob attention_probs_dropout_prob initializer_range encoder_stride "
            "tie_word_embeddings".split()
        ),
    )
    for name in ("ViTConfig", "DeiTConfig")
}
# transformers' CLIPVisionConfig (v5) __init__ defaults. Harmless: projection_dim (the
# visual_projection is not part of the ViT), attention_dropout / dropout (v4), the initialiser
# scales, tie_word_embeddings (v4 PretrainedConfig field).
_CLIP_VISION_RULES = ConfigRules(
    "CLIPVisionConfig",
    dict(
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=512,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
    ),
    handled=_HANDLED,
    harmless=frozenset(
        "projection_dim attention_dropout dropout initializer_range initializer_factor "
        "tie_word_embeddings".split()
    ),
)
# transformers' CLIPConfig (v5) __init__ defaults: only the vision tower is loaded, so the text
# config, the projections' width and the logit scale cannot change it. transformers < 4.2x wrote
# vision_config_dict beside vision_config (its values win), handled the same way here.
_CLIP_RULES = ConfigRules(
    "CLIPConfig",
    dict(
        text_config=None,
        vision_config=None,
        projection_dim=512,
        logit_scale_init_value=2.6592,
        initializer_factor=1.0,
    ),
    handled=frozenset({"vision_config", "vision_config_dict"}),
    harmless=frozenset(
        "text_config text_config_dict projection_dim logit_scale_init_value "
        "initializer_factor".split()
    ),
)

# transformers' SiglipVisionConfig (v5) defaults. vision_use_head is handled (the MAP head).
# Harmless: attention_dropout (identity at eval), the initialiser scales and
# tie_word_embeddings (v4 PretrainedConfig field). Interpolation of the position embeddings is
# a forward argument (``interpolate_pos_encoding``, default False), not a config attribute:
# the ViT always uses the stored table at the configured image size.
_SIGLIP_VISION_RULES = ConfigRules(
    "SiglipVisionConfig",
    dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=16,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        vision_use_head=True,
    ),
    handled=_HANDLED | {"vision_use_head"},
    harmless=frozenset(
        "attention_dropout initializer_range initializer_factor tie_word_embeddings".split()
    ),
)
# transformers' SiglipConfig (v5): only the vision tower (and SiglipForImageClassification's
# classifier, num_labels / id2label) is loaded; the text config and the logit scale / bias
# cannot change it.
_SIGLIP_RULES = ConfigRules(
    "SiglipConfig",
    dict(text_config=None, vision_config=None, initializer_factor=1.0),
    handled=frozenset({"vision_config"}),
    harmless=frozenset({"text_config", "initializer_factor"}),
)


def _hw(value: Any, name: str) -> int | tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"load_vit: config {name} must be an int or [h, w]; got {value!r}")
        return (int(value[0]), int(value[1])) if value[0] != value[1] else int(value[0])
    return int(value)


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"load_vit: config hidden_act {name!r} is not supported; expected one of "
            f"{sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def _num_labels(cfg: dict[str, Any]) -> int:
    if "num_labels" in cfg:
        return int(cfg["num_labels"])
    if isinstance(cfg.get("id2label"), dict):
        return len(cfg["id2label"])
    return 2  # transformers' PretrainedConfig default


def _patch(cfg: dict[str, Any]) -> int:
    p = _hw(cfg["patch_size"], "patch_size")
    if not isinstance(p, int):
        raise ValueError(f"load_vit: only square patches are supported; got patch_size {p}")
    return p


# Module paths: ours -> HF candidates (the first one present is used). ``{i}`` = block index.
