"""Timing for benchmarks: variants alternated in one process, medians, ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def time_alternating(
    fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 1, number: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each variant, the variants alternated within every repeat.

    Alternating (a, b, c, a, b, c, ...) gives every variant the same machine state (turbo,
    caches, a neighbour's load), so the ratio of two medians measured together is meaningful
    even on a busy machine; results are blocked on (``jax.block_until_ready``) before the clock
    stops. ``warmup`` untimed rounds run first (compilation). With ``number > 1`` a sample is
    ``number`` back-to-back calls (blocked on the last), divided by ``number``.

    Args:
      fns: name -> zero-argument callable.
      repeats: timed rounds, >= 1.
      warmup: untimed rounds first, >= 0.
      number: calls per sample, >= 1.

    Returns:
      name -> list of ``repeats`` times in seconds (per call).

    Raises:
      ValueError: if ``fns`` is empty or ``repeats`` / ``warmup`` / ``number`` are out of
        range.

    Example:
      >>> from pruneax.lab import time_alternating
      >>> t = time_alternating({"a": lambda: 1, "b": lambda: 2}, repeats=3)
      >>> sorted(t), len(t["a"])
      (['a', 'b'], 3)
    """
    if not fns:
        raise ValueError("time_alternating: fns must name at least one callable")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"time_alternating: repeats must be an int >= 1; got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"time_alternating: warmup must be an int >= 0; got {warmup!r}")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"time_alternating: number must be an int >= 1; got {number!r}")
    for _ in range(warmup):
        for f in fns.values():
            jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t = time.perf_counter()
            for _ in range(number):
                out = f()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t) / number)
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each variant's times.

    Args:
      times: name -> times (as ``time_alternating`` returns).

    Returns:
      name -> median seconds.

    Example:
      >>> from pruneax.lab import medians
      >>> medians({"a": [3.0, 1.0, 2.0]})
      {'a': 2.0}
    """
    return {k: float(statistics.median(v)) for k, v in times.items()}


def ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, float]:
    """Each variant's median over the ``baseline`` variant's median (measured side by side).

    Args:
      times: name -> times.
      baseline: the variant all others are divided by.

    Returns:
      name -> median / baseline median (the baseline maps to 1.0).

    Raises:
      ValueError: if ``baseline`` is not a key of ``times``.

    Example:
      >>> from pruneax.lab import ratios
      >>> ratios({"dense": [2.0, 2.0], "pruned": [1.0, 1.0]}, "dense")
      {'dense': 1.0, 'pruned': 0.5}
    """
    if baseline not in times:
        raise ValueError(f"ratios: baseline {baseline!r} is not among {sorted(times)}")
    m = medians(times)
    return {k: v / m[baseline] for k, v in m.items()}
