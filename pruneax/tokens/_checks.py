"""Argument checks shared by the token transforms.

Every check runs in Python on static information (shapes, dtypes, Python ints), so it fires at
trace time, before any computation, also under ``jax.jit`` and ``jax.vmap``. Each error names
the argument, what was expected and what was given.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
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


def shape_dtype(x: object, name: str, *, lists: bool = False) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of an array argument; raises unless JAX can take ``x`` as an array
    (None, a str, a dict, a ragged or non-numeric list, an object array are refused; a nested
    list of numbers only with ``lists``, for arguments that ``jnp.asarray`` converts)."""
    try:
        if x is None or isinstance(x, str | bytes | dict):
            raise TypeError
        if lists and isinstance(x, list | tuple):
            x = np.asarray(x)  # ragged: ValueError; str / objects: refused just below
        dtype = jnp.result_type(x)  # first: it refuses a list before jnp.shape warns
        return tuple(jnp.shape(x)), dtype
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"{name} must be a numeric array; got {type(x).__name__} {_short(x)}"
        ) from None


def _short(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def real_array(x: object, name: str, rank: int, layout: str):
    """Checks that ``x`` is a real-valued array of the given rank; returns its shape.

    Args:
      x: the argument.
      name: its name, for the message.
      rank: the required number of dimensions.
      layout: the expected layout, e.g. ``"[N, D]"``, for the message.
    """
    shape, dtype = shape_dtype(x, name)
    if len(shape) != rank:
        raise ValueError(f"{name} must have shape {layout} (rank {rank}); got shape {shape}")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real floating or integer array; got dtype {dtype}")
    if any(d == 0 for d in shape):
        raise ValueError(f"{name} must be non-empty; got shape {shape}")
    return shape


def index_array(idx: object, name: str = "idx") -> tuple[int, ...]:
    """Checks a rank-1 integer index array; returns its shape."""
    shape, dtype = shape_dtype(idx, name)
    if len(shape) != 1 or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must be a rank-1 integer array; got shape {shape} dtype {dtype}")
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


def concrete_or_none(x: object):
    """``x`` as a NumPy array if its value is known at trace time, else None (a tracer)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def index_range(idx: object, n: int, name: str) -> None:
    """Raises if concrete indices fall outside [0, n) (traced ones are checked by the caller's
    documented out-of-range rule)."""
    v = concrete_or_none(idx)
    if v is not None and v.size and (v.min() < 0 or v.max() >= n):
        raise ValueError(f"{name} must lie in [0, {n}); got values from {v.min()} to {v.max()}")


def prng_key(key: object, name: str = "key") -> None:
    """Checks a typed PRNG key (shape ()) or a raw uint32[2] key."""
    try:
        dtype = jnp.result_type(key) if hasattr(key, "dtype") else None
    except TypeError:  # an object / str array
        dtype = None
    shape = jnp.shape(key) if dtype is not None else None
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    if typed and shape == ():
        return
    if not typed and dtype == jnp.uint32 and shape == (2,):
        return
    raise ValueError(
        f"{name} must be a jax.random key (jax.random.key(seed), shape ()) or a raw uint32[2] "
        f"key (jax.random.PRNGKey(seed)); got dtype {dtype} shape {shape}"
    )
