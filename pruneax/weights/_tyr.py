"""Týr-the-Pruner's local pruner: structured (input-group) OBS pruning of one linear layer with an
exact least-squares refit of the kept inputs.

Layout: the kernel is pruneax's (Flax ``nnx.Linear``) ``[d_in, d_out]``, which is the published
``B = W^T`` (``[c_in, c_out]``) itself: a "group" is a block of consecutive INPUT rows of the
kernel (an attention head's / GQA group's ``o_proj`` rows, or one ``down_proj`` row = one MLP
channel). All arithmetic is float64 NumPy.

The algorithm (AMD-AGI/Tyr-the-Pruner ``src/local_pruner.py``, ``LocalPruner.prune`` and
``local_prune_core``): inputs never seen (``H_jj == 0``) get zero rows;
``H += percdamp * mean(diag H) * I``; ``G = H B`` (the dense layer's target); ``Hinv = H^-1``.
The ``n - keep`` groups are removed in ``min(rounds, n - keep)`` rounds of equal counts (the
first rounds take one more when it does not divide). Each round scores every live group ``g``
by ``obj_g = sum(W_g * (A_g W_g / 2 + G_g))`` with ``A_g = inv(Hinv[g, g])`` (``score="coded"``,
as published) or by the textbook OBS cost ``sum(W_g * A_g W_g) / 2`` (``score="obs"``), removes
the lowest, and applies the OBS update ``W -= Hinv[:, P] inv(Hinv[P, P]) W[P]`` (then
``W[P] = 0``) and the downdate ``Hinv -= Hinv[:, P] inv(Hinv[P, P]) Hinv[P]`` (then rows /
columns P zeroed). Finally the kept rows are re-solved exactly, ``W_K = inv(H_KK) G_K``: the
least-squares fit of the dense layer's output from the kept inputs (the minimum over ``W_K`` of
``-sum(W * G) + sum(W * (H W)) / 2``).

Deviations from the published code: ties between scores remove the LOWER group index first
(``torch.argsort`` leaves them unspecified); groups that are all zero on entry are not counted
as already pruned (the published core zeroes their ``Hinv`` rows and re-solves; it matters only
for an already pruned layer); ``keep == num_groups`` returns the kernel with only the dead rows
zeroed and ``keep == 0`` returns zeros, as the published ``step`` does for sparsities 0 and 1;
the linear solves use ``np.linalg.solve`` instead of explicit inverses.

References: the Týr-the-Pruner paper ("Týr-the-Pruner: Structural Pruning of LLMs through
Global Sparsity Distribution Optimization", AMD, 2025) and its code AMD-AGI/Tyr-the-Pruner;
Hassibi, Stork, "Optimal Brain Surgeon", NeurIPS 1992; Kurtic et al., "ZipLM", NeurIPS 2023
(structured OBS).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneax.weights import _checks

SCORES = ("coded", "obs")


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | np.integer)


def _check(kernel: Any, hessian: Any, num_groups: Any, keep: Any, rounds: Any, score: Any,
           percdamp: Any) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    where = "tyr_local_prune"
    w = _checks.host(kernel, "kernel", where)
    if w.ndim != 2 or w.size == 0 or not np.issubdtype(w.dtype, np.number):
        raise ValueError(f"{where}: kernel must be a non-empty 2-D [d_in, d_out] array; got "
                         f"shape {w.shape}")  # fmt: skip
    d_in = w.shape[0]
    h = _checks.host(hessian, "hessian", where)
    if h.shape != (d_in, d_in) or not np.issubdtype(h.dtype, np.number):
        raise ValueError(f"{where}: hessian must be a square [d_in, d_in] = [{d_in}, {d_in}] "
                         f"array; got shape {h.shape}")  # fmt: skip
    w, h = w.astype(np.float64), h.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{where}: kernel must be finite")
    if not np.all(np.isfinite(h)) or not np.allclose(h, h.T, rtol=1e-5, atol=1e-8):
        raise ValueError(f"{where}: hessian must be finite and symmetric")
    if not _is_int(num_groups) or num_groups < 1 or d_in % num_groups:
        raise ValueError(f"{where}: num_groups must be a positive int dividing d_in = {d_in}; "
                         f"got {num_groups!r}")  # fmt: skip
    if not _is_int(keep) or not 0 <= keep <= num_groups:
        raise ValueError(f"{where}: keep must be an int in [0, num_groups = {num_groups}]; got "
                         f"{keep!r}")  # fmt: skip
    if not _is_int(rounds) or rounds < 1:
        raise ValueError(f"{where}: rounds must be a positive int; got {rounds!r}")
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"{where}: score must be one of {SCORES}; got {score!r}")
    if (
        isinstance(percdamp, bool)
        or not isinstance(percdamp, int | float)
        or not (np.isfinite(percdamp) and percdamp >= 0)
    ):
        raise ValueError(f"{where}: percdamp must be a finite float >= 0; got {percdamp!r}")
    return w, h


def _scores(w, g, hinv, live, gs, score):
    """Per live group, the published objective (``coded``) or the OBS cost (``obs``)."""
    n, c_out = len(live), w.shape[1]
    rows = (live[:, None] * gs + np.arange(gs)[None]).reshape(-1)
    blocks = hinv[np.ix_(rows, rows)].reshape(n, gs, n, gs)[np.arange(n), :, np.arange(n), :]
    wg = w[rows].reshape(n, gs, c_out)
    a_w = np.linalg.solve(blocks, wg)  # A_g W_g with A_g = inv(Hinv[g, g])
    obj = 0.5 * np.sum(wg * a_w, axis=(1, 2))
    if score == "coded":
        obj = obj + np.sum(wg * g[rows].reshape(n, gs, c_out), axis=(1, 2))
    return obj


def tyr_local_prune(
    kernel: Any,
    hessian: Any,
    num_groups: int,
    keep: int,
    *,
    rounds: int = 1,
    score: str = "coded",
    percdamp: float = 0.01,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Týr-the-Pruner's local pruner: removes whole input groups of one linear layer by OBS
    rounds, then refits the kept inputs by exact least squares (see the module docstring).

    Args:
      kernel: [d_in, d_out] (Flax layout = the published ``B = W^T``).
      hessian: [d_in, d_in] symmetric ``X^T X`` of the layer's calibration inputs (any positive
        multiple gives the same result, e.g. ``HessianState.h``).
      num_groups: the number of equal, consecutive input groups (attention heads / GQA groups
        of ``o_proj``: group size ``d_in / num_groups``; ``d_in`` for single MLP channels).
      keep: groups kept, in ``[0, num_groups]`` (published: ``int(num_groups * (1 - s))``).
      rounds: removal rounds, equal counts each (published: 1 for attention, 16 for the MLP);
        at most ``num_groups - keep`` are used.
      score: ``"coded"`` (the published ``sum(W_g * (A_g W_g / 2 + G_g))``) or ``"obs"`` (the
        textbook OBS cost ``sum(W_g * A_g W_g) / 2``).
      percdamp: dampening added to the diagonal, as a fraction of its mean.

    Returns:
      ``(new_kernel, kept)``: the float64 [d_in, d_out] kernel, exactly zero on the removed
      groups' rows and the least-squares refit ``inv(H_KK) (H B)_K`` on the kept rows (the
      damped ``H``), and the sorted indices of the kept groups.

    Raises:
      ValueError: for a kernel that is not a non-empty finite 2-D array, a hessian that is not
        a finite symmetric [d_in, d_in] array (or not positive definite after damping),
        ``num_groups`` not dividing d_in, ``keep`` outside [0, num_groups], a non-positive
        ``rounds``, an unknown ``score`` or a negative ``percdamp``.

    References: AMD-AGI/Tyr-the-Pruner ``src/local_pruner.py`` (``local_prune_core``);
      Hassibi, Stork, "Optimal Brain Surgeon", NeurIPS 1992.

    Example:
      >>> import numpy as np
      >>> from pruneax import weights as W
      >>> x = np.random.default_rng(0).normal(size=(32, 4))
      >>> kernel = np.array([[1.0, 0.5], [0.01, 0.02], [2.0, -1.0], [0.03, 0.0]])
      >>> new, kept = W.tyr_local_prune(kernel, x.T @ x, 2, 1, percdamp=0.0)
      >>> kept, bool(np.all(new[:2] == 0))  # group 1 (rows 2, 3) carries the output
      ((1,), True)
    """
    w, h = _check(kernel, hessian, num_groups, keep, rounds, score, percdamp)
    d_in = w.shape[0]
    gs = d_in // num_groups
    dead = np.diagonal(h) == 0
    w[dead] = 0.0
    h = h + float(percdamp) * np.mean(np.diagonal(h)) * np.eye(d_in)
    try:
        np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        raise ValueError(
            "tyr_local_prune: hessian must be positive definite after damping (raise percdamp)"
        ) from None
    if keep == num_groups:
        return w, tuple(range(num_groups))
    if keep == 0:
        return np.zeros_like(w), ()
    g = h @ w
    hinv = np.linalg.inv(h)
    hinv = (hinv + hinv.T) / 2
    alive = np.ones(num_groups, bool)
    to_prune = num_groups - keep
    n_rounds = min(rounds, to_prune)
    base, extra = divmod(to_prune, n_rounds)
    for r in range(n_rounds):
        live = np.flatnonzero(alive)
        obj = _scores(w, g, hinv, live, gs, score)
        pick = live[np.argsort(obj, kind="stable")[: base + (r < extra)]]
        p = (pick[:, None] * gs + np.arange(gs)[None]).reshape(-1)
        block = hinv[np.ix_(p, p)]
        w -= hinv[:, p] @ np.linalg.solve(block, w[p])
        hinv -= hinv[:, p] @ np.linalg.solve(block, hinv[p])
        w[p] = 0.0
        hinv[p, :] = 0.0
        hinv[:, p] = 0.0
        alive[pick] = False
    kept = np.flatnonzero(alive)
    rows = (kept[:, None] * gs + np.arange(gs)[None]).reshape(-1)
    out = np.zeros_like(w)
    out[rows] = np.linalg.solve(h[np.ix_(rows, rows)], g[rows])
    return out, tuple(int(k) for k in kept)


