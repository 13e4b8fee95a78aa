"""HoloV: a holistic budget split over contiguous chunks, then top attention inside each."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.tokens import _checks
from pruneax.tokens._batching import cache_batched
from pruneax.tokens._numerics import priority_topk, rank_key

_HIGHEST = jax.lax.Precision.HIGHEST
_ATTN_SCALE = 1e3  # published constants
_VAR_WEIGHT = 0.09
_EPS = 1e-6


def holov_chunks(n: int, num_chunks: int) -> np.ndarray:
    """Chunk sizes of HoloV's split of ``n`` raster tokens: the FIRST ``n % C`` chunks get one more.

    Args:
      n: number of tokens, a Python int >= 1.
      num_chunks: number of chunks C, a Python int in [1, n].

    Returns:
      int [num_chunks] sizes summing to ``n`` (a static NumPy array).

    Raises:
      ValueError: if ``n`` or ``num_chunks`` is not an int or ``num_chunks`` is outside [1, n].

    Example:
      >>> import pruneax.tokens as T
      >>> T.holov_chunks(10, 3).tolist()
      [4, 3, 3]
    """
    n = _checks.static_int(n, "n")
    num_chunks = _checks.static_int(num_chunks, "num_chunks")
    if not 1 <= n < 2**31 or not 1 <= num_chunks <= n:
        raise ValueError(
            f"need 1 <= n < 2**31 (int32 sizes) and 1 <= num_chunks <= n; got n={n}, "
            f"num_chunks={num_chunks}"
        )
    base, rem = divmod(n, num_chunks)
    return np.array([base + (i < rem) for i in range(num_chunks)], dtype=np.int32)


def holov(
    scores: jax.typing.ArrayLike, x: jax.typing.ArrayLike, k: int, *, num_chunks: int = 16
) -> jax.Array:
    """HoloV: spread the budget over image regions in proportion to their holistic score.

    As the published code computes it: tokens are cut into ``num_chunks`` contiguous raster
    chunks. In each chunk, features are normalised (``f / (|f| + 1e-6)``), ``S = F F^T`` with
    its diagonal zeroed, ``mean_i = sum_j S_ij / (n - 1)`` and ``var_i = sum_j (S_ij - mean_i)^2
    / (n - 1)`` (the zeroed diagonal stays in that sum, as published). Token score
    ``t_i = 1e3 a_i + 0.09 * var_i * mean|1e3 a| / (mean|var| + 1e-6)``; chunk score = mean
    ``t_i``; chunk weight ``w_c = s_c / (sum s + 1e-6)``; budget ``floor(w_c k)``, and the
    remainder goes one each to the chunks of largest weight. Inside a chunk the tokens of
    highest attention ``a`` are kept.

    Deviation: the published code keeps a whole chunk when its budget exceeds its size and
    zero-pads the output; here that lost budget is refilled with the highest-attention tokens
    not yet kept, so exactly ``k`` indices come back. Without overflow the picks are identical.

    Args:
      scores: [N] [CLS] attention over the patches (:func:`cls_attention`), non-negative.
      x: [N, D] token features (LLaVA projector outputs in the published code).
      k: number of tokens to keep, 1 <= k <= N (64 in the published LLaVA setting).
      num_chunks: number of raster chunks C, 1 <= C <= N // 2 (16).

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: on wrong ranks, mismatched N, ``k`` or ``num_chunks`` out of range.

    NaN attention counts as 0 in the chunk scores and ranks last inside its chunk; feature rows
    with NaN or infinity count as zero vectors.

    References:
      Zou et al., "Don't Just Chase 'Highlighted Tokens' in MLLMs: Revisiting Visual Holistic
      Context Retention" (HoloV), NeurIPS 2025.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> scores = jnp.array([0.1, 0.1, 0.1, 0.1, 0.4, 0.3, 0.2, 0.1])
      >>> T.holov(scores, jnp.eye(8), 3, num_chunks=2).tolist()  # the second chunk gets all 3
      [4, 5, 6]
    """
    (n,) = _checks.real_array(scores, "scores", 1, "[N]")
    nx, _ = _checks.real_array(x, "x", 2, "[N, D]")
    _checks.same_length(n, nx, "x", jnp.shape(x), "as many rows as scores has entries,")
    c = _checks.static_int(num_chunks, "num_chunks")
    if not 1 <= c <= n // 2:
        raise ValueError(f"num_chunks must be in [1, {n // 2}] (every chunk >= 2 tokens); got {c}")
    return _holov(scores, x, _checks.budget(k, n), c)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _holov(scores, x, k, num_chunks):
    one = functools.partial(_holov_one, k=k, num_chunks=num_chunks)
    return cache_batched(one, x.shape[0] * x.shape[1] * 4)(scores, x)


def _rescale_huge(x, sq):
    """Rows with finite entries but an overflowing squared norm, divided by their max-abs."""
    big = jnp.max(jnp.abs(x), axis=-1)
    huge = ~jnp.isfinite(sq) & jnp.all(jnp.isfinite(x), axis=-1)
    x = x / jnp.where(huge, big, 1.0)[:, None]
    return x, jnp.where(huge, jnp.sum(x * x, axis=-1), sq)


def _holov_one(scores, x, k, num_chunks):
    n = x.shape[0]
    sizes = holov_chunks(n, num_chunks)
    width = int(sizes.max())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # [C, width] token index of each chunk slot; slot beyond a chunk's size -> n (padding).
    slot = np.arange(width)[None, :]
    table = np.where(slot < sizes[:, None], starts[:, None] + slot, n)
    real = jnp.asarray(table < n)
    size = jnp.asarray(sizes, jnp.float32)[:, None]

    # Similarities of the raw rows divided by the norm outer product: the same as normalising
    # first (f / (|f| + 1e-6)), without writing a normalised copy of x (a batch of LLaVA images
    # is 150 MB: each extra pass over it costs more than the arithmetic).
    x = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(x * x, axis=-1)
    # Rare path: a row whose squared norm is not finite is either non-finite (it counts as a
    # zero vector) or finite with a norm above ~1.8e19, which is divided by its max-abs entry
    # (cosine similarity is scale-free) rather than lost. ``cond`` skips this pass otherwise.
    x, sq = jax.lax.cond(jnp.all(jnp.isfinite(sq)), lambda x, sq: (x, sq), _rescale_huge, x, sq)
    valid = jnp.isfinite(sq)  # non-finite rows count as zero vectors
    norm = jnp.where(valid, jnp.sqrt(sq) + _EPS, 1.0)
    chunked = lambda v, fill: (
        v.reshape(num_chunks, width, *v.shape[1:])
        if n % num_chunks == 0
        else jnp.take(v, table, axis=0, mode="fill", fill_value=fill)
    )
    xc = chunked(x, 0)  # [C, width, D]
    nc = chunked(norm, 1)
    sim = jnp.einsum("cid,cjd->cij", xc, xc, precision=_HIGHEST) / (nc[:, :, None] * nc[:, None, :])
    ok = real & chunked(valid, False)
    both = ok[:, :, None] & ok[:, None, :]
    sim = jnp.where(both & ~jnp.eye(width, dtype=bool), sim, 0.0)
    both = real[:, :, None] & real[:, None, :]
    mean = jnp.sum(sim, axis=-1) / (size - 1)
    var = jnp.sum(jnp.where(both, jnp.square(sim - mean[:, :, None]), 0.0), axis=-1) / (size - 1)

    a = jnp.asarray(scores, jnp.float32)
    a_c = _ATTN_SCALE * jnp.take(jnp.nan_to_num(a, nan=0.0), table, mode="fill", fill_value=0)
    chunk_mean = lambda v: jnp.sum(jnp.where(real, v, 0.0), axis=-1, keepdims=True) / size
    scale = chunk_mean(jnp.abs(a_c)) / (chunk_mean(jnp.abs(var)) + _EPS)
    chunk_score = chunk_mean(a_c + _VAR_WEIGHT * var * scale)[:, 0]  # [C]

    w = chunk_score / (jnp.sum(chunk_score) + _EPS)
    alloc = jnp.floor(w * k).astype(jnp.int32)
    remaining = k - jnp.sum(alloc)
    by_weight = jnp.argsort(-rank_key(w), stable=True)
    extra = (
        jnp.zeros((num_chunks,), jnp.int32)
        .at[by_weight]
        .set((jnp.arange(num_chunks) < remaining).astype(jnp.int32))
    )
    cap = jnp.clip(alloc + extra, 0, jnp.asarray(sizes))  # [C]

    # Rank of each token inside its chunk by attention (0 = highest), then the chunk budgets.
    chunk_of = jnp.asarray(np.repeat(np.arange(num_chunks), sizes))
    order = jnp.lexsort((-rank_key(a), chunk_of))  # by chunk, then attention descending
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    rank_in_chunk = rank - jnp.asarray(starts, jnp.int32)[chunk_of]
    # A NaN attention never takes a chunk's budget (it would when a chunk is kept whole).
    chosen = (rank_in_chunk < cap[chunk_of]) & ~jnp.isnan(a)
    return priority_topk(chosen.astype(jnp.int32), a, k)
