"""SparseGPT: one-shot pruning of a linear layer with OBS reconstruction of the kept weights.

Layout: the kernel is pruneax's (Flax ``nnx.Linear``) ``[d_in, d_out]``; internally the
algorithm runs on its transpose ``W = kernel.T`` ``[d_out, d_in]`` (the PyTorch layout of the
published code: a "row" is an output unit, a "column" an input). Masks: bool ``[d_in, d_out]``,
True = kept. All arithmetic is float32 (matmuls at HIGHEST precision).

- ``hessian_init`` / ``hessian_update``: ``H = (2 / n_seq) X^T X`` over the calibration
  sequences, kept as a running mean as the published ``add_batch`` does (``n_seq`` counts
  sequences, not tokens).
- ``sparsegpt_prune``: inputs never seen (``H_jj == 0``) get ``H_jj = 1`` and a zero column;
  ``H += percdamp * mean(diag H) * I``; ``U`` = upper Cholesky factor of ``H^-1``. Columns are
  swept in blocks of ``blocksize``: unstructured pruning chooses the block's mask ONCE from the
  already-updated weights, ``int(d_out * width * sparsity)`` lowest ``w^2 / U_jj^2`` over the
  whole block (all rows together: the "adaptive mask selection"); N:M chooses, at every column
  ``i % M == 0``, the N lowest of columns ``i .. i+M`` per row. Each column's error
  ``(w - q) / U_ii`` is spread over the block's later columns with row ``i`` of ``U``; the rest
  of the matrix gets the block's errors at once (lazy batch update).

Deviations from the published ``fasterprune`` (IST-DASLab/sparsegpt ``sparsegpt.py``): the
unstructured count is exact (``<=`` a threshold prunes every tie, and prunes one weight per block
even at sparsity 0); N:M ties prune the lower column (``torch.topk`` leaves them unspecified);
the quantisation path and the loss bookkeeping are left out. The sweep is a ``lax.fori_loop``
over equal blocks (the last one padded with identity-Hessian columns that are never pruned), so
one compilation serves every layer of a shape.

References: Frantar, Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", ICML 2023 (arXiv:2301.00774); Hassibi, Stork, "Second order derivatives for network
pruning: Optimal Brain Surgeon", NeurIPS 1992.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pruneax.weights import _checks
from pruneax.weights._wanda import check_pattern

_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


class HessianState(NamedTuple):
    """Running ``H = (2 / count) X^T X`` of one linear layer's inputs.

    Attributes:
      h: float32 [d_in, d_in].
      count: int32 scalar, the number of sequences seen.
    """

    h: jax.Array
    count: jax.Array


def hessian_init(d_in: int) -> HessianState:
    """An empty ``HessianState`` (zeros, count 0) for inputs of width ``d_in``.

    Args:
      d_in: the layer's input width (>= 1).

    Returns:
      ``HessianState``.

    Raises:
      ValueError: if ``d_in`` is not a positive int.

    Example:
      >>> from pruneax import weights as W
      >>> W.hessian_init(3).h.shape
      (3, 3)
    """
    if isinstance(d_in, bool) or not isinstance(d_in, int | np.integer) or d_in < 1:
        raise ValueError(f"hessian_init: d_in must be a positive int; got {d_in!r}")
    return HessianState(jnp.zeros((d_in, d_in), _F32), jnp.zeros((), jnp.int32))


def hessian_update(state: HessianState, x: jax.Array) -> HessianState:
    """Adds a batch of sequences to the running ``H = (2 / n_seq) X^T X``.

    Args:
      state: from ``hessian_init`` or a previous update.
      x: [n_seq, t, d_in] inputs of the layer (or [t, d_in]: one sequence).

    Returns:
      The updated ``HessianState`` (``h * n / (n + b) + (2 / (n + b)) X_b^T X_b``).

    Raises:
      ValueError: if ``x`` is not 2-D / 3-D with last axis d_in.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> state = W.hessian_update(W.hessian_init(2), jnp.array([[[1.0, 0.0], [1.0, 2.0]]]))
      >>> state.h.tolist(), int(state.count)
      ([[4.0, 4.0], [4.0, 8.0]], 1)
    """
    if not isinstance(state, HessianState):
        raise ValueError(f"hessian_update: state must be a HessianState (hessian_init); got "
                         f"{type(state).__name__}")  # fmt: skip
    d = state.h.shape[0]
    if len(_checks.shape_of(x, "x", "hessian_update")) not in (2, 3) or np.shape(x)[-1] != d:
        raise ValueError(
            f"hessian_update: x must be [n_seq, t, {d}] or [t, {d}]; got shape {np.shape(x)}"
        )
    x = jnp.asarray(x, _F32)
    if x.ndim == 2:
        x = x[None]
    total = state.count + x.shape[0]
    flat = x.reshape(-1, d)
    xtx = jnp.matmul(flat.T, flat, precision=_HI)
    h = state.h * (state.count / total) + (2.0 / total) * xtx
    return HessianState(h.astype(_F32), total.astype(jnp.int32))


def sparsegpt_prune(
    kernel: jax.Array,
    hessian: jax.Array,
    sparsity: float | None = None,
    n_m: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """Prunes one linear layer with SparseGPT and reconstructs the kept weights.

    Args:
      kernel: [d_in, d_out] (pruneax / Flax layout).
      hessian: [d_in, d_in] ``HessianState.h`` of the layer's calibration inputs (any positive
        multiple of ``X^T X`` gives the same result).
      sparsity: fraction in [0, 1) pruned in every block of ``blocksize`` inputs (exactly
        ``int(d_out * width * sparsity)`` weights per block).
      n_m: ``(N, M)`` instead: N pruned in every M consecutive inputs of every output column.
      blocksize: columns per lazy-update block (a multiple of M for N:M).
      percdamp: dampening, as a fraction of the mean of the Hessian's diagonal.

    Returns:
      ``(new_kernel, mask)``: the reconstructed kernel in ``kernel``'s dtype, exactly zero where
      ``mask`` (bool [d_in, d_out], True = kept) is False.

    Raises:
      ValueError: for bad shapes, a bad ``sparsity`` / ``n_m`` (as ``wanda_mask``), a
        ``blocksize`` that is not a positive int (a multiple of M for N:M), a negative
        ``percdamp``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> x = jnp.array([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.5, 1.0, 0.5]])
      >>> h = W.hessian_update(W.hessian_init(3), x).h
      >>> kernel, mask = W.sparsegpt_prune(jnp.array([[1.0], [0.1], [2.0]]), h, sparsity=0.4)
      >>> mask[:, 0].tolist(), bool(kernel[1, 0] == 0.0)
      ([True, False, True], True)
    """
    if len(_checks.shape_of(kernel, "kernel", "sparsegpt_prune")) != 2:
        raise ValueError(
            f"sparsegpt_prune: kernel must be 2-D [d_in, d_out]; got {np.shape(kernel)}"
        )
    d_in = np.shape(kernel)[0]
    if _checks.shape_of(hessian, "hessian", "sparsegpt_prune") != (d_in, d_in):
        raise ValueError(
            f"sparsegpt_prune: hessian must be [d_in, d_in] = [{d_in}, {d_in}]; "
            f"got shape {np.shape(hessian)}"
        )
    sparsity, n, m = check_pattern(sparsity, n_m, d_in, "sparsegpt_prune")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int | np.integer) or blocksize < 1:
        raise ValueError(f"sparsegpt_prune: blocksize must be a positive int; got {blocksize!r}")
    if m and blocksize % m:
        raise ValueError(f"sparsegpt_prune: blocksize={blocksize} must be a multiple of M={m}")
    if isinstance(percdamp, bool) or not isinstance(percdamp, int | float) or percdamp < 0:
        raise ValueError(f"sparsegpt_prune: percdamp must be a float >= 0; got {percdamp!r}")
    new, keep = _prune(
        jnp.asarray(kernel), jnp.asarray(hessian, _F32), jnp.asarray(percdamp, _F32),
        sparsity=sparsity, n=n, m=m, blocksize=int(blocksize),
    )  # fmt: skip
    return new.astype(jnp.result_type(kernel)), keep


def _upper_inverse_factor(h: jax.Array) -> jax.Array:
    """Upper-triangular ``U`` with ``U^T U = h^-1`` (h symmetric positive definite)."""
    eye = jnp.eye(h.shape[0], dtype=_F32)
    lower = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((lower, True), eye)
    return jnp.triu(jnp.linalg.cholesky(hinv).T)


@functools.partial(jax.jit, static_argnames=("sparsity", "n", "m", "blocksize"))
def _prune(kernel, h, percdamp, *, sparsity, n, m, blocksize):
    w = kernel.astype(_F32).T  # [rows, cols]
    rows, cols = w.shape
    dead = jnp.diagonal(h) == 0
    h = h + jnp.diag(dead.astype(_F32))  # H_jj = 1 for inputs never seen
    w = jnp.where(dead[None], 0.0, w)
    h = h + percdamp * jnp.mean(jnp.diagonal(h)) * jnp.eye(cols, dtype=_F32)
    u = _upper_inverse_factor(h)

    bs = min(blocksize, cols)  # a multiple of M for N:M (M divides both)
    nb = -(-cols // bs)
    cp = nb * bs  # padded width: the pad columns are zero weights with an identity Hessian
    w = jnp.pad(w, ((0, 0), (0, cp - cols)))
    u = jnp.eye(cp, dtype=_F32).at[:cols, :cols].set(u)
    real = jnp.arange(cp) < cols
    widths = [min(bs, cols - b * bs) for b in range(nb)]
    counts = jnp.asarray([int(rows * wd * sparsity) for wd in widths], jnp.int32)

    def column(i, carry):
        w1, pruned, errs, u1, d = carry
        if m:  # choose N of the next M columns, from the updated weights
            seg = jax.lax.dynamic_slice(w1, (0, i), (rows, m))
            dseg = jax.lax.dynamic_slice(d, (i,), (m,))
            tmp = jnp.square(seg) / jnp.square(dseg)[None]
            rank = jnp.argsort(jnp.argsort(tmp, axis=1, stable=True), axis=1, stable=True)
            chosen = jax.lax.dynamic_update_slice(pruned, rank < n, (0, i))
            pruned = jnp.where(i % m == 0, chosen, pruned)
        wc = w1[:, i]
        q = jnp.where(pruned[:, i], 0.0, wc)
        err = (wc - q) / d[i]
        w1 = w1 - err[:, None] * u1[i][None, :]  # u1[i, :i] == 0: only columns >= i move
        return w1, pruned, errs.at[:, i].set(err), u1, d

    def block(b, carry):
        w, keep = carry
        i1 = b * bs
        w1 = jax.lax.dynamic_slice(w, (0, i1), (rows, bs))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (bs, bs))
        d = jnp.diagonal(u1)
        if m:
            pruned = jnp.zeros((rows, bs), bool)
        else:  # one mask for the whole block, from the already-updated weights
            tmp = jnp.square(w1) / jnp.square(d)[None]
            tmp = jnp.where(jax.lax.dynamic_slice(real, (i1,), (bs,))[None], tmp, jnp.inf)
            order = jnp.argsort(tmp.ravel(), stable=True)
            rank = jnp.argsort(order, stable=True).reshape(rows, bs)
            pruned = rank < counts[b]
        errs = jnp.zeros((rows, bs), _F32)
        w1, pruned, errs, _, _ = jax.lax.fori_loop(0, bs, column, (w1, pruned, errs, u1, d))
        q1 = jnp.where(pruned, 0.0, w1)
        # lazy batch update of every column after the block
        rest = jnp.matmul(errs, jax.lax.dynamic_slice(u, (i1, 0), (bs, cp)), precision=_HI)
        w = w - jnp.where((jnp.arange(cp) >= i1 + bs)[None], rest, 0.0)
        w = jax.lax.dynamic_update_slice(w, q1, (0, i1))
        keep = jax.lax.dynamic_update_slice(keep, ~pruned, (0, i1))
        return w, keep

    w, keep = jax.lax.fori_loop(0, nb, block, (w, jnp.ones((rows, cp), bool)))
    return w[:, :cols].T, keep[:, :cols].T