def tyr_layer_loss(kernel: Any, hessian: Any, target: Any) -> float:
    """The local pruner's objective ``-sum(W * G) + sum(W * (H W)) / 2`` with ``G = H B``: half
    the squared output error ``||X W - X B||^2`` minus the constant ``||X B||^2 / 2``.

    Args:
      kernel: [d_in, d_out] candidate ``W``.
      hessian: [d_in, d_in] ``H`` (damped as the pruner damped it, to compare with its result).
      target: [d_in, d_out] the dense kernel ``B``.

    Returns:
      The loss (float64).

    Raises:
      ValueError: for shapes that do not match.

    Example:
      >>> import numpy as np
      >>> from pruneax import weights as W
      >>> b = np.array([[1.0], [2.0]])
      >>> W.tyr_layer_loss(b, np.eye(2), b)  # the minimum: -||B||^2 / 2 for H = I
      -2.5
    """
    w, h, b = (
        _checks.host(a, name, "tyr_layer_loss", np.float64)
        for a, name in ((kernel, "kernel"), (hessian, "hessian"), (target, "target"))
    )
    if w.ndim != 2 or b.shape != w.shape or h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(
            f"tyr_layer_loss: kernel and target must be [d_in, d_out] and hessian [d_in, d_in]; "
            f"got {w.shape}, {b.shape}, {h.shape}"
        )
    g = h @ b
    return float(-np.sum(w * g) + 0.5 * np.sum(w * (h @ w)))
