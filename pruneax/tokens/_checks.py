"""Argument checks shared by the token transforms.

Every check runs in Python on static information (shapes, dtypes, Python ints), so it fires at
trace time, before any computation, also under ``jax.jit`` and ``jax.vmap``. Each error names
the argument, what was expected and what was given.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def static_int(value: object, name: str) -> int:
    """Returns ``value`` as a Python int, or raises if it is not a concrete integer.

    ``bool`` and floats (even integral ones such as ``3.0``) are rejected, and so are JAX arrays
    (a traced ``k`` would make output shapes depend on values).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be a Python int (static under jit); got {type(value).__name__} {value!r}"
        )
    return int(value)


def budget(value: object, n: int, name: str = "k", *, low: int = 1) -> int:
    """Checks that ``value`` is an int in ``[low, n]`` and returns it."""
    k = static_int(value, name)
    if not low <= k <= n:
        raise ValueError(
            f"{name} must satisfy {low} <= {name} <= {n} (the number of tokens); got {k}"
        )
    return k


def real_array(x: object, name: str, rank: int, layout: str):
    """Checks that ``x`` is a real-valued array of the given rank; returns its shape.

    Args:
      x: the argument.
      name: its name, for the message.
      rank: the required number of dimensions.
      layout: the expected layout, e.g. ``"[N, D]"``, for the message.
    """
    shape = jnp.shape(x)
    if len(shape) != rank:
        raise ValueError(f"{name} must have shape {layout} (rank {rank}); got shape {shape}")
    dtype = jnp.result_type(x)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real floating or integer array; got dtype {dtype}")
    if any(d == 0 for d in shape):
        raise ValueError(f"{name} must be non-empty; got shape {shape}")
    return shape


def same_length(n: int, m: int, name: str, shape: Sequence[int], what: str) -> None:
    """Raises unless ``m == n``."""
    if m != n:
        raise ValueError(f"{name} must have {what} {n}; got shape {tuple(shape)}")


def grid_shape(grid: object, n: int, name: str = "grid") -> tuple[int, int]:
    """Checks a ``(rows, cols)`` patch grid whose size is ``n``."""
    if (
        not isinstance(grid, Sequence)
        or len(grid) != 2
        or any(isinstance(g, bool) or not isinstance(g, numbers.Integral) for g in grid)
    ):
        raise ValueError(f"{name} must be a pair of Python ints (rows, cols); got {grid!r}")
    rows, cols = int(grid[0]), int(grid[1])
    if rows < 1 or cols < 1 or rows * cols != n:
        raise ValueError(
            f"{name}={(rows, cols)} must have rows * cols == {n} (the number of tokens); "
            f"got {rows * cols}"
        )
    return rows, cols


def positive_float(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Checks a static positive (or non-negative) real hyperparameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a Python float; got {type(value).__name__} {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}; got {v}")
    return v
