"""Weight-pruning transforms over parameter pytrees (no Flax dependency).

Scores -> masks (layerwise, global, N:M) -> ``apply_masks``; sparsity distributions (uniform,
ERK) and schedules (one-shot, iterative, polynomial); an optax wrapper that keeps pruned weights
at zero; and the lottery-ticket steps (``prune_round``, ``rewind``, ``random_masks``).
Post-training pruning from calibration activations, one linear layer at a time: Wanda
(``input_sq_norms`` -> ``wanda_mask``), SparseGPT (``hessian_init`` / ``hessian_update`` ->
``sparsegpt_prune``) and the layer-wide ``magnitude_mask`` baseline; their kernels are
``[d_in, d_out]`` (Flax layout). ECoFLaP's layer-wise allocation: zeroth- / first-order
importance per matrix (``zeroth_order_scores``, ``first_order_scores``, ``group_scores``) ->
per-group sparsity (``allocate_keep`` / ``allocate_sparsity``).
Mask trees mirror the parameter tree: bool arrays (True = kept) for prunable leaves, None
elsewhere. Leaves are named by key path (``"dense/kernel"``) and chosen by predicate or glob.
"""

from pruneax.weights._allocate import allocate_keep, allocate_sparsity
from pruneax.weights._distributions import erk_sparsities, uniform_sparsities
from pruneax.weights._ecoflap import (
    first_order_scores,
    group_scores,
    zeroth_order_scores,
)
from pruneax.weights._lottery import prune_round, random_masks, rewind
from pruneax.weights._masks import (
    SparsityReport,
    apply_masks,
    global_masks,
    layerwise_masks,
    nm_masks,
    sparsity_report,
)
from pruneax.weights._optax import MaskedState, masked_optimizer, set_masks
from pruneax.weights._paths import default_prunable, leaf_names, path_name, prunable_names
from pruneax.weights._schedules import iterative, one_shot, polynomial
from pruneax.weights._scores import magnitude_scores, random_scores, saliency_scores
from pruneax.weights._sparsegpt import HessianState, hessian_init, hessian_update, sparsegpt_prune
from pruneax.weights._wanda import input_sq_norms, magnitude_mask, wanda_mask, wanda_scores

__all__ = [
    "HessianState",
    "MaskedState",
    "SparsityReport",
    "allocate_keep",
    "allocate_sparsity",
    "apply_masks",
    "default_prunable",
    "erk_sparsities",
    "first_order_scores",
    "global_masks",
    "group_scores",
    "hessian_init",
    "hessian_update",
    "input_sq_norms",
    "iterative",
    "layerwise_masks",
    "leaf_names",
    "magnitude_mask",
    "magnitude_scores",
    "masked_optimizer",
    "nm_masks",
    "one_shot",
    "path_name",
    "polynomial",
    "prunable_names",
    "prune_round",
    "random_masks",
    "random_scores",
    "rewind",
    "saliency_scores",
    "set_masks",
    "sparsegpt_prune",
    "sparsity_report",
    "uniform_sparsities",
    "wanda_mask",
    "wanda_scores",
    "zeroth_order_scores",
]
