"""FEATHER: attention top-k united with a uniform grid, at an exact budget."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.tokens import _checks
from pruneax.tokens._numerics import priority_topk


def uniform_grid(grid: tuple[int, int], stride: int = 3) -> np.ndarray:
    """Indices of every ``stride``-th row and column of a raster patch grid, from (0, 0).

    FEATHER's uniform sample: 81 of 729 tokens for a 27 x 27 grid with stride 3.

    Returns:
      int32 [ceil(rows / stride) * ceil(cols / stride)], ascending (a static NumPy array).

    Example:
      >>> import pruneax.tokens as T
      >>> T.uniform_grid((4, 4), stride=2).tolist()
      [0, 2, 8, 10]
      >>> len(T.uniform_grid((27, 27)))
      81
    """
    rows, cols = _checks.grid_shape(grid, _grid_size(grid))
    s = _checks.static_int(stride, "stride")
    if s < 1:
        raise ValueError(f"stride must be >= 1; got {s}")
    r, c = np.meshgrid(np.arange(0, rows, s), np.arange(0, cols, s), indexing="ij")
    return (r * cols + c).reshape(-1).astype(np.int32)


def _grid_size(grid):
    try:
        return int(grid[0]) * int(grid[1])
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return -1


def feather(
    scores: jax.typing.ArrayLike, k: int, *, grid: tuple[int, int], stride: int = 3
) -> jax.Array:
    """FEATHER: the uniform grid plus the best-scoring other tokens, exactly ``k`` in all.

    Keeps every token of :func:`uniform_grid` ``(grid, stride)`` and fills the rest of the budget
    with the highest-scoring non-grid tokens (if ``k`` is below the grid size, the
    highest-scoring grid tokens). With ``k = |top_t(scores) | grid|`` this equals FEATHER's
    published stage-1 union of the top ``t = int(0.3 N)`` and the grid, whose size varies with
    the scores; here the budget is fixed, so shapes stay static.

    Grid tokens are kept by position whatever their score (NaN included); among the others a
    NaN score ranks last.

    Args:
      scores: [N] criterion, usually :func:`query_key_attention` (last query, no RoPE).
      k: number of tokens to keep, 1 <= k <= N.
      grid: ``(rows, cols)`` of the patch grid, rows * cols == N, raster order.
      stride: keep every ``stride``-th row and column (3).

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: on a wrong rank, a grid that does not match N, ``k`` or ``stride`` out of
        range.

    References:
      Endo et al., "Feather the Throttle: Revisiting Visual Token Pruning for Vision-Language
      Model Acceleration", 2024.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> scores = jnp.arange(16.0)  # a 4 x 4 grid; grid tokens 0, 2, 8, 10
      >>> T.feather(scores, 6, grid=(4, 4), stride=2).tolist()
      [0, 2, 8, 10, 14, 15]
    """
    (n,) = _checks.real_array(scores, "scores", 1, "[N]")
    grid = _checks.grid_shape(grid, n)
    uniform_grid(grid, stride)  # validates stride
    return _feather(scores, _checks.budget(k, n), grid, stride)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _feather(scores, k, grid, stride):
    levels = jnp.zeros(scores.shape, jnp.int32).at[uniform_grid(grid, stride)].set(1)
    return priority_topk(levels, scores, k)
