"""Top-k by score (FasterVLM, FastV, EViT) and uniformly random selection."""

from __future__ import annotations

import functools

import jax

from pruneax.tokens import _checks
from pruneax.tokens._numerics import rank_key, sorted_indices


def topk(scores: jax.typing.ArrayLike, k: int) -> jax.Array:
    """Keeps the ``k`` tokens of highest score, in original order.

    The selection of FasterVLM (CLS attention), FastV (last-query attention) and EViT.

    Args:
      scores: [N] real scores (any float dtype; compared in float32).
      k: number of tokens to keep, a Python int with 1 <= k <= N.

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: if ``scores`` is not rank 1 or ``k`` is not an int in [1, N].

    Ties go to the lower index. NaN scores rank below every other score (-inf included).

    References:
      Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning"
      (FasterVLM), 2024; Chen et al., "An Image is Worth 1/2 Tokens After Layer 2" (FastV), 2024.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> T.topk(jnp.array([0.1, 0.5, 0.3, 0.9]), 2).tolist()
      [1, 3]
    """
    (n,) = _checks.real_array(scores, "scores", 1, "[N]")
    return _topk(scores, _checks.budget(k, n))


@functools.partial(jax.jit, static_argnums=1)
def _topk(scores, k):
    _, idx = jax.lax.top_k(rank_key(scores), k)
    return sorted_indices(idx)


def random(key: jax.Array, n: int, k: int) -> jax.Array:
    """Keeps ``k`` of ``n`` tokens uniformly at random, without replacement.

    Args:
      key: a ``jax.random`` key (typed or raw uint32[2]).
      n: number of tokens, a Python int >= 1.
      k: number to keep, a Python int with 1 <= k <= n.

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: if ``key`` is not a PRNG key or ``n``, ``k`` are not ints in range.

    Example:
      >>> import jax
      >>> import pruneax.tokens as T
      >>> idx = T.random(jax.random.key(0), 10, 3)
      >>> idx.shape, bool((idx[1:] > idx[:-1]).all())
      ((3,), True)
    """
    _checks.prng_key(key)
    n = _checks.static_int(n, "n")
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return _random(key, n, _checks.budget(k, n))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _random(key, n, k):
    return sorted_indices(jax.random.permutation(key, n)[:k])


def budget(n: int, ratio: float) -> int:
    """The number of tokens kept from ``n`` at keep ratio ``ratio``: Python ``round(ratio * n)``.

    This is DivPrune's rule (``int(round(0.098 * 576)) == 56``); Python's round is half-to-even.

    Returns:
      the budget ``k``, a Python int in [1, n].

    Raises:
      ValueError: if the result is outside [1, n] or ``ratio`` is not in (0, 1].

    Example:
      >>> import pruneax.tokens as T
      >>> T.budget(576, 0.098), T.budget(10, 0.25)
      (56, 2)
    """
    n = _checks.static_int(n, "n")
    ratio = _checks.positive_float(ratio, "ratio")
    if ratio > 1:
        raise ValueError(f"ratio must be in (0, 1]; got {ratio}")
    k = round(ratio * n)
    if not 1 <= k <= n:
        raise ValueError(f"round(ratio * n) = round({ratio} * {n}) = {k} keeps no token")
    return k
