"""``dtype="auto"``: a loaded model keeps the dtype its checkpoint was saved in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np


def checkpoint_dtype(tensors: Mapping[str, np.ndarray]) -> np.dtype:
    """The floating dtype holding most of the checkpoint's floating-point bytes (float32 if it
    has none): what ``dtype="auto"`` keeps.

    Example:
      >>> import numpy as np
      >>> checkpoint_dtype({"w": np.zeros((4, 4), np.float16), "b": np.zeros(4, np.float32)})
      dtype('float16')
    """
    sizes: dict[np.dtype, int] = {}
    for array in tensors.values():
        if jnp.issubdtype(array.dtype, jnp.floating):
            sizes[array.dtype] = sizes.get(array.dtype, 0) + array.nbytes
    return max(sizes, key=sizes.__getitem__) if sizes else np.dtype(np.float32)


def resolve_dtypes(
    dtype: Any, param_dtype: Any, tensors: Mapping[str, np.ndarray], loader: str
) -> tuple[Any, Any]:
    """``(dtype, param_dtype)`` of a loaded model: ``dtype="auto"`` is ``checkpoint_dtype``;
    ``param_dtype=None`` is ``dtype``.

    Raises:
      ValueError: naming the argument if either is not ``"auto"`` / None or a floating dtype.
    """
    if isinstance(dtype, str) and dtype == "auto":
        dtype = checkpoint_dtype(tensors)
    param_dtype = dtype if param_dtype is None else param_dtype
    for arg, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        try:
            ok = jnp.issubdtype(np.dtype(value), jnp.floating)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{loader}: {arg} must be 'auto'{' or None' if arg == 'param_dtype' else ''} "
                f"or a floating dtype (jnp.float32, jnp.bfloat16, ...); got {value!r}"
            )
    return dtype, param_dtype
