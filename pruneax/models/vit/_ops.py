"""What a ``PruneStage`` does to the token stream: ToMe merging, EViT fusion, registry selectors.

``run_prune_stage`` is ``PruneStage.apply``. A selector stage computes the inputs its registry
entry (``pruneax.tokens.METHODS``) needs from the stream and the kept attention, runs
``pruneax.tokens.select_tokens`` per example and keeps the selected patch tokens in their
original order. ``"tome"`` and ``"evit"`` are the ViT's own token ops (not selectors):

- ToMe (Bolya et al., ICLR 2023; ``facebookresearch/ToMe``, ``tome/merge.py`` and
  ``tome/patch/timm.py``): bipartite soft matching on the head-averaged keys of the block,
  size-weighted merge (``pruneax.tokens.tome_merge``), output in the published order
  ``[unmerged A; B]`` (the prefix first), so the next merge splits A / B as the published code.
- EViT (Liang et al., ICLR 2022; ``youweiliang/evit``, ``evit.py``): top-k patch tokens by the
  head-averaged CLS attention (the CLS row alone when the model computed only that row), the
  rest fused into one token weighted by that attention.
  Kept tokens stay in their original order (the published code orders them by descending
  attention; a ViT's outputs do not depend on the order of the tokens after the embedding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pruneax import tokens as T

# Registry inputs a ViT can compute; a method needing another (``text``...) cannot run here.
VIT_INPUTS = frozenset({"scores", "features", "shallow_scores", "deep_scores", "grid", "key"})


def _need(aux: dict, block: int, what: str, stage: Any) -> jax.Array:
    if block not in aux or aux[block].get(what) is None:
        if what == "attn" and aux.get(block, {}).get("cls_attn") is not None:
            raise ValueError(
                f"apply_stage: the {stage.method!r} stage at layer {stage.layer} needs block "
                f"{block}'s full attention probabilities (all query rows); only its CLS row was "
                "kept"
            )
        raise ValueError(
            f"apply_stage: the {stage.method!r} stage at layer {stage.layer} needs block "
            f"{block}'s attention; the model did not keep it (call it through ViT with this plan)"
        )
    return aux[block][what]


def _cls_scores(aux: dict, block: int, stage: Any, p: int) -> jax.Array:
    """Head-averaged CLS attention of ``block`` over the patch keys ([B, n]): from the CLS row
    the model kept (``aux[block]["cls_attn"]`` [B, H, T], fused path) or else from the full
    probabilities (received attention there when there is no prefix token)."""
    row = aux.get(block, {}).get("cls_attn")
    if row is not None and p > 0:
        return jnp.mean(row[:, :, p:].astype(jnp.float32), axis=1)
    return _scores(_need(aux, block, "attn", stage), p, received=False)


def _scores(attn: jax.Array, p: int, received: bool) -> jax.Array:
    """Head-averaged CLS attention over the patch keys ([B, n]); received attention if asked
    for or without a prefix token."""
    if received or p == 0:
        return jax.vmap(lambda a: T.received_attention(a, num_prefix=p))(attn)
    return jax.vmap(lambda a: T.cls_attention(a, num_prefix=p))(attn)


def _published_order(pos: jax.Array, metric: jax.Array, p: int) -> jax.Array:
    """Permutation putting ToMe's survivors (stream positions ``pos`` [t - r], ascending) in the
    published output order: the prefix, unmerged A (even positions), then B (odd positions).

    With a prefix token the published code sorts unmerged A by position; without one it leaves
    them in edge order (descending best similarity, ties to the lower A index).
    """
    group = jnp.where(pos < p, 0, jnp.where(pos % 2 == 0, 1, 2))
    second = jnp.zeros(pos.shape, jnp.float32)
    if p == 0:
        m = metric.astype(jnp.float32)
        m = m / jnp.linalg.norm(m, axis=-1, keepdims=True)
        sim = jnp.matmul(m[0::2], m[1::2].T, precision=jax.lax.Precision.HIGHEST)
        second = jnp.where(group == 1, -jnp.max(sim, axis=-1)[pos // 2], 0.0)
    return jnp.lexsort((pos, second, group))


def tome(stage: Any, x: jax.Array, size: jax.Array, aux: dict, p: int):
    """ToMe step of ``stage`` on ``x`` [B, P + n, D]: ``(x, size, src)`` in the published order."""
    t = x.shape[1]
    n = t - p
    r = n - stage.kept(n)
    bound = (t + 1) // 2 - (p + 1) // 2
    if r > bound:
        raise ValueError(
            f"PruneStage(method='tome', layer={stage.layer}, keep={stage.keep!r}): merging "
            f"{r} of {n} patch tokens in one step; one ToMe step merges at most {bound} "
            "(set A); spread it over layers with PruningPlan.merging(...)"
        )
    metric = _need(aux, stage.layer - 1, "keys", stage).mean(axis=1)  # [B, T, dh]
    if r == 0:  # the published step does nothing (no reordering either)
        return x, size, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (x.shape[0], n))
    merged, new_size, dest = jax.vmap(
        lambda xi, mi, si: T.tome_merge(xi, mi, r, size=si, num_protected=p)
    )(x, metric, size)
    # Each output row holds one survivor plus the set-A (even) tokens merged into it, whose
    # partner is a set-B (odd) token: the survivor is the row's odd token if any, else its only
    # token. Rows come in original order (ascending survivor position).
    rows = jnp.arange(t, dtype=jnp.int32)
    key_rows = jnp.where(rows % 2 == 1, rows + t, rows)
    pos = jax.vmap(lambda d: jax.ops.segment_max(key_rows, d, num_segments=t - r))(dest) % t
    order = jax.vmap(lambda q, m: _published_order(q, m, p))(pos, metric)
    take = lambda v: jnp.take_along_axis(v, order if v.ndim == 2 else order[..., None], axis=1)
    src = take(pos)[:, p:] - p
    return take(merged), take(new_size), src.astype(jnp.int32)


def evit(stage: Any, x: jax.Array, size: jax.Array, aux: dict, p: int):
    """EViT step: top-k by CLS attention, the rest fused into one token appended last."""
    b, t, _ = x.shape
    n = t - p
    k = stage.kept(n)
    a = _cls_scores(aux, stage.layer - 1, stage, p)
    if k == n:  # the published block leaves the tokens alone (no fused token)
        return x, size, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    idx = jax.vmap(lambda s: T.select_tokens("topk", k, scores=s))(a)
    xp = x[:, p:]
    fused = jax.vmap(T.fuse_pruned)(xp, idx, a.astype(xp.dtype))
    pruned = 1.0 - jax.vmap(lambda i: T.keep_mask(i, n))(idx).astype(jnp.float32)
    fused_size = (size[:, p:] * pruned).sum(axis=1, keepdims=True)
    kept_size = jnp.take_along_axis(size[:, p:], idx, axis=1)
    src = jnp.concatenate([idx, jnp.full((b, 1), -1, jnp.int32)], axis=1)
    x_new = jnp.concatenate([x[:, :p], fused], axis=1)
    size_new = jnp.concatenate([size[:, :p], kept_size, fused_size], axis=1)
    return x_new, size_new, src.astype(jnp.int32)


def select(stage: Any, x, size, aux: dict, p: int, grid: tuple[int, int], key):
    """A registry selector: inputs from ``METHODS[stage.method].needs``, original order kept."""
    method = T.get_method(stage.method)
    b, t, _ = x.shape
    n = t - p
    k = stage.kept(n)
    missing = sorted(method.needs - VIT_INPUTS)
    if missing:
        raise ValueError(
            f"PruneStage(method={stage.method!r}): the method needs {missing}, which a ViT does "
            f"not have; a ViT stage can give {sorted(VIT_INPUTS)}"
        )
    uses = method.needs | method.optional
    inputs: dict[str, jax.Array] = {}
    if "features" in uses:
        inputs["features"] = x[:, p:]
    if "scores" in uses:  # CLS attention (received attention without a prefix token)
        inputs["scores"] = _cls_scores(aux, stage.layer - 1, stage, p)
    if "deep_scores" in uses:  # attention received at the stage's block
        inputs["deep_scores"] = _scores(_need(aux, stage.layer - 1, "attn", stage), p, True)
    if "shallow_scores" in uses:  # attention received at the shallow block
        attn = _need(aux, stage.shallow, "attn", stage)
        inputs["shallow_scores"] = _scores(attn, p, received=True)
    if "key" in method.needs:
        if key is None:
            raise ValueError(
                f"apply_stage: method={stage.method!r} needs a PRNG key (ViT(..., key=...))"
            )
        inputs["key"] = jax.random.split(key, b)
    if "grid" in method.needs and n != grid[0] * grid[1]:
        raise ValueError(
            f"PruneStage(method={stage.method!r}, layer={stage.layer}) needs the full {grid[0]}x"
            f"{grid[1]} patch grid, but {n} patch tokens reach it (an earlier stage pruned): "
            "make it the first stage"
        )
    static = {"grid": tuple(grid)} if "grid" in uses else {}
    options = stage.method_options
    run = lambda inp: T.select_tokens(stage.method, k, **inp, **static, **options)
    if inputs:
        idx = jax.vmap(run)(inputs).astype(jnp.int32)
    else:  # nothing per example (e.g. "uniform"): one selection for the batch
        idx = jnp.broadcast_to(jnp.asarray(run({}), jnp.int32), (b, k))
    kept_x = jnp.take_along_axis(x[:, p:], idx[..., None], axis=1)
    kept_size = jnp.take_along_axis(size[:, p:], idx, axis=1)
    x_new = jnp.concatenate([x[:, :p], kept_x], axis=1)
    return x_new, jnp.concatenate([size[:, :p], kept_size], axis=1), idx


def run_prune_stage(stage: Any, x, *, size, aux, num_prefix: int, grid, key):
    """``PruneStage.apply``: dispatches to ToMe, EViT or the registry selector."""
    if stage.method == "tome":
        return tome(stage, x, size, aux, num_prefix)
    if stage.method == "evit":
        return evit(stage, x, size, aux, num_prefix)
    return select(stage, x, size, aux, num_prefix, grid, key)
