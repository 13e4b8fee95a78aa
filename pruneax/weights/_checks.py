"""Argument checks shared by the weight transforms.

Each check raises ``ValueError`` naming the argument (prefixed by the function, ``where``), what
was expected and what was given, for any input: None, a str, a dict, a ragged or non-numeric
list, an object array, a non-callable where a function is expected, ... (never a TypeError or
AttributeError from deeper down).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _at(where: str | None) -> str:
    return f"{where}: " if where else ""


def short(x: object) -> str:
    """``type value`` of an argument, the repr cut to 60 characters."""
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def numeric(x: object, name: str, where: str | None = None) -> tuple[tuple[int, ...], Any]:
    """``(shape, dtype)`` of an array argument (an array, a number or a nested list of numbers);
    raises unless ``jnp.asarray`` can take ``x``."""
    try:
        if x is None or isinstance(x, str | bytes | dict):
            raise TypeError
        if isinstance(x, list | tuple):  # nested lists of numbers, as jnp.asarray takes them
            x = np.asarray(x)  # ragged: ValueError; str / objects: refused just below
        dtype = jnp.result_type(x)
        return tuple(jnp.shape(x)), dtype
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{_at(where)}{name} must be a numeric array; got {short(x)}") from None


def shape_of(
    x: object,
    name: str,
    where: str | None = None,
    *,
    rank: int | None = None,
    layout: str = "",
    floating: bool = False,
) -> tuple[int, ...]:
    """The shape of a real (with ``floating``: floating-point) array argument of ``rank``
    dimensions; ValueError naming it otherwise. Nothing is converted or copied."""
    shape, dtype = numeric(x, name, where)
    if rank is not None and len(shape) != rank:
        raise ValueError(f"{_at(where)}{name} must be {layout} (rank {rank}); got shape {shape}")
    kinds = (jnp.floating,) if floating else (jnp.floating, jnp.integer, jnp.bool_)
    if not any(jnp.issubdtype(dtype, k) for k in kinds):
        what = "a floating" if floating else "a real"
        raise ValueError(f"{_at(where)}{name} must be {what} array; got dtype {dtype}")
    return shape


def array(x: object, name: str, where: str | None = None, **kw: Any) -> jax.Array:
    """``x`` as a jax array after ``shape_of``'s checks."""
    shape_of(x, name, where, **kw)
    try:
        return jnp.asarray(x)
    except OverflowError:  # a Python int beyond int32
        raise ValueError(f"{_at(where)}{name} is out of int32 range; got {short(x)}") from None


def floats(where: str, **arrays: Any) -> list[jax.Array]:
    """The named arguments as floating arrays (ValueError naming any that is not one)."""
    return [array(v, k, where, floating=True) for k, v in arrays.items()]


def mask(value: object, name: str, where: str | None = None) -> np.ndarray:
    """A mask leaf (bool, or 0 / 1 integers) as a NumPy array."""
    shape, dtype = numeric(value, name, where)
    if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{_at(where)}{name} must be a bool mask; got dtype {dtype} {shape}")
    out = np.asarray(value)
    if out.dtype != np.bool_ and np.any((out != 0) & (out != 1)):
        raise ValueError(f"{_at(where)}{name} must be a bool (or 0 / 1) mask; got other values")
    return out


def host(value: object, name: str, where: str | None = None, dtype: Any = None) -> np.ndarray:
    """``np.asarray(value, dtype)`` of a real array argument; ValueError naming it for anything
    else (a str, a ragged list, a dict, objects; complex, whose imaginary part would be lost)."""
    try:
        if value is None or isinstance(value, str | bytes | dict):
            raise TypeError
        out = np.asarray(value)
        if out.dtype.kind not in "biuf":
            raise TypeError
        return out if dtype is None else out.astype(dtype)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{_at(where)}{name} must be a real array; got {short(value)}") from None


def choice(value: object, options: Sequence[Any], name: str, where: str | None = None) -> Any:
    """``value`` if it is one of ``options`` (compared only when hashable: no array truth)."""
    ok = value is None or isinstance(value, str | numbers.Number)
    if not ok or value not in options:
        raise ValueError(f"{_at(where)}{name} must be one of {list(options)}; got {short(value)}")
    return value


