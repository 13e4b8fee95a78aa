"""ToMe: bipartite soft matching, the token-merging step of Token Merging."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pruneax.tokens import _checks
from pruneax.tokens._numerics import l2_normalize, rank_key


def tome_merge(
    x: jax.typing.ArrayLike,
    metric: jax.typing.ArrayLike,
    r: int,
    *,
    size: jax.typing.ArrayLike | None = None,
    num_protected: int = 1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Merges ``r`` tokens by bipartite soft matching (one ToMe step).

    Tokens at even positions form set A, odd positions set B. Each A token finds its most
    cosine-similar B token (on ``metric``, e.g. the attention keys averaged over heads); the
    ``r`` A tokens with the most similar edges are merged into their B partner by a
    size-weighted mean, and sizes add up. The first ``num_protected`` tokens (CLS) are never
    merged away nor receive a merge. Unlike the published code, which returns
    [unmerged A; B], surviving tokens come back in their ORIGINAL order. Feed ``log(size)``
    to the next attention as a bias on the key logits (proportional attention).

    Args:
      x: [N, D] tokens to merge.
      metric: [N, C] similarity features (attention keys averaged over heads).
      r: number of tokens to remove, a Python int with 0 <= r <= (mergeable A tokens).
      size: [N] current token sizes, all > 0 (ones when None).
      num_protected: leading tokens that are never merged away (1 for CLS).

    Returns:
      ``(merged, new_size, dest)``: merged [N - r, D] in the dtype of ``x``; new_size float32
      [N - r]; dest int32 [N], the output row each input token went to (survivors map to
      themselves), for tracking which patches merged.

    Raises:
      ValueError: on wrong ranks, mismatched lengths, ``r`` out of range, or a concrete
        ``size`` with an entry <= 0 or NaN (a traced ``size`` cannot be checked under ``jit``;
        a non-positive entry there gives NaN or infinite merged tokens).

    With ``r = 0`` the inputs come back unchanged (``x``, ``size`` as float32, ``dest`` =
    ``arange(N)``), also for a single token.

    Edge ties go to the lower A index (sort is stable); the best B partner ties to the lower
    B index.

    References:
      Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[0.0], [1.0], [2.0], [3.0]])
      >>> metric = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
      >>> merged, size, dest = T.tome_merge(x, metric, 1)  # token 2 merges into token 1
      >>> merged.tolist(), size.tolist(), dest.tolist()
      ([[0.0], [1.5], [3.0]], [1.0, 2.0, 1.0], [0, 1, 1, 2])
    """
    n, _ = _checks.real_array(x, "x", 2, "[N, D]")
    nm, _ = _checks.real_array(metric, "metric", 2, "[N, C]")
    _checks.same_length(n, nm, "metric", jnp.shape(metric), "N =")
    if size is not None:
        (ns,) = _checks.real_array(size, "size", 1, "[N]")
        _checks.same_length(n, ns, "size", (ns,), "N =")
        v = _checks.concrete_or_none(size)
        if v is not None and not (v > 0).all():
            raise ValueError(f"size must be > 0 everywhere (token counts); got min {v.min()}")
    p = _checks.static_int(num_protected, "num_protected")
    if not 0 <= p < n:
        raise ValueError(f"num_protected must be in [0, {n}); got {p}")
    n_a = (n + 1) // 2
    # A = even positions, B = odd; protected tokens neither leave A nor receive in B.
    free_a, free_b = n_a - (p + 1) // 2, n // 2 - p // 2
    bound = free_a if free_b > 0 else 0
    r = _checks.static_int(r, "r")
    if not 0 <= r <= bound:
        raise ValueError(
            f"r must satisfy 0 <= r <= {bound} (mergeable tokens of set A "
            f"for N={n}, num_protected={p}); got {r}"
        )
    if r == 0:  # nothing to merge (N = 1 has no B token to merge into)
        new_size = jnp.ones((n,), jnp.float32) if size is None else jnp.asarray(size, jnp.float32)
        return jnp.asarray(x), new_size, jnp.arange(n, dtype=jnp.int32)
    return _tome(x, metric, size, r, p)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _tome(x, metric, size, r, p):
    n = x.shape[0]
    dtype = x.dtype
    m = l2_normalize(jnp.asarray(metric, jnp.float32))
    size = jnp.ones((n,), jnp.float32) if size is None else jnp.asarray(size, jnp.float32)
    a_pos = jnp.arange(0, n, 2)
    b_pos = jnp.arange(1, n, 2)
    scores = jnp.matmul(m[a_pos], m[b_pos].T, precision=jax.lax.Precision.HIGHEST)
    # Protected tokens are untouched: those in A have no edges, those in B receive none
    # (ToMe masks its class token's row and its distillation token's column the same way).
    scores = jnp.where((b_pos < p)[None, :], -jnp.inf, scores)
    node_max = jnp.max(rank_key(scores), axis=-1)
    node_idx = jnp.argmax(rank_key(scores), axis=-1)
    # Most similar edges first; protected A rows always last, whatever the scores (NaN too).
    order = jnp.lexsort((-node_max, a_pos < p))
    src = order[:r]  # A rows merged away
    src_pos = a_pos[src]
    dst_pos = b_pos[node_idx[src]]

    # dest: each merged A token goes to its B partner's row; survivors to their own row.
    gone = jnp.zeros((n,), bool).at[src_pos].set(True)
    out_row = jnp.cumsum(~gone) - 1
    target = jnp.arange(n).at[src_pos].set(dst_pos)
    dest = out_row[target].astype(jnp.int32)

    xf = jnp.asarray(x, jnp.float32)
    total = jax.ops.segment_sum(xf * size[:, None], dest, num_segments=n - r)
    new_size = jax.ops.segment_sum(size, dest, num_segments=n - r)
    # Rows that received no merge are returned untouched (not x * size / size).
    survivors = jnp.nonzero(~gone, size=n - r)[0]
    received = jax.ops.segment_sum(gone.astype(jnp.int32), dest, num_segments=n - r) > 0
    merged = jnp.where(received[:, None], total / new_size[:, None], xf[survivors])
    return merged.astype(dtype), new_size, dest
