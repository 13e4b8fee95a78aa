"""Llama-family decoder (Llama, Qwen2): config, model, KV cache, greedy generation, Hugging Face
import and in-LLM visual-token pruning specs.
"""

from pruneax.models.llama._hf import (
    load_llm,
)
from pruneax.models.llama._model import (
    LLM_VARIANTS,
    GenerationOutput,
    KVCache,
    LlamaConfig,
    LlamaLM,
    LlamaOutput,
    generate_greedy,
    init_cache,
    llm_config,
    rope_inv_freq,
)
from pruneax.models.llama._prune import (
    FastVSpec,
    FeatherSpec,
    TodreSpec,
    feather_criterion,
    todre_shares,
)

__all__ = [
    "LLM_VARIANTS",
    "FastVSpec",
    "FeatherSpec",
    "GenerationOutput",
    "KVCache",
    "LlamaConfig",
    "LlamaLM",
    "LlamaOutput",
    "TodreSpec",
    "feather_criterion",
    "generate_greedy",
    "init_cache",
    "llm_config",
    "load_llm",
    "rope_inv_freq",
    "todre_shares",
]