def flag(value: object, name: str, where: str | None = None) -> bool:
    """A Python (or NumPy) bool."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{_at(where)}{name} must be a bool; got {short(value)}")
    return bool(value)


def function(value: object, name: str, where: str | None = None) -> Any:
    """A callable."""
    if not callable(value):
        raise ValueError(f"{_at(where)}{name} must be callable; got {short(value)}")
    return value


def mapping(value: object, name: str, where: str | None = None) -> Mapping:
    """A mapping (a dict)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{_at(where)}{name} must be a mapping (a dict); got {short(value)}")
    return value


def transformation(value: object, name: str, where: str | None = None) -> Any:
    """An optax ``GradientTransformation`` (anything with callable ``init`` and ``update``)."""
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise ValueError(
            f"{_at(where)}{name} must be an optax GradientTransformation (init / update); got "
            f"{short(value)}"
        )
    return value


def real(value: object, name: str, where: str | None = None) -> float:
    """A Python / NumPy real number or a concrete 0-d real array (not a bool), as a float."""
    if isinstance(value, np.ndarray | jax.Array) and value.shape == ():
        kind = (
            np.dtype(value.dtype).kind
            if not jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)
            else "key"
        )
        if kind in "iuf":
            return float(value)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"{_at(where)}{name} must be a float; got {short(value)}")
    return float(value)


def integer(
    value: object,
    name: str,
    where: str | None = None,
    *,
    low: int | None = None,
    high: int = 2**31 - 1,
) -> int:
    """A Python / NumPy int (not a bool) in ``[low, high]`` (int32 by default)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{_at(where)}{name} must be an int; got {short(value)}")
    v = int(value)
    if (low is not None and v < low) or v > high:
        lo = "" if low is None else f"{low} <= "
        raise ValueError(f"{_at(where)}{name} must satisfy {lo}{name} <= {high}; got {v}")
    return v


def ints(value: object, name: str, length: int, where: str | None = None, *, low: int = 1):
    """A sequence of ``length`` Python ints >= ``low`` (a window, strides), as a tuple."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != length
        or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value)
        or any(v < low for v in value)
    ):
        raise ValueError(
            f"{_at(where)}{name} must be a sequence of {length} ints >= {low}; got {short(value)}"
        )
    return tuple(int(v) for v in value)


def padding(value: object, dims: int, where: str | None = None) -> Any:
    """``"VALID"`` / ``"SAME"`` / ``"SAME_LOWER"`` or ``dims`` (low, high) int pairs."""
    if isinstance(value, str) and value in ("VALID", "SAME", "SAME_LOWER"):
        return value
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == dims
        and all(isinstance(p, Sequence) and len(p) == 2 for p in value)
        and all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for p in value for i in p
        )
    ):
        return value
    raise ValueError(
        f"{_at(where)}padding must be 'VALID', 'SAME', 'SAME_LOWER' or {dims} (low, high) int "
        f"pairs; got {short(value)}"
    )


def prng_key(key: object, name: str = "key", where: str | None = None) -> None:
    """A typed PRNG key (shape ()) or a raw uint32[2] key."""
    try:
        dtype = jnp.result_type(key) if hasattr(key, "dtype") else None
    except TypeError:
        dtype = None
    shape = jnp.shape(key) if dtype is not None else None
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    if (typed and shape == ()) or (not typed and dtype == jnp.uint32 and shape == (2,)):
        return
    raise ValueError(
        f"{_at(where)}{name} must be a jax.random key (jax.random.key(seed), shape ()) or a raw "
        f"uint32[2] key (jax.random.PRNGKey(seed)); got {short(key)}"
    )


def iterator(value: object, name: str, where: str | None = None) -> Any:
    """``iter(value)`` for a list / tuple / generator / other non-str iterable (lazily)."""
    if not isinstance(value, str | bytes | Mapping):
        try:
            return iter(value)  # type: ignore[call-overload]
        except TypeError:
            pass
    raise ValueError(f"{_at(where)}{name} must be an iterable (a list); got {short(value)}")


def pair(value: object, name: str, where: str | None = None) -> tuple[str, int]:
    """A ``(str, int)`` pair such as ``(layer name, filter index)``."""
    if not (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], numbers.Integral)
        and not isinstance(value[1], bool)
    ):
        raise ValueError(
            f"{_at(where)}{name} must be a (layer name, index) pair; got {short(value)}"
        )
    return value[0], int(value[1])


def items(value: object, name: str, where: str | None = None) -> list:
    """The elements of a list / tuple / other non-str iterable, as a list."""
    return list(iterator(value, name, where))
