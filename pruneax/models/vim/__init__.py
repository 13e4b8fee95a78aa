"""Vision Mamba (hustvl/Vim) with ToP-ViM token pruning."""

from pruneax.models.mamba import causal_conv, gap_counts, pruned_mixer_forward
from pruneax.models.vim._config import (
    TOPVIM_LAYERS,
    VIM_METRICS,
    VIM_MODES,
    VIM_VARIANTS,
    VimConfig,
    vim_config,
)
from pruneax.models.vim._mixer import BiMambaMixer, VimBlock
from pruneax.models.vim._model import Vim, VimOutput, vim_flops
from pruneax.models.vim._plan import VimPruneStage, VimPruningPlan
from pruneax.models.vim._scores import vim_token_scores

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
    "pruned_mixer_forward",
    "vim_config",
    "vim_flops",
    "vim_token_scores",
]
