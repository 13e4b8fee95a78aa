"""Vision Transformer (ViT, DeiT, CLIP and SigLIP image towers) with static token-pruning plans,
and its Hugging Face import.

Modules: ``_config`` (``ViTConfig``, variants), ``_layers`` (attention: fused, explicit or with
the [CLS] row; MLP, block), ``_pos`` (sin-cos table), ``_head`` (SigLIP's ``MapHead``),
``_model`` (``ViT``), ``_stage`` (``ViTStage`` protocol, ``PruneStage``), ``_ops`` (ToMe, EViT,
registry selectors on the stream), ``_plan`` (``PruningPlan``), ``_flops`` (``vit_flops``),
``_hf`` / ``_hf_config`` (``load_vit``), ``_lucidrains`` (``load_lucidrains_vit``: lucidrains'
``vit-pytorch`` state dicts).
"""

from pruneax.models.vit._config import (
    VIT_VARIANTS,
    ViTConfig,
    vit_config,
)
from pruneax.models.vit._contextual import ContextualStage
from pruneax.models.vit._flops import (
    block_flops,
    vit_flops,
)
from pruneax.models.vit._flowcut import (
    FlowCutStage,
)
from pruneax.models.vit._head import (
    MapHead,
)
from pruneax.models.vit._hf import (
    load_vit,
)
from pruneax.models.vit._layers import (
    Attention,
    Block,
    Mlp,
    cls_row_attention,
)
from pruneax.models.vit._lucidrains import (
    load_lucidrains_vit,
)
from pruneax.models.vit._model import (
    ViT,
    ViTOutput,
)
from pruneax.models.vit._plan import (
    PruningPlan,
    apply_stage,
)
from pruneax.models.vit._pos import (
    FixedEmbedding,
    sincos_pos_embed,
)
from pruneax.models.vit._stage import (
    METHODS,
    PLACEMENTS,
    PruneStage,
    ViTStage,
)

__all__ = [
    "METHODS",
    "PLACEMENTS",
    "VIT_VARIANTS",
    "Attention",
    "Block",
    "ContextualStage",
    "FixedEmbedding",
    "FlowCutStage",
    "MapHead",
    "Mlp",
    "PruneStage",
    "PruningPlan",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "ViTStage",
    "apply_stage",
    "block_flops",
    "cls_row_attention",
    "load_lucidrains_vit",
    "load_vit",
    "sincos_pos_embed",
    "vit_config",
    "vit_flops",
]
