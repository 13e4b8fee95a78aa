"""Sparsity distributions over layers: uniform and Erdos-Renyi-Kernel (ERK)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneax.weights import _checks, _paths
from pruneax.weights._masks import _check_fraction
from pruneax.weights._paths import Selector


def _shapes(params, prunable):
    names = _paths.prunable_names(params, prunable)
    flat = {n: np.shape(w) for n, w in _paths.by_name(params).items()}
    return {n: flat[n] for n in names}


def uniform_sparsities(
    params: Any, sparsity: float, *, prunable: Selector = None
) -> dict[str, float]:
    """``{name: sparsity}`` for every prunable leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"dense": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]]), "bias": jnp.ones(2)}}
      >>> W.uniform_sparsities(params, 0.8)
      {'dense/kernel': 0.8}
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    return dict.fromkeys(_shapes(params, prunable), sparsity)


def erk_sparsities(
    params: Any, sparsity: float, *, prunable: Selector = None, power: float = 1.0
) -> dict[str, float]:
    """Erdos-Renyi-Kernel: layer density proportional to ``(sum(shape) / prod(shape))**power``.

    Densities ``eps * raw_l`` with ``eps`` chosen so that the total density is ``1 - sparsity``;
    a layer whose density would exceed 1 is made dense and ``eps`` is recomputed over the rest
    (as in RigL's reference implementation). For a dense kernel ``[in, out]`` this is
    ``(in + out) / (in * out)`` (Erdos-Renyi); for a conv kernel ``[h, w, in, out]``,
    ``(h + w + in + out) / (h * w * in * out)``.

    Returns:
      ``{name: sparsity}`` for every prunable leaf; the size-weighted mean equals ``sparsity``.

    References:
      Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020.

    Example:
      >>> import jax.numpy as jnp
      >>> from pruneax import weights as W
      >>> params = {"a": {"kernel": jnp.zeros((10, 10))}, "b": {"kernel": jnp.zeros((10, 2))}}
      >>> {name: round(s, 4) for name, s in W.erk_sparsities(params, 0.9).items()}
      {'a/kernel': 0.925, 'b/kernel': 0.775}
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    power = _checks.real(power, "power", "erk_sparsities")
    if not np.isfinite(power):
        raise ValueError(f"erk_sparsities: power must be finite; got {power}")
    shapes = _shapes(params, prunable)
    size = {n: int(np.prod(s)) for n, s in shapes.items()}
    raw = {n: (sum(s) / np.prod(s)) ** power for n, s in shapes.items()}
    if bad := [n for n, r in raw.items() if not (np.isfinite(r) and r > 0)]:
        raise ValueError(
            f"erk_sparsities: (sum(shape) / prod(shape)) ** power is 0 or not finite for "
            f"{bad[:3]} (shapes {[shapes[n] for n in bad[:3]]}, power={power})"
        )
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = (1 - sparsity) * sum(size.values()) - sum(size[n] for n in dense)
        eps = budget / sum(raw[n] * size[n] for n in rest)
        top = max(raw[n] for n in rest)
        if eps * top <= 1.0 or len(rest) == 1:
            break
        dense |= {n for n in rest if raw[n] == top}
    return {n: 0.0 if n in dense else float(1.0 - eps * raw[n]) for n in shapes}
