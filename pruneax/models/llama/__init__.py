"""Llama-family decoder (Llama, Qwen2): config, model, KV cache, greedy generation, Hugging Face
and GGUF (llama.cpp) import, in-LLM visual-token pruning (the ``PruneSpec`` protocol and its
built-in specs), and post-training weight pruning from calibration text
(``calibrated_prune``: Wanda, SparseGPT, magnitude, block by block; ``ecoflap_prune``: ECoFLaP's
per-block sparsity allocation, then Wanda / SparseGPT), and NIRVANA structured pruning
(``nirvana_prune``: GQA groups and MLP channels from one backward, two-pool global allocation),
and Týr-the-Pruner (``tyr_prune``: local OBS pruning of o_proj / down_proj at several sparsity
levels per layer -> ``tyr_supernet``, evolutionary search of the layer-wise levels under a
sparse-KL fitness -> ``tyr_search``).
"""

from pruneax.models.llama._cache import (
    KVCache,
    init_cache,
)
from pruneax.models.llama._calibrate import (
    calibrated_prune,
)
from pruneax.models.llama._config import (
    LLM_VARIANTS,
    LlamaConfig,
    llm_config,
)
from pruneax.models.llama._ecoflap import (
    ecoflap_prune,
)
from pruneax.models.llama._generate import (
    GenerationOutput,
    decode_greedy,
    generate_greedy,
)
from pruneax.models.llama._gguf import (
    load_gguf,
)
from pruneax.models.llama._gguf_files import (
    GGUFTokenizer,
    gguf_tokenizer,
    smollm2_gguf_path,
)
from pruneax.models.llama._hf import (
    load_llm,
)
from pruneax.models.llama._model import (
    LlamaLM,
    LlamaOutput,
)
from pruneax.models.llama._nirvana import (
    nirvana_allocate,
    nirvana_prune,
    nirvana_scores,
    nirvana_select_calibration,
)
from pruneax.models.llama._prune import (
    PruneContext,
    PruneSpec,
    PruneStep,
    TransitionStats,
    check_prune,
)
from pruneax.models.llama._prune_fastv import (
    FastVSpec,
)
from pruneax.models.llama._prune_feather import (
    FeatherSpec,
    feather_criterion,
)
from pruneax.models.llama._prune_todre import (
    TodreSpec,
    todre_shares,
)
from pruneax.models.llama._prune_transprune import (
    TransPruneSpec,
    transprune_iga,
    transprune_ttv,
)
from pruneax.models.llama._prune_visiondrop import (
    VisionDropSpec,
    visiondrop_scores,
)
from pruneax.models.llama._rope import (
    rope_inv_freq,
)
from pruneax.models.llama._tyr import (
    TyrSupernet,
    tyr_apply,
    tyr_supernet,
)
from pruneax.models.llama._tyr_fitness import (
    tyr_fitness,
    tyr_sparse_kl,
)
from pruneax.models.llama._tyr_prune import (
    tyr_prune,
)
from pruneax.models.llama._tyr_search import (
    tyr_mutate,
    tyr_offspring,
    tyr_search,
)

__all__ = [
    "LLM_VARIANTS",
    "FastVSpec",
    "FeatherSpec",
    "GGUFTokenizer",
    "GenerationOutput",
    "KVCache",
    "LlamaConfig",
    "LlamaLM",
    "LlamaOutput",
    "PruneContext",
    "PruneSpec",
    "PruneStep",
    "TodreSpec",
    "TransPruneSpec",
    "TransitionStats",
    "TyrSupernet",
    "VisionDropSpec",
    "calibrated_prune",
    "check_prune",
    "decode_greedy",
    "ecoflap_prune",
    "feather_criterion",
    "generate_greedy",
    "gguf_tokenizer",
    "init_cache",
    "llm_config",
    "load_gguf",
    "load_llm",
    "nirvana_allocate",
    "nirvana_prune",
    "nirvana_scores",
    "nirvana_select_calibration",
    "rope_inv_freq",
    "smollm2_gguf_path",
    "todre_shares",
    "transprune_iga",
    "transprune_ttv",
    "tyr_apply",
    "tyr_fitness",
    "tyr_mutate",
    "tyr_offspring",
    "tyr_prune",
    "tyr_search",
    "tyr_sparse_kl",
    "tyr_supernet",
    "visiondrop_scores",
]
