"""Structured pruning of transformers: remove whole attention heads and MLP channels.

Each architecture says where its units sit and what they cost (a ``StructuredArch``, beside its
model: ``vit/_structured.py``, ``llama/_structured.py``); ``register_structured`` adds one.

Shapes really shrink: ``prune_structured`` builds a smaller ``ViT`` / ``LlamaLM`` whose config
records the surviving sizes per layer (``layer_heads`` / ``layer_kv_heads`` / ``layer_mlp``)
and copies the kept slices of every weight, in their original order. Units are

- a ViT attention head: its ``hd`` columns of ``query`` / ``key`` / ``value`` (kernel and bias)
  and its ``hd`` rows of ``out``'s kernel;
- a Llama GQA group (heads are removed a whole group at a time so that grouped-query attention
  stays grouped): one key / value head (``hd`` columns of ``k_proj`` / ``v_proj``) with its
  ``num_groups`` query heads (``num_groups * hd`` columns of ``q_proj``, rows of ``o_proj``);
- an MLP channel: a column of ``fc1`` (kernel and bias) and a row of ``fc2``'s kernel (ViT), or
  a column of ``gate_proj`` and ``up_proj`` and a row of ``down_proj`` (SwiGLU).

Biases of the output projections (``out``, ``o_proj``, ``fc2``, ``down_proj``) belong to no unit
and stay; a layer left with no head (no channel) adds just that bias.

Scores (``head_importance`` / ``mlp_importance``): ``"magnitude"`` is the L2 norm of all the
unit's weights; ``"taylor"`` is the first-order Taylor estimate of the loss change when the
unit is removed, ``|sum_w w * dL/dw|`` over the unit's weights, with ``dL/dw`` averaged over
calibration batches (``taylor_grads``).

``allocate_units`` distributes a parameter or FLOPs budget over the layers GLOBALLY: every unit of
every layer is ranked by normalised score per unit cost and the lowest are removed until the
model fits the budget (see ``allocate_units`` for the normalisation).

References: Michel et al., "Are Sixteen Heads Really Better than One?", NeurIPS 2019
(arXiv:1905.10650); Molchanov et al., "Pruning Convolutional Neural Networks for Resource
Efficient Inference", ICLR 2017 (arXiv:1611.06440) and "Importance Estimation for Neural
Network Pruning", CVPR 2019 (arXiv:1906.10771); Ma et al., "LLM-Pruner: On the Structural
Pruning of Large Language Models", NeurIPS 2023 (arXiv:2305.11627).
"""

from pruneax.models.llama._structured import LLAMA_STRUCTURED
from pruneax.models.structured._allocate import (
    COSTS,
    NORMALIZATIONS,
    allocate_units,
    config_flops,
    config_param_count,
    unit_counts,
)
from pruneax.models.structured._arch import (
    Slice,
    StructuredArch,
    StructuredKeep,
    register_structured,
    structured_archs,
)
from pruneax.models.structured._importance import (
    METHODS,
    head_importance,
    mlp_importance,
    taylor_grads,
)
from pruneax.models.structured._prune import (
    config_from_json,
    config_to_json,
    load_pruned,
    prune_structured,
    save_pruned,
)
from pruneax.models.vit._structured import VIT_STRUCTURED

register_structured(VIT_STRUCTURED)  # first: messages name "a ViT or a LlamaLM"
register_structured(LLAMA_STRUCTURED)

__all__ = [
    "COSTS",
    "METHODS",
    "NORMALIZATIONS",
    "Slice",
    "StructuredArch",
    "StructuredKeep",
    "allocate_units",
    "config_flops",
    "config_from_json",
    "config_param_count",
    "config_to_json",
    "head_importance",
    "load_pruned",
    "mlp_importance",
    "prune_structured",
    "register_structured",
    "save_pruned",
    "structured_archs",
    "taylor_grads",
    "unit_counts",
]
