"""Coverage maximisation (MMTok): greedy facility location over text and vision targets."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pruneax.tokens import _checks
from pruneax.tokens._batching import cache_batched
from pruneax.tokens._numerics import features, l2_normalize, pick, sorted_indices

_HIGHEST = jax.lax.Precision.HIGHEST


def coverage_matrix(
    x: jax.typing.ArrayLike,
    *,
    text: jax.typing.ArrayLike | None = None,
    x_vision: jax.typing.ArrayLike | None = None,
    alpha: float = 0.5,
    tau_tv: float = 0.01,
    tau_vv: float = 0.2,
) -> jax.Array:
    """MMTok's coverage matrix ``C = [P; alpha * Q]`` of shape [m + n, n] (float32).

    ``P = softmax_n(z x^T / tau_tv) / m`` (text rows) and ``Q = softmax_row(v v^T / tau_vv) / n``
    (vision rows), all inputs L2-normalised with the norm clamped at 1e-8; m counts the finite
    text rows (a non-finite row, e.g. a masked padding position, is absent: a zero row that
    changes nothing else). Column j holds how
    well token j covers each target. The coverage of a set S is ``sum_r max_{j in S} C[r, j]``.

    Args:
      x, text, x_vision, alpha, tau_tv, tau_vv: as :func:`coverage`.

    Returns:
      float32 [m + n, n] (m = 0 without text); rows and columns of non-finite tokens are 0.

    Raises:
      ValueError: as :func:`coverage`.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
      >>> T.coverage_matrix(x).shape, T.coverage_matrix(x, text=jnp.array([[0.0, 1.0]])).shape
      ((4, 4), (5, 4))
    """
    _, _, m = _coverage_shapes(x, text, x_vision)
    alpha, tau_tv, tau_vv = _coverage_params(alpha, tau_tv, tau_vv)
    return _matrix_jit(x, text if m else None, x_vision, alpha, tau_tv, tau_vv)


def coverage(
    x: jax.typing.ArrayLike,
    k: int,
    *,
    text: jax.typing.ArrayLike | None = None,
    x_vision: jax.typing.ArrayLike | None = None,
    alpha: float = 0.5,
    tau_tv: float = 0.01,
    tau_vv: float = 0.2,
) -> jax.Array:
    """MMTok: greedy maximisation of text and vision coverage.

    Builds ``C = [P; alpha * Q]`` (see :func:`coverage_matrix`), then k times picks
    ``argmax_j sum_r max(0, C[r, j] - best[r])`` over unselected tokens (lowest index on ties)
    and sets ``best = max(best, C[:, j])``; the first pick is the largest column sum. The
    objective is monotone submodular, so the result is within (1 - 1/e) of the optimum.

    Args:
      x: [n, D] visual tokens in the LLM's space (projector outputs).
      k: number of tokens to keep, 1 <= k <= n (MMTok's default 64).
      text: [m, D] LLM input embeddings of the question's content words, or None (or m = 0)
        for vision-only coverage.
      x_vision: [n, Dv] vision-encoder features of the same tokens (penultimate layer, no CLS)
        for the vision-vision term; None uses ``x``.
      alpha: weight of the vision-vision term (0.5).
      tau_tv: text-vision softmax temperature (0.02 for LLaVA in the paper, 0.01 for Qwen and
        here by default).
      tau_vv: vision-vision softmax temperature (0.2).

    Returns:
      int32 [k]: unique indices, sorted ascending.

    Raises:
      ValueError: on wrong ranks, mismatched token counts or feature sizes, complex inputs,
        ``k`` out of range, or a non-positive temperature.

    A token whose row in ``x`` or ``x_vision`` holds NaN or infinity covers nothing, is
    covered by nothing and is picked only when no finite token is left; a non-finite text row
    is ignored (it contributes a zero row to ``C``).

    References:
      MMTok: "Multimodal Coverage Maximization for Efficient Inference of VLMs", 2025.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
      >>> T.coverage(x, 2).tolist()
      [1, 3]
      >>> T.coverage(x, 1, text=jnp.array([[0.0, 1.0]])).tolist()  # the token the text is about
      [2]
    """
    n, _, m = _coverage_shapes(x, text, x_vision)
    alpha, tau_tv, tau_vv = _coverage_params(alpha, tau_tv, tau_vv)
    return _coverage(x, text if m else None, x_vision, _checks.budget(k, n), alpha, tau_tv, tau_vv)


def _coverage_shapes(x, text, x_vision):
    n, d = _checks.real_array(x, "x", 2, "[n, D]")
    m = 0
    if text is not None:
        shape, dtype = _checks.shape_dtype(text, "text")
        if len(shape) != 2 or shape[1] != d:
            raise ValueError(f"text must have shape [m, {d}] (D of x = {d}); got shape {shape}")
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise ValueError(f"text must be a real floating or integer array; got dtype {dtype}")
        m = shape[0]
    if x_vision is not None:
        shape = _checks.real_array(x_vision, "x_vision", 2, "[n, Dv]")
        _checks.same_length(n, shape[0], "x_vision", shape, "as many rows as x has tokens,")
    return n, d, m


def _coverage_params(alpha, tau_tv, tau_vv):
    return (
        _checks.positive_float(alpha, "alpha", allow_zero=True),
        _checks.positive_float(tau_tv, "tau_tv"),
        _checks.positive_float(tau_vv, "tau_vv"),
    )


def _masked_softmax(logits, col_valid, row_valid):
    """Row softmax over the valid columns; rows that are invalid, or have no valid column, are 0."""
    logits = jnp.where(col_valid[None, :], logits, -jnp.inf)
    keep = row_valid[:, None] & jnp.any(col_valid)
    return jnp.where(keep, jax.nn.softmax(jnp.where(keep, logits, 0.0), axis=-1), 0.0)


def _matrix(x, text, x_vision, alpha, tau_tv, tau_vv):
    x, valid = features(x)
    n = x.shape[0]
    if x_vision is None:
        v = x
    else:
        v, valid_v = features(x_vision)
        valid = valid & valid_v
    v = l2_normalize(v)
    q = _masked_softmax(jnp.matmul(v, v.T, precision=_HIGHEST) / tau_vv, valid, valid) / n
    rows = [alpha * q]
    if text is not None:
        z, text_valid = features(text)
        logits = jnp.matmul(l2_normalize(z), l2_normalize(x).T, precision=_HIGHEST) / tau_tv
        m_valid = jnp.maximum(jnp.sum(text_valid), 1)  # a non-finite row is absent, not a 0
        rows.insert(0, _masked_softmax(logits, valid, text_valid) / m_valid)
    return jnp.concatenate(rows, axis=0), valid


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _matrix_jit(x, text, x_vision, alpha, tau_tv, tau_vv):
    return _matrix(x, text, x_vision, alpha, tau_tv, tau_vv)[0]


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _coverage(x, text, x_vision, k, alpha, tau_tv, tau_vv):
    n = x.shape[0]
    m = 0 if text is None else text.shape[0]
    has_text, has_vision = text is not None, x_vision is not None
    arrays = [a for a in (x, text, x_vision) if a is not None]

    def one(*arrays):
        it = iter(arrays)
        x = next(it)
        text = next(it) if has_text else None
        x_vision = next(it) if has_vision else None
        return _coverage_one(x, text, x_vision, k, alpha, tau_tv, tau_vv)

    return cache_batched(one, (m + n) * n * 4)(*arrays)


def _coverage_one(x, text, x_vision, k, alpha, tau_tv, tau_vv):
    c, valid = _matrix(x, text, x_vision, alpha, tau_tv, tau_vv)
    # Greedy on C^T [n, m + n]: each step's gains are contiguous row sums and the chosen
    # column is a contiguous row (1.4x faster than reducing C over its first axis on CPU).
    ct = c.T
    n = ct.shape[0]

    def step(i, carry):
        idx, best, available = carry
        gain = jnp.sum(jnp.maximum(ct - best[None, :], 0.0), axis=1)
        j = pick(gain, available, valid)
        return idx.at[i].set(j), jnp.maximum(best, ct[j]), available.at[j].set(False)

    init = (
        jnp.zeros((k,), jnp.int32),
        jnp.zeros((ct.shape[1],), jnp.float32),
        jnp.ones((n,), bool),
    )
    idx, _, _ = jax.lax.fori_loop(0, k, step, init)
    return sorted_indices(idx)
