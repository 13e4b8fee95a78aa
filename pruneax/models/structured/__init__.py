"""Structured pruning of ViT and LlamaLM: heads (GQA groups) and MLP channels physically removed."""

from pruneax.models.structured._structured import (
    StructuredKeep,
    allocate_units,
    config_flops,
    config_from_json,
    config_param_count,
    config_to_json,
    head_importance,
    load_pruned,
    mlp_importance,
    prune_structured,
    save_pruned,
    taylor_grads,
    unit_counts,
)

__all__ = [
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
    "save_pruned",
    "taylor_grads",
    "unit_counts",
]
