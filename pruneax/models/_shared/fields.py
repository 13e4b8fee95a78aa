"""One shared validator for the fields of frozen config dataclasses.

A config lists, per field, a small check (``int_field``, ``real_field``, ``bool_field``,
``hw_field``, ``one_of``) and calls ``check_fields`` from its ``__post_init__``; every check
normalises the value (NumPy scalars to Python ones, so that the config stays hashable and prints
cleanly) and raises ``ValueError("<Owner>: <field> must be ...; got ...")`` otherwise.

Example:
  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class Cfg:
  ...     width: int = 8
  ...     eps: float = 1e-6
  ...     def __post_init__(self):
  ...         check_fields(self, width=int_field(low=1), eps=real_field(gt=0))
  >>> Cfg(width=4).width
  4
  >>> Cfg(width=0)
  Traceback (most recent call last):
  ...
  ValueError: Cfg: width must be a positive int; got 0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection
from typing import Any

Check = Callable[[Any, str, str], Any]
"""A field check: ``(value, name, owner) -> normalised value``; raises ``ValueError``."""


def is_int(value: object) -> bool:
    """True for a Python / NumPy integer that is not a bool.

    Example:
      >>> is_int(3), is_int(True), is_int(3.0)
      (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for a finite real number (int or float, Python or NumPy) that is not a bool.

    Example:
      >>> is_real(0.5), is_real(float("nan")), is_real(False)
      (True, False, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low: Any, high: Any, gt: Any = None, lt: Any = None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt}")
    if low is not None:
        parts.append(f">= {low}")
    if high is not None:
        parts.append(f"<= {high}")
    if lt is not None:
        parts.append(f"< {lt}")
    return " and ".join(parts)


def _fail(owner: str, name: str, what: str, value: Any, none: bool) -> ValueError:
    return ValueError(f"{owner}: {name} must be {what}{' or None' if none else ''}; got {value!r}")


def int_field(
    *,
    low: int | None = None,
    high: int | None = None,
    none: bool = False,
    words: Collection[str] = (),
) -> Check:
    """A check for an int in ``[low, high]`` (either bound optional), or None when ``none``.

    Args:
      low, high: inclusive bounds, or None for none.
      none: accept None (kept as None).
      words: strings also accepted and kept as they are (e.g. ``("auto",)``, for the config
        to resolve once its other fields are checked).

    Returns:
      The check; ``low=1`` alone reads "a positive int" in its message, and each word adds
      " or '<word>'".

    Example:
      >>> int_field(low=0, high=3)(2, "k", "Spec")
      2
      >>> int_field(low=1, words=("auto",))(0, "rank", "Cfg")
      Traceback (most recent call last):
      ...
      ValueError: Cfg: rank must be a positive int or 'auto'; got 0
    """
    what = "a positive int" if (low, high) == (1, None) else f"an int {_bounds(low, high)}".strip()
    what += "".join(f" or {w!r}" for w in words)

    def check(value: Any, name: str, owner: str) -> int | str | None:
        if (none and value is None) or (isinstance(value, str) and value in words):
            return value
        ok = is_int(value) and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            raise _fail(owner, name, what, value, none)
        return int(value)

    return check


def hw_field() -> Check:
    """A check for an image size: a positive int (height = width) or a ``(height, width)`` pair
    of positive ints (a list or tuple), stored as an int or a tuple of two ints.

    Returns:
      The check; its message reads "a positive int or (height, width)".

    Example:
      >>> hw_field()([224, 160], "image_size", "Cfg")
      (224, 160)
      >>> hw_field()((224,), "image_size", "Cfg")
      Traceback (most recent call last):
      ...
      ValueError: Cfg: image_size must be a positive int or (height, width); got (224,)
    """

    def positive(v: Any) -> bool:
        return is_int(v) and v >= 1

    def check(value: Any, name: str, owner: str) -> int | tuple[int, int]:
        if isinstance(value, list | tuple) and len(value) == 2 and all(map(positive, value)):
            return int(value[0]), int(value[1])
        if positive(value):
            return int(value)
        raise _fail(owner, name, "a positive int or (height, width)", value, False)

    return check


def real_field(
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    none: bool = False,
) -> Check:
    """A check for a finite real within the given bounds, stored as a Python float.

    Args:
      gt, ge, le, lt: strict / inclusive lower and upper bounds, each optional.
      none: accept None (kept as None).

    Returns:
      The check; its message reads e.g. "a float > 0".

    Example:
      >>> real_field(gt=0)(2, "eps", "Cfg")
      2.0
    """
    what = f"a float {_bounds(ge, le, gt, lt)}".strip()

    def check(value: Any, name: str, owner: str) -> float | None:
        if none and value is None:
            return None
        ok = is_real(value) and all(
            bound is None or test(value, bound)
            for bound, test in (
                (gt, lambda v, b: v > b),
                (ge, lambda v, b: v >= b),
                (le, lambda v, b: v <= b),
                (lt, lambda v, b: v < b),
            )
        )
        if not ok:
            raise _fail(owner, name, what, value, none)
        return float(value)

    return check


def bool_field(*, none: bool = False) -> Check:
    """A check for a Python bool (not 0 / 1), or None when ``none``.

    Example:
      >>> bool_field()(True, "bias", "Cfg")
      True
    """

    def check(value: Any, name: str, owner: str) -> bool | None:
        if (none and value is None) or isinstance(value, bool):
            return value
        raise _fail(owner, name, "a bool", value, none)

    return check


def one_of(options: Collection[Any]) -> Check:
    """A check for one of ``options`` (compared with ``==``).

    Example:
      >>> one_of(("mean", "max"))("max", "pool", "Cfg")
      'max'
      >>> one_of(("mean", "max"))("min", "pool", "Cfg")
      Traceback (most recent call last):
      ...
      ValueError: Cfg: pool must be one of ['mean', 'max']; got 'min'
    """
    listed = list(options)

    def check(value: Any, name: str, owner: str) -> Any:
        if value not in options:
            raise ValueError(f"{owner}: {name} must be one of {listed}; got {value!r}")
        return value

    return check


def check_fields(obj: Any, **checks: Check) -> None:
    """Runs ``checks[name]`` on every named field of ``obj`` and stores the normalised value
    (``object.__setattr__``, so it works on frozen dataclasses), in the order given.

    Args:
      obj: the (frozen) dataclass instance; its class name prefixes every message.
      **checks: field name -> check (``int_field(...)``, ``real_field(...)``, ...).

    Raises:
      ValueError: from the first check that fails, naming the class and the field.

    Example:
      >>> class Box:
      ...     size = 3.0
      >>> box = Box()
      >>> check_fields(box, size=real_field(gt=0))
      >>> box.size
      3.0
    """
    owner = type(obj).__name__
    for name, check in checks.items():
        object.__setattr__(obj, name, check(getattr(obj, name), name, owner))
