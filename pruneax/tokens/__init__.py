"""Token-pruning transforms: pure, jit-compiled functions of one example.

Selectors take scores or features of ONE example and a static budget ``k`` and return int32
indices ``[k]``: unique, sorted ascending, computed in float32 whatever the input dtype. Batch
them with ``jax.vmap``. Scorers turn attention into scores; ops apply a selection.

Protected tokens (CLS, registers, a middle class token): select among
``unprotected_positions(n, protected)`` and map back with ``with_protected`` (see ``_ops``).
"""

from pruneax.tokens._contextual import contextual_merge, dominant_contextual
from pruneax.tokens._coverage import coverage, coverage_matrix
from pruneax.tokens._diversity import kcenter, maxmin_diversity, maxsum_diversity
from pruneax.tokens._feather import feather, uniform_grid
from pruneax.tokens._flowcut import (
    flowcut_prune_count,
    flowcut_scores,
    flowcut_select,
    flowcut_step,
)
from pruneax.tokens._focal import focal_select, focal_significance
from pruneax.tokens._hiprune import hiprune, hiprune_anchors
from pruneax.tokens._holov import holov, holov_chunks
from pruneax.tokens._ops import (
    fuse_pruned,
    gather,
    keep_mask,
    unprotected_positions,
    with_protected,
)
from pruneax.tokens._registry import (
    INPUTS,
    METHODS,
    Method,
    get_method,
    register,
    select_tokens,
    uniform,
    unregister,
)
from pruneax.tokens._scorers import (
    cls_attention,
    last_query_attention,
    query_key_attention,
    received_attention,
)
from pruneax.tokens._tome import tome_merge
from pruneax.tokens._topk import budget, random, topk

__all__ = [
    "INPUTS",
    "METHODS",
    "Method",
    "budget",
    "cls_attention",
    "contextual_merge",
    "coverage",
    "coverage_matrix",
    "dominant_contextual",
    "feather",
    "flowcut_prune_count",
    "flowcut_scores",
    "flowcut_select",
    "flowcut_step",
    "focal_select",
    "focal_significance",
    "fuse_pruned",
    "gather",
    "get_method",
    "hiprune",
    "hiprune_anchors",
    "holov",
    "holov_chunks",
    "kcenter",
    "keep_mask",
    "last_query_attention",
    "maxmin_diversity",
    "maxsum_diversity",
    "query_key_attention",
    "random",
    "received_attention",
    "register",
    "select_tokens",
    "tome_merge",
    "topk",
    "uniform",
    "uniform_grid",
    "unprotected_positions",
    "unregister",
    "with_protected",
]
