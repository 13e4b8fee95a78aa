"""ECoFLaP's sparsity allocation across groups: a score-proportional water-filling of the keep
budget above a per-group floor (``max_sparsity``), rounded so the total is exact.

Reference: ylsung/ECoFLaP ``layer_single_base_pruner.py::LayerSparsity.return_sparsity``'s
``compute_the_sparsity_per_group`` (read, not copied; written here in closed form, see
``pruneax.weights._ecoflap``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pruneax.weights._checks import short

_TOL = 1e-9  # float slack: 10 * (1 - 0.9) = 0.99999... keeps 1 weight, not 0


def _check(scores, sizes, sparsity, max_sparsity, where):
    try:
        s = np.asarray(scores, np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: scores must be a 1-D sequence of floats; got {short(scores)}"
        ) from None
    try:
        p = np.asarray(sizes)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: sizes must be a 1-D sequence of ints; got {short(sizes)}"
        ) from None
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{where}: scores must be a non-empty 1-D sequence; got shape {s.shape}")
    if p.shape != s.shape:
        raise ValueError(f"{where}: sizes must match scores in length; got {p.shape} vs {s.shape}")
    if not np.issubdtype(p.dtype, np.integer) or np.any(p < 1):
        raise ValueError(f"{where}: sizes must be positive ints (parameters per group); got {p}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"{where}: scores must be finite and >= 0; got {s}")
    for name, v in (("sparsity", sparsity), ("max_sparsity", max_sparsity)):
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise ValueError(f"{where}: {name} must be a float; got {v!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{where}: sparsity must be in [0, 1); got {sparsity}")
    if not sparsity <= max_sparsity <= 1.0:
        raise ValueError(
            f"{where}: max_sparsity must be in [sparsity, 1] = [{sparsity}, 1]; got {max_sparsity}"
        )
    return s, p.astype(np.int64)


def _water_fill(s: np.ndarray, cap: np.ndarray, r: float) -> np.ndarray:
    """Real ``t`` with ``t_g = min(cap_g, lam * s_g)`` and ``sum t = r`` (``0 <= r <= sum cap``
    over the groups with ``s > 0``): the saturation points ``cap_g / s_g`` sorted, the level
    solved once per prefix of saturated groups."""
    t = np.zeros_like(cap, dtype=np.float64)
    live = np.flatnonzero(s > 0)
    order = live[np.argsort(cap[live] / s[live], kind="stable")]
    full, rest_s = 0.0, float(s[order].sum())
    for i, g in enumerate(order):
        lam = (r - full) / rest_s
        if lam * s[g] <= cap[g]:  # nobody else saturates: the level is lam
            t[order[i:]] = lam * s[order[i:]]
            return np.minimum(t, cap)
        t[g] = cap[g]
        full += cap[g]
        rest_s -= s[g]
    return t


def allocate_keep(
    scores: Sequence[float],
    sizes: Sequence[int],
    sparsity: float,
    *,
    max_sparsity: float,
) -> np.ndarray:
    """Weights kept per group, ECoFLaP's allocation: ``K = int(P_total (1 - sparsity))`` in all,
    every group at least ``ceil(P_g (1 - max_sparsity))``, the rest in proportion to score.

    Above the floors ``f_g``, group g gets ``min(P_g - f_g, lam * score_g)`` with the level lam
    solved in closed form so the total is ``K - sum f`` (groups with score 0 keep only their
    floor unless the positive-score groups are all full; then the rest is shared in proportion
    to the zero-score groups' room). The real shares are rounded by largest remainder (ties to
    the lower index), so the total kept is exactly K and no group leaves ``[f_g, P_g]``. Both
    ``int`` and ``ceil`` allow 1e-9 of float slack (``10 * (1 - 0.9)`` keeps 1).

    Args:
      scores: [G] importances >= 0 (``group_scores``).
      sizes: [G] positive parameter counts.
      sparsity: the overall fraction pruned, in [0, 1).
      max_sparsity: the largest sparsity of any group, in [sparsity, 1].

    Returns:
      int64 [G] kept weights per group.

    Raises:
      ValueError: for length mismatch, empty / negative / non-finite scores, non-positive
        sizes, ``sparsity`` outside [0, 1), ``max_sparsity`` outside [sparsity, 1], or floors
        that already exceed the budget (infeasible: raise ``max_sparsity``).

    Example:
      >>> from pruneax import weights as W
      >>> W.allocate_keep([1.0, 3.0], [100, 100], 0.5, max_sparsity=0.9)
      array([30, 70])
    """
    where = "allocate_keep"
    s, p = _check(scores, sizes, sparsity, max_sparsity, where)
    k = math.floor(int(p.sum()) * (1.0 - float(sparsity)) + _TOL)
    floor = np.array([math.ceil(int(n) * (1.0 - float(max_sparsity)) - _TOL) for n in p])
    floor = np.clip(floor, 0, p)
    r = k - int(floor.sum())
    if r < 0:
        raise ValueError(
            f"{where}: infeasible: the floors ceil(P_g (1 - max_sparsity)) keep {int(floor.sum())}"
            f" > the budget {k} weights; raise max_sparsity above {max_sparsity}"
        )
    cap = (p - floor).astype(np.float64)
    room_pos = float(cap[s > 0].sum())
    if r <= room_pos:
        t = _water_fill(s, cap, float(r))
    else:  # the positive-score groups are all full: share the rest by room
        t = np.where(s > 0, cap, 0.0)
        t += _water_fill(np.where(s > 0, 0.0, cap), cap, r - room_pos)
    base = np.minimum(np.floor(t + _TOL), cap).astype(np.int64)
    extra = r - int(base.sum())
    frac = np.where(base < cap, t - base, -np.inf)
    order = np.lexsort((np.arange(len(t)), -frac))  # largest remainder, ties to the lower index
    base[order[:extra]] += 1
    return floor + base


def allocate_sparsity(
    scores: Sequence[float],
    sizes: Sequence[int],
    sparsity: float,
    *,
    max_sparsity: float,
) -> np.ndarray:
    """Per-group sparsity ``1 - keep_g / P_g`` of ``allocate_keep`` (see there).

    Args:
      scores: [G] importances >= 0.
      sizes: [G] positive parameter counts.
      sparsity: the overall fraction pruned, in [0, 1).
      max_sparsity: the largest sparsity of any group, in [sparsity, 1].

    Returns:
      float64 [G] sparsities, each in [0, max_sparsity].

    Raises:
      ValueError: as ``allocate_keep``.

    Example:
      >>> from pruneax import weights as W
      >>> W.allocate_sparsity([1.0, 1.0, 4.0], [10, 10, 10], 0.5, max_sparsity=0.7)
      array([0.6, 0.6, 0.3])
    """
    keep = allocate_keep(scores, sizes, sparsity, max_sparsity=max_sparsity)
    return 1.0 - keep / np.asarray(sizes, np.float64)
