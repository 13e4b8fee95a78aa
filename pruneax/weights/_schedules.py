"""Sparsity schedules: functions of the step (or round) returning the target sparsity."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from pruneax.weights._masks import _check_fraction

Schedule = Callable[[int], float]


def one_shot(sparsity: float, step: int = 0) -> Schedule:
    """0 before ``step``, ``sparsity`` from ``step`` on."""
    sparsity = _check_fraction(sparsity, "sparsity")
    return lambda t: jnp.where(jnp.asarray(t) >= step, sparsity, 0.0)


def iterative(rate: float) -> Schedule:
    """Sparsity after ``r`` rounds that each prune ``rate`` of the remaining weights:
    ``1 - (1 - rate) ** r`` (IMP: rate 0.2 gives 20%, 36%, 48.8%, ...)."""
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
    """
    final, initial = _check_fraction(final, "final"), _check_fraction(initial, "initial")
    if not end_step > begin_step:
        raise ValueError(f"need end_step > begin_step; got {begin_step}, {end_step}")

    def schedule(t):
        p = jnp.clip((jnp.asarray(t, jnp.float32) - begin_step) / (end_step - begin_step), 0, 1)
        return final + (initial - final) * (1.0 - p) ** power

    return schedule
