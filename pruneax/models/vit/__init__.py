"""Vision Transformer (ViT, DeiT, CLIP image tower) with static token-pruning plans, and its
Hugging Face import.
"""

from pruneax.models.vit._hf import (
    load_vit,
)
from pruneax.models.vit._model import (
    VIT_VARIANTS,
    ViT,
    ViTConfig,
    ViTOutput,
    vit_config,
)
from pruneax.models.vit._plan import (
    METHODS,
    PruneStage,
    PruningPlan,
    apply_stage,
)

__all__ = [
    "METHODS",
    "VIT_VARIANTS",
    "PruneStage",
    "PruningPlan",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "apply_stage",
    "load_vit",
    "vit_config",
]
