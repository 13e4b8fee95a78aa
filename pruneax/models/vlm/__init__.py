"""LLaVA-style vision-language model (ViT -> projector -> LlamaLM) with pre-LLM visual-token
selection.
"""

from pruneax.models.vlm._flops import llm_tokens_per_layer, vlm_prefill_flops
from pruneax.models.vlm._model import (
    VLM,
    VLM_SELECT_ALIASES,
    VLM_SELECT_METHODS,
    VisualSelect,
    VLMConfig,
    VLMOutput,
    uniform_visual_indices,
)

__all__ = [
    "VLM",
    "VLM_SELECT_ALIASES",
    "VLM_SELECT_METHODS",
    "VLMConfig",
    "VLMOutput",
    "VisualSelect",
    "llm_tokens_per_layer",
    "uniform_visual_indices",
    "vlm_prefill_flops",
]
