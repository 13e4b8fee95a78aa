"""Sparsity schedules: functions of the step (or round) returning the target sparsity."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp

from pruneax.weights import _checks
from pruneax.weights._masks import _check_fraction

Schedule = Callable[[int], float]


def one_shot(sparsity: float, step: int = 0) -> Schedule:
    """0 before ``step``, ``sparsity`` from ``step`` on.

    Example:
      >>> from pruneax import weights as W
      >>> schedule = W.one_shot(0.9, step=100)
      >>> round(float(schedule(99)), 4), round(float(schedule(100)), 4)
      (0.0, 0.9)
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    step = _checks.integer(step, "step", "one_shot", low=-(2**31))
    return lambda t: jnp.where(jnp.asarray(t) >= step, sparsity, 0.0)


def iterative(rate: float) -> Schedule:
    """Sparsity after ``r`` rounds that each prune ``rate`` of the remaining weights:
    ``1 - (1 - rate) ** r`` (IMP: rate 0.2 gives 20%, 36%, 48.8%, ...).

    Example:
      >>> from pruneax import weights as W
      >>> [round(float(W.iterative(0.2)(r)), 4) for r in (1, 2, 3)]
      [0.2, 0.36, 0.488]
    """
    rate = _check_fraction(rate, "rate")
    return lambda r: 1.0 - (1.0 - rate) ** jnp.asarray(r, jnp.float32)


def polynomial(
    final: float, begin_step: int, end_step: int, *, initial: float = 0.0, power: float = 3.0
) -> Schedule:
    """Zhu & Gupta's gradual schedule: ``s_t = s_f + (s_i - s_f) (1 - p)**power`` with
    ``p = clip((t - begin) / (end - begin), 0, 1)``.

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
      compression", 2017.

    Raises:
      ValueError: if fractions are outside [0, 1) or ``end_step <= begin_step``.

    Example:
      >>> from pruneax import weights as W
      >>> schedule = W.polynomial(0.9, begin_step=0, end_step=100)
      >>> [round(float(schedule(t)), 4) for t in (0, 50, 100, 200)]
      [0.0, 0.7875, 0.9, 0.9]
    """
    final, initial = _check_fraction(final, "final"), _check_fraction(initial, "initial")
    begin_step, end_step, power = (
        _finite(v, name) for v, name in ((begin_step, "begin_step"), (end_step, "end_step"),
                                         (power, "power"))
    )  # fmt: skip
    if not end_step > begin_step:
        raise ValueError(f"need end_step > begin_step; got {begin_step}, {end_step}")

    def schedule(t):
        p = jnp.clip((jnp.asarray(t, jnp.float32) - begin_step) / (end_step - begin_step), 0, 1)
        return final + (initial - final) * (1.0 - p) ** power

    return schedule


def _finite(value: object, name: str) -> float | int:
    """A finite real; an int32-sized int stays an int, so the schedule's arithmetic is
    unchanged (a larger one would overflow JAX's int32 conversion: a float)."""
    v = _checks.real(value, name, "polynomial")
    if not math.isfinite(v):
        raise ValueError(f"polynomial: {name} must be finite; got {v}")
    return value if isinstance(value, int) and abs(value) < 2**31 else v
