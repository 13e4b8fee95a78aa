"""Token operations applied after selection: gather, masks, EViT fusion, protected tokens.

Protected tokens (CLS, registers, a class token in the middle of the sequence) are handled by
running a selector on the unprotected tokens only and mapping its indices back::

    rest = unprotected_positions(n, protected=(0,))     # static NumPy array
    idx = maxmin_diversity(tokens[rest], k)             # choose among the patches
    keep = with_protected(idx, n, protected=(0,))       # [1 + k] sorted, CLS included
    tokens = gather(tokens, keep)

No selector can drop a protected token this way, and kept tokens stay in original order.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.tokens import _checks


def gather(x: jax.typing.ArrayLike, idx: jax.typing.ArrayLike, *, axis: int = 0) -> jax.Array:
    """Takes the kept tokens ``x[idx]`` along ``axis`` (features, position ids, masks...).

    Gathering position ids with the same indices keeps each token's ORIGINAL position (as FastV
    and FEATHER do for RoPE), rather than renumbering.

    Args:
      x: [..., N, ...] any array; tokens along ``axis``.
      idx: int [k] indices into that axis (from a selector).
      axis: the token axis (0).

    Returns:
      ``x`` with ``k`` entries along ``axis``.

    Raises:
      ValueError: if ``idx`` is not a rank-1 integer array, ``axis`` is out of range, or
        concrete indices fall outside the axis (indices only known at run time that do give 0).

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> T.gather(jnp.array([10, 20, 30, 40, 50]), jnp.array([1, 3])).tolist()
      [20, 40]
    """
    shape, _ = _checks.shape_dtype(x, "x")
    _checks.index_array(idx)
    axis = _checks.static_int(axis, "axis")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis must be in [{-len(shape)}, {len(shape)}) for x of shape {shape}")
    _checks.index_range(idx, shape[axis], "idx")
    return jnp.take(x, idx, axis=axis, mode="fill", fill_value=0)


def keep_mask(idx: jax.typing.ArrayLike, n: int) -> jax.Array:
    """Boolean [n] mask, True at the kept indices.

    Args:
      idx: int [k] kept indices in [0, n).
      n: the number of tokens.

    Returns:
      bool [n].

    Raises:
      ValueError: if ``idx`` is not a rank-1 integer array, ``n`` is not a positive int, or
        concrete indices fall outside [0, n) (indices only known at run time that do are
        ignored).

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> T.keep_mask(jnp.array([0, 2]), 4).tolist()
      [True, False, True, False]
    """
    n = _checks.static_int(n, "n")
    if n < 1:
        raise ValueError(f"n must be >= 1; got n={n}")
    _checks.index_array(idx)
    _checks.index_range(idx, n, "idx")
    return jnp.zeros((n,), bool).at[idx].set(True, mode="drop")


def fuse_pruned(
    x: jax.typing.ArrayLike, idx: jax.typing.ArrayLike, weights: jax.typing.ArrayLike
) -> jax.Array:
    """EViT token fusion: the kept tokens followed by ONE token summarising the pruned ones.

    The fused token is ``sum_{i not kept} w_i x_i`` with the raw weights (EViT uses the
    head-averaged [CLS] attention, not renormalised over the pruned tokens).

    Args:
      x: [N, D] patch tokens (no CLS; prepend it yourself).
      idx: int [k] kept indices (unique).
      weights: [N] weights, usually :func:`cls_attention` of the same layer.

    Returns:
      [k + 1, D] in the dtype of ``x``: ``x[idx]`` then the fused token.

    Raises:
      ValueError: on wrong ranks or a ``weights`` length different from N.

    References:
      Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via
      Token Reorganizations" (EViT), ICLR 2022.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> x = jnp.eye(3)
      >>> T.fuse_pruned(x, jnp.array([0]), jnp.array([0.5, 0.25, 0.25])).tolist()
      [[1.0, 0.0, 0.0], [0.0, 0.25, 0.25]]
    """
    n, _ = _checks.real_array(x, "x", 2, "[N, D]")
    (nw,) = _checks.real_array(weights, "weights", 1, "[N]")
    _checks.same_length(n, nw, "weights", (nw,), "length N =")
    x = jnp.asarray(x)
    pruned = ~keep_mask(idx, n)
    w = jnp.where(pruned, jnp.asarray(weights, jnp.float32), 0.0)
    fused = jnp.matmul(w, x.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([gather(x, idx), fused[None].astype(x.dtype)], axis=0)


def _protected(n: int, protected: Sequence[int]) -> np.ndarray:
    n = _checks.static_int(n, "n")
    if n < 1:
        raise ValueError(f"n must be >= 1 (the sequence length); got {n}")
    if not isinstance(protected, Sequence) or any(
        isinstance(p, bool) or not isinstance(p, numbers.Integral) for p in protected
    ):
        raise ValueError(f"protected must be a sequence of Python ints; got {protected!r}")
    p = np.asarray(sorted(int(i) for i in protected), dtype=np.int64)
    if len(set(p.tolist())) != len(p) or (len(p) and (p[0] < 0 or p[-1] >= n)) or len(p) >= n:
        raise ValueError(
            f"protected must be distinct positions in [0, {n}) leaving at least one token; "
            f"got {tuple(protected)}"
        )
    return p


def unprotected_positions(n: int, protected: Sequence[int] = (0,)) -> np.ndarray:
    """The positions a selector chooses among: ``[0, n)`` minus ``protected``, ascending.

    Args:
      n: the full sequence length.
      protected: positions that are always kept.

    Returns:
      a static NumPy int32 array of ``n - len(protected)`` positions (shapes stay static
      under jit).

    Raises:
      ValueError: if ``protected`` is not distinct ints in [0, n) leaving a token.

    Example:
      >>> import pruneax.tokens as T
      >>> T.unprotected_positions(5, protected=(0,)).tolist()
      [1, 2, 3, 4]
    """
    p = _protected(n, protected)
    return np.setdiff1d(np.arange(n), p).astype(np.int32)


def with_protected(idx: jax.typing.ArrayLike, n: int, protected: Sequence[int] = (0,)) -> jax.Array:
    """Maps selector output over the unprotected tokens back to the full sequence.

    Args:
      idx: int [k] indices into :func:`unprotected_positions` ``(n, protected)``: an integer
        array or a sequence of Python ints.
      n: the full sequence length.
      protected: positions that are always kept, e.g. ``(0,)`` for CLS, ``range(5)`` for CLS
        plus four registers, ``(98,)`` for Vision Mamba's middle class token.

    Returns:
      int32 [len(protected) + k]: full-sequence indices, sorted ascending, protected included.

    Raises:
      ValueError: on a bad ``protected``, an ``idx`` that is not rank-1 integer, or a concrete
        ``idx`` (Python ints, NumPy, or a JAX array outside ``jit``) with an entry outside
        ``[0, n - len(protected))``.

    Under ``jit`` a traced ``idx`` cannot be checked: an entry out of range gathers position 0
    (``gather``'s fill value), so the output then holds a duplicate of position 0 (e.g.
    ``[0, 0, 2]`` with ``protected=(0,)``) and one fewer distinct token. Selectors never return
    such indices.

    Example:
      >>> import jax.numpy as jnp
      >>> import pruneax.tokens as T
      >>> idx = jnp.array([1, 3])  # indices into unprotected_positions(6) = [1, 2, 3, 4, 5]
      >>> T.with_protected(idx, 6, protected=(0,)).tolist()
      [0, 2, 4]
    """
    rest = unprotected_positions(n, protected)
    if isinstance(idx, list | tuple):
        if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in idx):
            raise ValueError(f"idx must be a rank-1 integer array or Python ints; got {idx!r}")
        idx = np.asarray(idx, np.int64).reshape(-1)
    kept = gather(jnp.asarray(rest), idx)
    return jnp.sort(jnp.concatenate([jnp.asarray(_protected(n, protected), jnp.int32), kept]))
