"""LLaVA-style vision-language model (ViT -> projector -> LlamaLM) with pre-LLM visual-token
selection, ``load_vlm`` (Hugging Face LLaVA-1.5 / LLaVA-NeXT / PaliGemma checkpoints), and
``LlavaNext`` (LLaVA-NeXT's anyres tiling, unpadding and ``image_newline`` around a ``VLM``).
"""

from pruneax.models.vlm import _hf_paligemma  # noqa: F401  (registers "paligemma")
from pruneax.models.vlm._anyres import AnyresLayout, anyres_layout, select_best_resolution
from pruneax.models.vlm._flops import llm_tokens_per_layer, vlm_prefill_flops
from pruneax.models.vlm._hf import VLM_LOADERS, load_vlm
from pruneax.models.vlm._hf_next import load_llava_next  # registers "llava_next"
from pruneax.models.vlm._model import (
    VLM,
    VLM_SELECT_ALIASES,
    VLM_SELECT_METHODS,
    VisualSelect,
    VLMConfig,
    VLMOutput,
    uniform_visual_indices,
)
from pruneax.models.vlm._next import LlavaNext
from pruneax.models.vlm._next_config import LlavaNextConfig, LlavaNextOutput
from pruneax.models.vlm._select import VISION_SELECT_METHODS

__all__ = [
    "VISION_SELECT_METHODS",
    "VLM",
    "VLM_LOADERS",
    "VLM_SELECT_ALIASES",
    "VLM_SELECT_METHODS",
    "AnyresLayout",
    "LlavaNext",
    "LlavaNextConfig",
    "LlavaNextOutput",
    "VLMConfig",
    "VLMOutput",
    "VisualSelect",
    "anyres_layout",
    "llm_tokens_per_layer",
    "load_llava_next",
    "load_vlm",
    "select_best_resolution",
    "uniform_visual_indices",
    "vlm_prefill_flops",
]
