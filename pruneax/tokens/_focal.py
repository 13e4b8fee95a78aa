"""FoPru (Focal Pruning): visual tokens ranked by the vision encoder's patch-to-patch attention,
one by one (``"rank"``) or a whole grid row at a time (``"row"``).

Published algorithm (``focal_prunning(tokens, scores, n_output_tokens, strategy)``, a file of
the public code index whose repository is not named there; unverified, see BUILD_NOTES 15.5):
the attention ``[heads, N, N]`` among the N patch tokens (N a square for ``"row"``; the CLS row
and column are not part of it) is averaged over heads into ``A``; ``s1`` = the mean of ``A``
over the queries (the attention each patch receives) and ``s2`` = the mean over the keys (the
attention mass each patch's query puts on patches); the significance is whichever of the two
has the larger variance. ``"rank"``: the ``k`` most significant patches. ``"row"``: the
significance summed per grid row, the most significant rows kept whole. Indices sorted.

Deviations (pruneax): ``"row"`` keeps ``k // cols`` rows and requires ``k`` to be a multiple of
the grid width (the published function keeps ``k`` ROWS but writes them into a buffer of ``k``
TOKENS, a shape error; its deprecated class keeps ``floor(rows * ratio)`` rows); ties go to the
lower index (``torch.sort`` is not stable); the variances are population variances (the
published ``torch.var`` is unbiased: the same comparison, both vectors have N entries); a
variance tie picks ``s2``, as the published strict ``>`` does.

References: Jiang et al., "FoPru: Focal Pruning for Efficient Large Vision-Language Models",
2024 (arXiv:2411.14164).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pruneax.tokens import _checks
from pruneax.tokens._numerics import rank_key, sorted_indices

STRATEGIES = ("rank", "row")


def focal_significance(attn: jax.typing.ArrayLike) -> jax.Array:
    """FoPru's significance of each patch from the patch-to-patch attention.

    Args:
      attn: [heads, N, N] (or [N, N]) attention probabilities among the N patches of one
        example (any float dtype; computed in float32).

    Returns:
      float32 [N]: the head-averaged attention received (mean over queries) or sent to
      patches (mean over keys), whichever varies more across the patches. Non-finite
      entries count as 0; a patch whose whole row or column (after the head mean) is
      non-finite scores NaN (ranked last by ``focal_select``).

    Raises:
      ValueError: unless ``attn`` is [heads, N, N] or [N, N].

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> a = jnp.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.8, 0.0, 0.2]])
      >>> [round(s, 4) for s in T.focal_significance(a).tolist()]  # received: varies more
      [0.7333, 0.2, 0.0667]
    """
    a = _square(attn)
    return _significance(a)


def focal_select(
    attn: jax.typing.ArrayLike,
    k: int,
    *,
    strategy: str = "rank",
    grid: tuple[int, int] | None = None,
) -> jax.Array:
    """FoPru's selection: ``k`` patches by ``focal_significance``, singly or by grid rows.

    Args:
      attn: [heads, N, N] (or [N, N]) patch-to-patch attention probabilities of one example.
      k: patches to keep, 1 <= k <= N (a multiple of the grid width for ``"row"``).
      strategy: ``"rank"`` (the k most significant patches) or ``"row"`` (the ``k // cols``
        grid rows of largest summed significance, every patch of them).
      grid: ``(rows, cols)`` of the raster patch grid, ``"row"`` only; None = square.

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: for a bad ``attn``, ``k``, ``strategy`` or ``grid`` (including a non-square
        N without a grid, and a ``k`` that is not a whole number of rows).

    References: Jiang et al., FoPru, 2024 (arXiv:2411.14164).

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> a = jnp.eye(4) * 0.2 + jnp.array([0.1, 0.1, 0.4, 0.2])  # rows sum to 1
      >>> T.focal_select(a, 2).tolist(), T.focal_select(a, 2, strategy="row").tolist()
      ([2, 3], [2, 3])
    """
    a = _square(attn)
    n = a.shape[-1]
    k = _checks.budget(k, n)
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    if strategy == "rank":
        return _rank(a, k)
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"grid=None needs a square number of patches; N = {n}: give grid")
        grid = (side, side)
    rows, cols = _checks.grid_shape(grid, n)
    if k % cols:
        raise ValueError(
            f"k must be a multiple of the grid width {cols} for strategy='row' (whole rows); "
            f"got {k}"
        )
    return _rows(a, k // cols, rows, cols)


def _square(attn):
    shape, _ = _checks.shape_dtype(attn, "attn")
    x = jnp.asarray(attn) if hasattr(attn, "shape") else attn
    if len(shape) == 2:
        x = x[None]
    shape = _checks.real_array(x, "attn", 3, "[heads, N, N] or [N, N]")
    if shape[1] != shape[2]:
        raise ValueError(f"attn must be square over the patches [heads, N, N]; got {shape}")
    return x


def _significance(a):
    m = jnp.mean(jnp.asarray(a, jnp.float32), axis=0)  # [N, N] head mean
    # Non-finite entries count as no attention; a patch whose whole row or column is
    # non-finite (a NaN query or key) is scored NaN, so it ranks last instead of turning
    # every patch's mean into NaN. Finite input takes the first branch: the published formula.
    bad = ~jnp.isfinite(m)
    ok = ~(jnp.all(bad, axis=0) | jnp.all(bad, axis=1))
    m = jnp.where(bad, 0.0, m)
    s1, s2 = jnp.mean(m, axis=0), jnp.mean(m, axis=1)  # received, sent
    clean = ~jnp.any(bad)
    v1 = jnp.where(clean, jnp.var(s1), jnp.var(s1, where=ok))
    v2 = jnp.where(clean, jnp.var(s2), jnp.var(s2, where=ok))
    return jnp.where(ok, jnp.where(v1 > v2, s1, s2), jnp.nan)


@functools.partial(jax.jit, static_argnums=1)
def _rank(a, k):
    _, idx = jax.lax.top_k(rank_key(_significance(a)), k)
    return sorted_indices(idx)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _rows(a, keep_rows, rows, cols):
    per_row = jnp.sum(_significance(a).reshape(rows, cols), axis=1)
    _, r = jax.lax.top_k(rank_key(per_row), keep_rows)
    idx = (jnp.sort(r)[:, None] * cols + jnp.arange(cols)[None]).reshape(-1)
    return idx.astype(jnp.int32)
