"""Float32 numerics shared by the selectors: normalisation, NaN policy, the greedy pick.

NaN policy (the same for every selector):
- a score that is NaN ranks below every other score, -inf included (tokens kept by POSITION -
  FEATHER's grid, HiPrune's anchor neighbours, protected tokens - are kept whatever their score);
- a token whose feature row holds a NaN or an infinity is *invalid*: its row is zeroed before
  any similarity is computed (so it cannot poison the others), and a greedy selector picks it
  only when no valid token is left, lowest index first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_EPS = 1e-8  # norms are clamped here before dividing (MMTok's clamp; DivPrune divides raw)


def features(x: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Returns ``(x_f32, valid)``: rows cast to float32, invalid rows zeroed, and a [N] mask."""
    x = jnp.asarray(x, jnp.float32)
    valid = jnp.all(jnp.isfinite(x), axis=-1)
    return jnp.where(valid[:, None], x, 0.0), valid


def l2_normalize(x: jax.Array) -> jax.Array:
    """Rows divided by their L2 norm, clamped at ``NORM_EPS`` (a zero row stays zero).

    A finite row whose squared norm overflows float32 (norm above ~1.8e19; bf16 inputs reach
    this) gets its norm from the row divided by its max-abs entry, so it is normalised like any
    other row instead of collapsing to zero; other rows are computed as before, bit for bit.
    """
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    big = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    scale = jnp.where(jnp.isfinite(sq) | ~jnp.isfinite(big) | (big == 0), 1.0, big)
    scaled = jnp.sqrt(jnp.sum(jnp.square(x / scale), axis=-1, keepdims=True)) * scale
    norm = jnp.where(jnp.isfinite(sq), jnp.sqrt(sq), scaled)
    return x / jnp.maximum(norm, NORM_EPS)


def rank_key(scores: jax.typing.ArrayLike) -> jax.Array:
    """Scores as float32 with NaN mapped below -inf's rank, for ``top_k``/``argmax``.

    ``lax.top_k`` and ``argmax`` prefer the lower index among equal keys. To put NaN strictly
    below -inf we map -inf to the lowest finite float32 and NaN to -inf; finite scores keep
    their order (a finite score equal to the lowest float32 ties with -inf, which is harmless).
    -0 becomes +0: ``top_k`` orders by bits, ranking -0 below +0 although they are equal, which
    would break the lower-index tie rule.
    """
    s = jnp.asarray(scores, jnp.float32)
    s = jnp.where(s == 0, jnp.float32(0), s)
    lowest = jnp.finfo(jnp.float32).min
    s = jnp.where(jnp.isneginf(s), lowest, s)
    return jnp.where(jnp.isnan(s), -jnp.inf, s)


def pick(score: jax.Array, available: jax.Array, valid: jax.Array) -> jax.Array:
    """One greedy step: the available valid token of highest ``score``, ties to the lowest index.

    If every available valid token has score -inf (or NaN), the lowest-index one is taken; if no
    valid token is available, the lowest-index available (invalid) token is taken. ``available``
    must have at least one True entry.
    """
    ok = available & valid
    s = jnp.where(ok & ~jnp.isnan(score), score, -jnp.inf)
    best = jnp.argmax(s)
    best = jnp.where(s[best] > -jnp.inf, best, jnp.argmax(ok))
    return jnp.where(jnp.any(ok), best, jnp.argmax(available)).astype(jnp.int32)


def sorted_indices(idx: jax.Array) -> jax.Array:
    """Indices sorted ascending as int32 (the output convention of every selector)."""
    return jnp.sort(idx.astype(jnp.int32))


def priority_topk(levels: jax.Array, key: jax.Array, k: int) -> jax.Array:
    """Top-``k`` tokens by (``levels`` descending, then ``key`` descending, then lower index).

    ``levels`` are small non-negative ints (e.g. 2 = must keep, 1 = fill). The two keys are
    combined exactly through ranks, so no float arithmetic can blur the priority.

    Returns:
      int32 [k] sorted indices.
    """
    n = key.shape[0]
    # rank 0 = best key. top_k prefers the lower index among equal keys, so a full float32
    # top_k is the stable descending order; XLA CPU's TopK is fast for float32 only (an int32
    # top_k or a stable argsort falls back to a sort, 2x slower here).
    order = jax.lax.top_k(rank_key(key), n)[1]
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    combined = levels.astype(jnp.int32) * n + (n - 1 - rank)  # exact in float32 below 2**24
    _, idx = jax.lax.top_k(combined.astype(jnp.float32), k)
    return sorted_indices(idx)
