"""NumPy (float64) oracles of Wanda and SparseGPT, written from the published algorithms
(locuslab/wanda ``lib/prune.py::prune_wanda``; IST-DASLab/sparsegpt
``sparsegpt.py::SparseGPT.fasterprune``) in their PyTorch layout (``W`` [d_out, d_in]); every
function takes and returns pruneax's kernel layout [d_in, d_out]. Masks: True = kept.

Two choices where the published code leaves ties open or prunes by a ``<=`` threshold: exactly
``count`` entries are pruned, the lower index first (stable sort).
"""

from __future__ import annotations

import numpy as np


def wanda_mask_np(kernel, x, sparsity=None, n_m=None) -> np.ndarray:
    """Per output row of ``W = kernel.T``: stable argsort of ``|W| * ||X_j||``; prune the first
    ``int(d_in * sparsity)`` (or the N lowest of every M consecutive inputs)."""
    w = np.asarray(kernel, np.float64).T
    x = np.asarray(x, np.float64).reshape(-1, w.shape[1])
    metric = np.abs(w) * np.sqrt(np.sum(x * x, axis=0))[None, :]
    pruned = np.zeros(w.shape, bool)
    if n_m is None:
        idx = np.argsort(metric, axis=1, kind="stable")[:, : int(w.shape[1] * sparsity)]
        np.put_along_axis(pruned, idx, True, axis=1)
    else:
        n, m = n_m
        for j in range(0, w.shape[1], m):
            idx = np.argsort(metric[:, j : j + m], axis=1, kind="stable")[:, :n]
            np.put_along_axis(pruned[:, j : j + m], idx, True, axis=1)
    return ~pruned.T


def hessian_np(x) -> np.ndarray:
    """``(2 / n_seq) X^T X`` of inputs [n_seq, t, d_in]."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, x.shape[-1])
    return 2.0 / x.shape[0] * flat.T @ flat


def sparsegpt_np(kernel, h, sparsity=None, n_m=None, blocksize=128, percdamp=0.01):
    """Straight float64 port of ``fasterprune``; returns ``(new_kernel, keep_mask)``."""
    W = np.array(kernel, np.float64).T.copy()
    H = np.array(h, np.float64).copy()
    cols = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(cols)] += percdamp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper, U^T U = H^-1
    prunen, prunem = n_m if n_m is not None else (0, 0)
    pruned = np.zeros(W.shape, bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        mask1 = np.zeros(W1.shape, bool)
        if prunen == 0:
            tmp = W1**2 / np.diag(U1)[None, :] ** 2
            mask1.flat[np.argsort(tmp, axis=None, kind="stable")[: int(tmp.size * sparsity)]] = True
        for i in range(i2 - i1):
            w = W1[:, i].copy()
            d = U1[i, i]
            if prunen and i % prunem == 0:
                tmp = W1[:, i : i + prunem] ** 2 / np.diag(U1)[None, i : i + prunem] ** 2
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
                np.put_along_axis(mask1[:, i : i + prunem], idx, True, axis=1)
            q = w.copy()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W.T, ~pruned.T


def obs_prune_column(kernel, h, q) -> np.ndarray:
    """Closed-form OBS: input ``q`` of every output removed, the inputs ``>= q`` re-fitted
    (``dw = -w_q / [H_s^-1]_00 * H_s^-1[:, 0]`` with ``H_s = H[q:, q:]``; for ``q = 0`` this is
    textbook OBS over the whole row)."""
    W = np.array(kernel, np.float64).T.copy()
    hinv = np.linalg.inv(np.asarray(h, np.float64)[q:, q:])
    W[:, q:] -= np.outer(W[:, q] / hinv[0, 0], hinv[:, 0])
    W[:, q] = 0.0
    return W.T
