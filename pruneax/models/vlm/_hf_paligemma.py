"""Hugging Face checkpoint import of ``PaliGemmaForConditionalGeneration`` into the VLM
(registered in ``VLM_LOADERS`` as ``"paligemma"``).

PaliGemma (v1) = SigLIP vision tower (no CLS token; its ``last_hidden_state``, after the final
LayerNorm) -> one linear projector (``multi_modal_projector.linear``) -> Gemma with the
prefix-LM mask (the prompt -- image tokens then text, ``token_type_ids == 0`` -- attends
bidirectionally, generated tokens causally) and RoPE positions numbered from 1. transformers 5
adds the projected image features to the sequence unscaled while Gemma's embedding scales the
text by ``sqrt(hidden_size)`` (4.x divided the image features by ``sqrt(hidden_size)`` and
scaled the whole sequence: the same); ``LlamaLM`` scales every input embedding, so the VLM
multiplies the projector outputs by ``hidden_size ** -0.5`` (``VLMConfig.image_scale``).

Pre-LLM methods that read the [CLS] attention (FasterVLM, ``"topk"``): SigLIP has no [CLS]
row, so ``VLM.select_visual`` gives them the attention each patch receives at the feature
layer's block (``pruneax.tokens.received_attention``, mean over heads and queries) instead.

References: transformers' ``models/paligemma/{configuration,modeling}_paligemma.py``,
``models/gemma/modeling_gemma.py`` (``GemmaTextScaledWordEmbedding``) and
``models/siglip/modeling_siglip.py``; Beyer et al., "PaliGemma: A versatile 3B VLM for
transfer", 2024 (arXiv:2407.07726).
"""

from __future__ import annotations

from typing import Any

from pruneax.models._shared.loader import ConfigRules, check_config
from pruneax.models.vlm._config import VLMConfig
from pruneax.models.vlm._hf import (
    VLM_LOADERS,
    build_vlm,
    sub_config,
    text_config,
    vision_spec,
    vlm_key_map,
)
from pruneax.models.vlm._model import VLM

# transformers' PaliGemmaConfig (v5) defaults. Harmless: the top-level vocab_size / hidden_size
# (copies of the text config's, not read by the model) and v4's ignore_index (loss only).
_PALIGEMMA_RULES = ConfigRules(
    "PaliGemmaConfig",
    dict(
        vision_config=None,
        text_config=None,
        image_token_index=256000,
        vocab_size=257152,
        projection_dim=2048,
        hidden_size=2048,
        tie_word_embeddings=True,
    ),
    handled=frozenset(
        "vision_config text_config image_token_index image_token_id projection_dim "
        "tie_word_embeddings".split()
    ),
    harmless=frozenset({"vocab_size", "hidden_size", "ignore_index"}),
)
# PaliGemmaConfig's sub-configs when config.json has none (its SubConfigSpec init_kwargs).
_VISION = dict(
    model_type="siglip_vision_model",
    intermediate_size=4096,
    hidden_size=1152,
    patch_size=14,
    image_size=224,
    num_hidden_layers=27,
    num_attention_heads=16,
    vision_use_head=False,
)
_TEXT = dict(
    model_type="gemma",
    hidden_size=2048,
    num_hidden_layers=18,
    intermediate_size=16384,
    num_attention_heads=8,
    num_key_value_heads=1,
    vocab_size=257152,
)
# text_config attributes PaliGemmaConfig sets itself: the image token count (the processor's)
# and use_bidirectional_attention (the prefix-LM mask, VLMConfig.prefix_lm).
_TEXT_OWN = ("num_image_tokens", "use_bidirectional_attention", "is_encoder_decoder")
# vision_config attributes PaliGemma configs carry that the SigLIP tower does not read:
# projection_dim (PaliGemmaConfig copies its own there), and in 4.x hub configs
# num_image_tokens (the processor's) and projector_hidden_act (the projector is one linear).
_VISION_OWN = ("projection_dim", "num_image_tokens", "projector_hidden_act")
_PROJECTOR = {"linear_1": "linear"}


def _paligemma_config(cfg: dict[str, Any]) -> tuple[VLMConfig, Any]:
    check_config(cfg, _PALIGEMMA_RULES, "load_vlm")
    c = _PALIGEMMA_RULES.complete(cfg)
    vision_cfg = sub_config(cfg, "vision_config", _VISION)
    for key in _VISION_OWN:
        vision_cfg.pop(key, None)
    spec = vision_spec(vision_cfg, "siglip_vision_model")
    text_cfg = sub_config(cfg, "text_config", _TEXT)
    if text_cfg.get("use_bidirectional_attention") is False:
        raise ValueError(
            "load_vlm: text_config use_bidirectional_attention=False (a causal prompt) is not "
            "supported; PaliGemma's prefix-LM mask is"
        )
    if text_cfg.get("model_type", "gemma") != "gemma":
        raise ValueError(
            f"load_vlm: PaliGemma text_config model_type must be 'gemma' (PaliGemma 2's "
            f"Gemma 2 is not supported); got {text_cfg.get('model_type')!r}"
        )
    llm = text_config(text_cfg, "gemma", tie=bool(c["tie_word_embeddings"]), drop=_TEXT_OWN)
    if c["projection_dim"] != llm.hidden_size:
        raise ValueError(
            f"load_vlm: projection_dim ({c['projection_dim']}) must equal the text model's "
            f"hidden_size ({llm.hidden_size})"
        )
    if spec.config.num_prefix:
        raise ValueError("load_vlm: PaliGemma's vision tower must have no prefix tokens")
    try:
        config = VLMConfig(
            vision=spec.config,
            llm=llm,
            vision_layer=-1,
            projector="linear",
            projector_bias=True,
            image_scale=llm.hidden_size**-0.5,
            prefix_lm=True,
            image_token_id=cfg.get("image_token_id", c["image_token_index"]),
            vision_norm=True,
            position_offset=1,
        )
    except ValueError as e:
        raise ValueError(f"load_vlm: unsupported config.json ({e})") from None
    return config, spec


def _load_paligemma(
    path: Any, cfg: dict[str, Any], dtype: Any, param_dtype: Any, mesh: Any = None
) -> VLM:
    config, spec = _paligemma_config(cfg)
    key_map = vlm_key_map(spec, projector=_PROJECTOR, tied=config.llm.tie_word_embeddings)
    return build_vlm(path, config, key_map, dtype, param_dtype, mesh)


VLM_LOADERS["paligemma"] = _load_paligemma
