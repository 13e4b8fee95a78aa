"""Diversity selectors: max-min (DivPrune), greedy k-center (ToDRE v1), max-sum (ToDRE v2).

All three are greedy loops (``lax.fori_loop`` over ``k``) on float32 features. k-center and
max-sum never build an N x N matrix: each step is one matrix-vector product against the
features. DivPrune's first pick needs every token's nearest other token, so it builds the
N x N cosine-distance matrix once and reads one row of it per step.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.tokens import _checks
from pruneax.tokens._batching import cache_batched
from pruneax.tokens._numerics import features, l2_normalize, pick, sorted_indices

_HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls on every backend (no TF32 / bf16)


def maxmin_diversity(x: jax.typing.ArrayLike, k: int) -> jax.Array:
    """DivPrune: greedy max-min diversity under cosine distance.

    ``Dist = 1 - cos(x_i, x_j)``. The first pick is the token whose nearest *other* token is
    farthest (argmax over columns of the second-smallest entry); then, k - 1 times, the token
    maximising its distance to the nearest selected token. Ties go to the lowest index.

    Unlike the published code, selected tokens are masked, so duplicate rows never produce
    duplicate indices; whenever the published code returns unique indices, the picks are the
    same. Rows are divided by their norm clamped at 1e-8 (a zero row has distance 1 to all).

    Args:
      x: [N, D] token features (e.g. LLaVA projector outputs), any real dtype; computed in
        float32.
      k: number of tokens to keep, 1 <= k <= N (DivPrune's default: ``budget(N, 0.098)``).

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: if ``x`` is not rank 2 or ``k`` is not an int in [1, N].

    Rows holding NaN or infinity are never picked while a finite row remains.

    References:
      Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
      Models", CVPR 2025.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
      >>> T.maxmin_diversity(x, 2).tolist()  # the two opposite tokens
      [0, 3]
    """
    n, _ = _checks.real_array(x, "x", 2, "[N, D]")
    return _maxmin(x, _checks.budget(k, n))


@functools.partial(jax.jit, static_argnums=1)
def _maxmin(x, k):
    n = x.shape[0]
    return cache_batched(functools.partial(_maxmin_one, k=k), n * n * 4)(x)


def _maxmin_one(x, k):
    x, valid = features(x)
    n = x.shape[0]
    xn = l2_normalize(x)
    dist = 1.0 - jnp.matmul(xn, xn.T, precision=_HIGHEST)
    # Nearest other token of each column j: the second-smallest entry of column j (the smallest
    # is the ~0 self-distance). Invalid rows must not act as anyone's neighbour.
    # (two column minimums: lax.top_k on a column view lowers to a full sort on CPU, 40x slower)
    masked = jnp.where(valid[:, None], dist, jnp.inf)
    first_min = jnp.argmin(masked, axis=0)
    rows = jnp.arange(n)[:, None]
    second = jnp.min(jnp.where(rows == first_min[None, :], jnp.inf, masked), axis=0)
    available = jnp.ones((n,), bool)
    first = pick(second, available, valid)

    def step(i, carry):
        idx, mind, available = carry
        c = pick(mind, available, valid)
        return idx.at[i].set(c), jnp.minimum(mind, dist[c]), available.at[c].set(False)

    idx = jnp.zeros((k,), jnp.int32).at[0].set(first)
    idx, _, _ = jax.lax.fori_loop(1, k, step, (idx, dist[first], available.at[first].set(False)))
    return sorted_indices(idx)


def _pivot(pivot: object, n: int):
    """Validates ``pivot``: an index (int or integer scalar array) or [N] scores."""
    if pivot is None or isinstance(pivot, bool):
        raise ValueError(f"pivot must be an int index or [N] scores; got {pivot!r}")
    if isinstance(pivot, int | np.integer):
        if not 0 <= int(pivot) < n:
            raise ValueError(f"pivot index must be in [0, {n}); got {int(pivot)}")
        return jnp.asarray(pivot, jnp.int32)
    shape, dtype = _checks.shape_dtype(pivot, "pivot")
    if shape == () and jnp.issubdtype(dtype, jnp.integer):
        _checks.index_range(pivot, n, "pivot index")
        return pivot
    if shape == (n,) and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        return pivot
    raise ValueError(
        f"pivot must be an int index, an integer scalar array, or scores of shape ({n},) "
        f"matching x; got shape {shape} dtype {dtype}"
    )


def _pivot_index(pivot, valid):
    if pivot.ndim == 0:  # a traced index outside [0, N) is clipped into range
        return jnp.clip(pivot, 0, valid.shape[0] - 1).astype(jnp.int32)
    return pick(jnp.asarray(pivot, jnp.float32), jnp.ones_like(valid), valid)


def kcenter(
    x: jax.typing.ArrayLike,
    k: int,
    *,
    pivot: int | jax.typing.ArrayLike,
    metric: Literal["cosine", "l2"] = "cosine",
) -> jax.Array:
    """Greedy k-center (farthest-point sampling) from a pivot.

    Keeps ``mind[j] = min_{s in S} dist(s, j)`` and repeatedly adds ``argmax_j mind[j]``.
    The covering radius ``max_j mind[j]`` is at most twice the optimum (Gonzalez, 1985) for
    ``metric="l2"``; for ``"cosine"`` (``1 - cos``) the picks equal those of the L2 metric on
    normalised rows, so the bound holds for that chordal distance.

    Args:
      x: [N, D] token features, any real dtype; computed in float32.
      k: number of tokens to keep, 1 <= k <= N.
      pivot: the first token: an int index in [0, N) (an integer scalar array too; one only
        known at run time is clipped into range), or [N] scores whose argmax is taken (e.g.
        CLS attention, as in ToDRE).
      metric: ``"cosine"`` (1 - cosine similarity, default) or ``"l2"`` (Euclidean).

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: on a wrong rank, ``k`` out of range, a bad ``pivot`` or ``metric``.

    References:
      Gonzalez, "Clustering to minimize the maximum intercluster distance", 1985; ToDRE
      (first version, greedy k-center on visual tokens), 2025.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
      >>> T.kcenter(x, 3, pivot=0).tolist()
      [0, 2, 3]
    """
    n, _ = _checks.real_array(x, "x", 2, "[N, D]")
    if not isinstance(metric, str) or metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2'; got {metric!r}")
    return _kcenter(x, _pivot(pivot, n), _checks.budget(k, n), metric)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _kcenter(x, pivot, k, metric):
    one = functools.partial(_kcenter_one, k=k, metric=metric)
    return cache_batched(one, x.shape[0] * x.shape[1] * 4)(x, pivot)


def _kcenter_one(x, pivot, k, metric):
    x, valid = features(x)
    n = x.shape[0]
    if metric == "cosine":
        x = l2_normalize(x)
        dist = lambda c: 1.0 - jnp.matmul(x, x[c], precision=_HIGHEST)
    else:
        dist = lambda c: jnp.sum(jnp.square(x - x[c]), axis=-1)  # squared: same argmax
    p = _pivot_index(pivot, valid)

    def step(i, carry):
        idx, mind, available = carry
        c = pick(mind, available, valid)
        return idx.at[i].set(c), jnp.minimum(mind, dist(c)), available.at[c].set(False)

    init = (jnp.zeros((k,), jnp.int32).at[0].set(p), dist(p), jnp.ones((n,), bool).at[p].set(False))
    idx, _, _ = jax.lax.fori_loop(1, k, step, init)
    return sorted_indices(idx)


def maxsum_diversity(
    x: jax.typing.ArrayLike, k: int, *, pivot: int | jax.typing.ArrayLike
) -> jax.Array:
    """ToDRE v2: greedy max-sum diversification from a pivot.

    Rows are L2-normalised; ``s = X x_p`` with ``s_p = +inf``; then k - 1 times
    ``c = argmin s`` (lowest index on ties), ``s += X x_c``, ``s_c = +inf``: each new token is
    the one least similar, in sum, to those already kept.

    Args:
      x: [N, D] token features, any real dtype; computed in float32.
      k: number of tokens to keep, 1 <= k <= N.
      pivot: the first token: an int index, or [N] scores whose argmax is taken (ToDRE uses
        the last-layer [CLS] attention).

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: on a wrong rank, ``k`` out of range or a bad ``pivot``.

    References:
      ToDRE (current version, greedy max-sum diversification), 2025; no public code, so
      implemented from the paper's description.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
      >>> T.maxsum_diversity(x, 2, pivot=0).tolist()
      [0, 3]
    """
    n, _ = _checks.real_array(x, "x", 2, "[N, D]")
    return _maxsum(x, _pivot(pivot, n), _checks.budget(k, n))


@functools.partial(jax.jit, static_argnums=2)
def _maxsum(x, pivot, k):
    one = functools.partial(_maxsum_one, k=k)
    return cache_batched(one, x.shape[0] * x.shape[1] * 4)(x, pivot)


def _maxsum_one(x, pivot, k):
    x, valid = features(x)
    n = x.shape[0]
    x = l2_normalize(x)
    sim = lambda c: jnp.matmul(x, x[c], precision=_HIGHEST)
    p = _pivot_index(pivot, valid)

    def step(i, carry):
        idx, total, available = carry
        c = pick(-total, available, valid)
        return idx.at[i].set(c), total + sim(c), available.at[c].set(False)

    init = (jnp.zeros((k,), jnp.int32).at[0].set(p), sim(p), jnp.ones((n,), bool).at[p].set(False))
    idx, _, _ = jax.lax.fori_loop(1, k, step, init)
    return sorted_indices(idx)
