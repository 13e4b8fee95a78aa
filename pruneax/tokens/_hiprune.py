"""HiPrune: anchors from a shallow layer, their grid neighbours, registers from a deep layer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pruneax.tokens import _checks
from pruneax.tokens._numerics import priority_topk, rank_key


def hiprune_anchors(k: int, alpha: float) -> int:
    """HiPrune's anchor count: Python ``round(k * alpha / 5)`` (1, 3, 4 for k = 64, 128, 192).

    Args:
      k: the token budget, a Python int >= 1.
      alpha: the fraction of the budget for anchors and their buffers, in [0, 1].

    Returns:
      the number of anchors, a Python int in [0, k].

    Raises:
      ValueError: if ``k`` is not a positive int or ``alpha`` is outside [0, 1].

    Example:
      >>> import pruneax.tokens as T
      >>> [T.hiprune_anchors(k, 0.1) for k in (64, 128, 192)]
      [1, 3, 4]
    """
    k = _checks.static_int(k, "k")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    alpha = _checks.positive_float(alpha, "alpha", allow_zero=True)
    if alpha > 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    return min(round(k * alpha / 5), k)


def hiprune(
    shallow_scores: jax.typing.ArrayLike,
    deep_scores: jax.typing.ArrayLike,
    k: int,
    *,
    grid: tuple[int, int],
    alpha: float = 0.1,
) -> jax.Array:
    """HiPrune: hierarchical selection from two vision-encoder layers.

    1. Anchors: the top ``round(k * alpha / 5)`` patches by ``shallow_scores`` (a middle
       "object" layer: layer 9 of 24, 1-based, for CLIP-L).
    2. Buffers: each anchor's 4-neighbours on the ``grid`` (up, down, left, right). Unlike the
       published code (flat +-1 on a hard-coded 24 x 24 grid, clamped to [0, 575]), neighbours
       do not wrap across rows and out-of-grid neighbours are dropped.
    3. Registers: the remaining budget by ``deep_scores`` (layer -2), excluding 1 and 2.

    Anchors are chosen by score (NaN ranks last); buffers are kept by position whatever their
    scores. With ``alpha = 0.1`` there is no anchor for ``k <= 25`` (``round(k * alpha / 5) == 0``)
    and HiPrune reduces to top-k by ``deep_scores``. Exactly ``k`` unique indices come back.
    If anchors and buffers alone exceed ``k`` (only possible for ``alpha`` near 1 and small
    ``k``), anchors are kept first, then the buffers with the best deep scores.

    Args:
      shallow_scores: [N] patch scores from the object layer (:func:`received_attention`).
      deep_scores: [N] patch scores from the deep layer.
      k: number of patches to keep, 1 <= k <= N.
      grid: ``(rows, cols)`` of the patch grid, rows * cols == N, raster order.
      alpha: fraction of the budget spent on anchors and their buffers (0.1).

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: on wrong ranks or lengths, a grid that does not match N, ``k`` out of range
        or ``alpha`` outside [0, 1].

    References:
      HiPrune: "Training-Free Visual Token Pruning via Hierarchical Attention in Vision
      Encoders", 2025.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> shallow, deep = jnp.arange(16.0), -jnp.arange(16.0)  # a 4 x 4 grid
      >>> T.hiprune(shallow, deep, 6, grid=(4, 4), alpha=1.0).tolist()  # anchor 15 + 11, 14
      [0, 1, 2, 11, 14, 15]
    """
    (n,) = _checks.real_array(shallow_scores, "shallow_scores", 1, "[N]")
    (nd,) = _checks.real_array(deep_scores, "deep_scores", 1, "[N]")
    _checks.same_length(n, nd, "deep_scores", (nd,), "the length of shallow_scores,")
    grid = _checks.grid_shape(grid, n)
    k = _checks.budget(k, n)
    return _hiprune(shallow_scores, deep_scores, k, grid, hiprune_anchors(k, alpha))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _hiprune(shallow, deep, k, grid, num_anchors):
    rows, cols = grid
    n = rows * cols
    levels = jnp.zeros((n,), jnp.int32)
    if num_anchors:
        _, a = jax.lax.top_k(rank_key(shallow), num_anchors)
        r, c = a // cols, a % cols
        neighbours = jnp.concatenate(
            [
                jnp.where(r > 0, a - cols, n),
                jnp.where(r < rows - 1, a + cols, n),
                jnp.where(c > 0, a - 1, n),
                jnp.where(c < cols - 1, a + 1, n),
            ]
        )  # index n = no neighbour (dropped by the scatter)
        levels = levels.at[neighbours].set(1, mode="drop").at[a].set(2)
    return priority_topk(levels, deep, k)
