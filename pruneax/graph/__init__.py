"""Structured pruning of any traceable JAX function: a dependency graph read from its jaxpr.

Structurally Prune Anything (SPA) builds the graph of coupled channels from an ONNX export;
in JAX the computation already is a graph. ``trace(fn, params, *args)`` traces
``fn(params, *args)`` once and follows every parameter axis through the primitives that couple
axes (``dot_general`` contractions and batch axes, convolution features including grouped and
depthwise ones, elementwise ops and broadcasting, ``reshape`` splitting channels into heads,
equal-piece ``concatenate`` / ``split`` / ``slice`` such as RoPE's rotate-half, transposes,
reductions, ``gather`` embedding lookups, and the bodies of ``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``remat``, ``scan``, ``while`` and ``cond``) into ``Group``s: channels that
must be removed together. A group is *pinned* (not prunable) when one of its axes may not
shrink - an input or output of ``fn``, a convolution window, an unequal concatenation, a
primitive the graph does not follow (listed in ``graph.unfollowed``, never guessed) - and
*exact* when removing its channels computes what zeroing their parameters computes (a zero
analysis; a LayerNorm over a pruned hidden axis is the usual inexact case).

- ``trace`` -> ``DependencyGraph`` (``groups``, ``prunable()``, ``summary()``);
  ``from_nnx(model)`` gives ``(fn, params)`` for a Flax NNX model.
- ``group_scores`` (group L2 by default, or any per-element score pytree) -> ``select``
  (global or local, a fraction of channels, parameters or FLOPs) -> ``prune`` (smaller
  parameters + ``PrunedFunction``) or ``mask`` (zeroed dense parameters);
  ``param_count`` / ``flops`` of a selection; ``map_keep`` carries a selection to another
  trace of the same model (``trace(..., free_outputs=...)`` of a training step whose updated
  batch-norm statistics shrink with their channels).

Scanned layers (``nnx.scan`` / ``lax.scan`` over stacked parameters) share one body, so a group
inside the body removes the same channels from every layer.
"""

from pruneax.graph._graph import DependencyGraph, Group, Member, trace
from pruneax.graph._nnx import from_nnx
from pruneax.graph._prune import (
    PrunedFunction,
    check_keep,
    flops,
    group_scores,
    map_keep,
    mask,
    param_count,
    prune,
    select,
)

__all__ = [
    "DependencyGraph",
    "Group",
    "Member",
    "PrunedFunction",
    "check_keep",
    "flops",
    "from_nnx",
    "group_scores",
    "map_keep",
    "mask",
    "param_count",
    "prune",
    "select",
    "trace",
]
