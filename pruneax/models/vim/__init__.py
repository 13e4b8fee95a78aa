"""Vision Mamba (hustvl/Vim) with ToP-ViM token pruning."""

from pruneax.models.vim._model import (
    TOPVIM_LAYERS,
    VIM_METRICS,
    VIM_MODES,
    VIM_VARIANTS,
    BiMambaMixer,
    Vim,
    VimBlock,
    VimConfig,
    VimOutput,
    VimPruneStage,
    VimPruningPlan,
    causal_conv,
    gap_counts,
    vim_config,
    vim_flops,
    vim_token_scores,
)

__all__ = [
    "TOPVIM_LAYERS",
    "VIM_METRICS",
    "VIM_MODES",
    "VIM_VARIANTS",
    "BiMambaMixer",
    "Vim",
    "VimBlock",
    "VimConfig",
    "VimOutput",
    "VimPruneStage",
    "VimPruningPlan",
    "causal_conv",
    "gap_counts",
    "vim_config",
    "vim_flops",
    "vim_token_scores",
]
