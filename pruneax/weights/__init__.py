"""Weight-pruning transforms over parameter pytrees (no Flax dependency).

Scores -> masks (layerwise, global, N:M) -> ``apply_masks``; sparsity distributions (uniform,
ERK) and schedules (one-shot, iterative, polynomial); an optax wrapper that keeps pruned weights
at zero; and the lottery-ticket steps (``prune_round``, ``rewind``, ``random_masks``).
Post-training pruning from calibration activations, one linear layer at a time: Wanda
(``input_sq_norms`` -> ``wanda_mask``), SparseGPT (``hessian_init`` / ``hessian_update`` ->
``sparsegpt_prune``) and the layer-wide ``magnitude_mask`` baseline; their kernels are
``[d_in, d_out]`` (Flax layout). ECoFLaP's layer-wise allocation: zeroth- / first-order
importance per matrix (``zeroth_order_scores``, ``first_order_scores``, ``group_scores``) ->
per-group sparsity (``allocate_keep`` / ``allocate_sparsity``). Pruning by Explaining: z+ LRP
rules (``zplus_dense``, ``zplus_conv``, ``maxpool_relevance``) through an ``LRPLayer`` plan
(``lrp_relevance``), filter criteria (``lrp_filter_scores``, ``weight_filter_scores``,
``taylor_filter_scores``), global ranking (``lowest_filters``), ``filter_masks`` and the
``iterative_filter_pruning`` schedule. Týr-the-Pruner's local pruner: whole input groups removed
by OBS rounds with an exact least-squares refit (``tyr_local_prune``, ``tyr_layer_loss``).
Training-time pruning as optax transformations: ISS-P soft shrinkage (``soft_shrink``, ``iss_p``,
``iss_masks``) and MaskSparsity's BN-scale L1 (``bn_l1_gradient``, ``mask_sparsity``,
``bn_prune_masks``; its masks mark channels to prune).
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
from pruneax.weights._filter_prune import filter_masks, iterative_filter_pruning
from pruneax.weights._filters import (
    lowest_filters,
    lrp_filter_scores,
    normalize_filter_scores,
    taylor_filter_scores,
    weight_filter_scores,
)
from pruneax.weights._iss import ISSState, iss_masks, iss_p, soft_shrink
from pruneax.weights._lottery import prune_round, random_masks, rewind
from pruneax.weights._lrp import (
    LRPLayer,
    lrp_relevance,
    maxpool_relevance,
    zplus_conv,
    zplus_dense,
)
from pruneax.weights._masks import (
    SparsityReport,
    apply_masks,
    global_masks,
    layerwise_masks,
    nm_masks,
    sparsity_report,
)
from pruneax.weights._masksparsity import bn_l1_gradient, bn_prune_masks, mask_sparsity
from pruneax.weights._optax import MaskedState, masked_optimizer, set_masks
from pruneax.weights._paths import default_prunable, leaf_names, path_name, prunable_names
from pruneax.weights._schedules import iterative, one_shot, polynomial
from pruneax.weights._scores import magnitude_scores, random_scores, saliency_scores
from pruneax.weights._sparsegpt import HessianState, hessian_init, hessian_update, sparsegpt_prune
from pruneax.weights._tyr import tyr_layer_loss, tyr_local_prune
from pruneax.weights._wanda import input_sq_norms, magnitude_mask, wanda_mask, wanda_scores

__all__ = [
    "HessianState",
    "ISSState",
    "LRPLayer",
    "MaskedState",
    "SparsityReport",
    "allocate_keep",
    "allocate_sparsity",
    "apply_masks",
    "bn_l1_gradient",
    "bn_prune_masks",
    "default_prunable",
    "erk_sparsities",
    "filter_masks",
    "first_order_scores",
    "global_masks",
    "group_scores",
    "hessian_init",
    "hessian_update",
    "input_sq_norms",
    "iss_masks",
    "iss_p",
    "iterative",
    "iterative_filter_pruning",
    "layerwise_masks",
    "leaf_names",
    "lowest_filters",
    "lrp_filter_scores",
    "lrp_relevance",
    "magnitude_mask",
    "magnitude_scores",
    "mask_sparsity",
    "masked_optimizer",
    "maxpool_relevance",
    "nm_masks",
    "normalize_filter_scores",
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
    "soft_shrink",
    "sparsegpt_prune",
    "sparsity_report",
    "taylor_filter_scores",
    "tyr_layer_loss",
    "tyr_local_prune",
    "uniform_sparsities",
    "wanda_mask",
    "wanda_scores",
    "weight_filter_scores",
    "zeroth_order_scores",
    "zplus_conv",
    "zplus_dense",
]
