"""Writing safetensors files without torch or the ``safetensors`` package, atomically.

``write_safetensors(path, tensors)`` is the inverse of ``read_safetensors``: every dtype the
reader knows (``bfloat16`` and the float8 types through ``ml_dtypes``) round-trips bit for bit,
which ``np.savez`` cannot do for ``bfloat16`` (it stores the raw void type ``|V2``).

References: the safetensors format, https://github.com/huggingface/safetensors (README,
"Format"): an 8-byte little-endian header length, a JSON header (padded with spaces to a
multiple of 8 bytes, as the reference writer does), then the tensors' bytes in header order.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pruneax.models._shared.checkpoint import SAFETENSORS_DTYPES

_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes ``tensors`` to the safetensors file ``path`` (a temporary file, then
    ``os.replace``: a crash never leaves half a file).

    Args:
      path: the file to write (its folder is created if needed).
      tensors: ``{name: array}`` (NumPy or JAX arrays, or anything ``np.asarray`` takes) of a
        dtype safetensors stores: float64/32/16, bfloat16, float8 e4m3fn / e5m2, int64..8,
        uint64..8, bool. Names are non-empty strings other than ``"__metadata__"``.
      metadata: optional ``{str: str}`` stored under ``"__metadata__"``.

    Returns:
      The path.

    Raises:
      ValueError: naming the tensor for a bad name or a dtype safetensors cannot store, or for
        metadata that is not a mapping of strings.

    Example:
      >>> import pathlib, tempfile
      >>> import ml_dtypes, numpy as np
      >>> from pruneax.models import read_safetensors, write_safetensors
      >>> x = np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16)
      >>> f = write_safetensors(pathlib.Path(tempfile.mkdtemp()) / "m.safetensors", {"x": x})
      >>> y = read_safetensors(f)["x"]
      >>> y.dtype == x.dtype, y.tolist() == x.tolist()
      (True, True)
    """
    if not isinstance(tensors, Mapping):
        raise ValueError(f"write_safetensors: tensors must be a mapping; got {type(tensors)}")
    if metadata is not None and (
        not isinstance(metadata, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise ValueError("write_safetensors: metadata must be a mapping of str to str")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(
                f"write_safetensors: tensor name {name!r} must be a non-empty string other "
                "than '__metadata__'"
            )
        array = np.asarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        kind = _DTYPE_NAMES.get(np.dtype(dtype))
        if kind is None:
            raise ValueError(
                f"write_safetensors: tensor {name!r} has dtype {array.dtype}, which safetensors "
                f"cannot store; supported: {sorted(SAFETENSORS_DTYPES)}"
            )
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        header[name] = {
            "dtype": kind,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        arrays.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return atomic_write(path, [len(raw).to_bytes(8, "little"), raw, *arrays])


def atomic_write(path: str | os.PathLike, chunks: list[bytes]) -> Path:
    """Writes the byte ``chunks`` to ``path`` through a temporary file in the same folder and
    ``os.replace`` (created folders included); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
