"""Reading a PyTorch ``torch.save`` state dict without torch.

``torch.save`` (since PyTorch 1.6) writes a zip archive: ``<name>/data.pkl`` pickles the state
dict, each tensor as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
whose storage is a persistent id ``("storage", torch.FloatStorage, key, location, numel)``; the
storage's raw bytes are ``<name>/data/<key>``, in the byte order of ``<name>/byteorder``
(little-endian when absent). ``read_torch_state_dict`` reads that format with a restricted
unpickler: only the few globals a plain tensor state dict needs are resolved, to stand-ins
written here, and any other global is refused by name without being imported or called.

References: PyTorch's ``torch/serialization.py`` (``_save``, ``_load``) and
``torch/_utils.py`` (``_rebuild_tensor_v2``), read for the format only; Python's ``pickle``
documentation, "Restricting Globals".
"""

from __future__ import annotations

import collections
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

# torch's typed storage classes, as pickled -> the NumPy dtype of their elements (native order).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only its element dtype is used."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Storage:
    """One storage: its elements as a flat NumPy array (shared by every view of it)."""

    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> np.ndarray:
    """``_rebuild_tensor_v2``: the ``size`` / ``stride`` view at ``offset`` of ``storage``,
    copied to a contiguous array (``requires_grad``, hooks and metadata are ignored)."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor's storage must be a persistent storage; got {type(storage)}")
    ints = lambda v: isinstance(v, tuple) and all(isinstance(i, int) for i in v)
    if not (isinstance(offset, int) and ints(size) and ints(stride) and len(size) == len(stride)):
        raise ValueError(f"bad tensor layout: offset {offset!r}, size {size!r}, stride {stride!r}")
    flat = storage.array
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise ValueError(f"bad tensor layout: offset {offset}, size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= flat.size:
        raise ValueError(
            f"tensor view (offset {offset}, size {size}, stride {stride}) reaches element {last} "
            f"of a storage of {flat.size}"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True, order="C")


# (module, name) -> the stand-in the unpickler returns for it.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, order: str, where: str):
        super().__init__(file)
        self.archive, self.prefix, self.order, self.where = archive, prefix, order, where
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise ValueError(
            f"{self.where}: the pickle needs {module}.{name}, which a plain tensor state dict "
            f"does not use; refused (never imported). Allowed: "
            f"{sorted(f'{m}.{n}' for m, n in _ALLOWED)}"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        ok = isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
        if not ok or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str):
            raise ValueError(f"{self.where}: unsupported persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            member = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(member)
            except KeyError:
                raise ValueError(f"{self.where}: storage {member!r} is missing") from None
            size = kind.dtype.itemsize
            if len(raw) % size or (isinstance(numel, int) and len(raw) // size < numel):
                raise ValueError(
                    f"{self.where}: storage {member!r} has {len(raw)} bytes; expected {numel} "
                    f"{kind.name} elements of {size} bytes"
                )
            array = np.frombuffer(raw, kind.dtype)
            if self.order != sys.byteorder:
                array = array.byteswap()
            self.storages[key] = _Storage(array)
        return self.storages[key]


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state dict saved by ``torch.save``, as NumPy arrays, without
    torch.

    Reads the zip format of ``torch.save`` (PyTorch >= 1.6). The pickle is read by a restricted
    unpickler that resolves only ``torch._utils._rebuild_tensor_v2``,
    ``collections.OrderedDict`` and the ``torch.<dtype>Storage`` classes, to stand-ins (nothing
    from torch is imported or run). Views are honoured (storage offset and strides: a transposed
    or sliced tensor, several tensors sharing one storage); every returned array is a C-ordered
    copy of its own.

    Args:
      path: the ``.pt`` / ``.pth`` / ``.bin`` file.

    Returns:
      ``{name: array}`` in the file's order; dtypes float32 / float64 / float16 / bfloat16
      (``ml_dtypes``) / int64 / int32 / int16 / int8 / uint8 / bool.

    Raises:
      FileNotFoundError: if ``path`` is not a file.
      ValueError: if the file is not a ``torch.save`` zip archive (e.g. the legacy format),
        needs a global other than the allowed ones (named in the message), has a missing or
        short storage, an out-of-range view, or is not a flat ``{str: tensor}`` dict.

    Example:
      >>> from pruneax.models import read_torch_state_dict
      >>> read_torch_state_dict("no/such/file.pt")
      Traceback (most recent call last):
      FileNotFoundError: read_torch_state_dict: 'no/such/file.pt' is not a file
    """
    where = f"read_torch_state_dict: {str(path)!r}"
    if not Path(path).is_file():
        raise FileNotFoundError(f"read_torch_state_dict: {str(path)!r} is not a file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{where} is not a torch.save zip archive (the legacy format of PyTorch < 1.6 and "
            "other pickles are not supported)"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{where}: expected one '<name>/data.pkl' member; found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        order = "little"
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise ValueError(f"{where}: byteorder must be 'little' or 'big'; got {order!r}")
        with archive.open(pickles[0]) as file:
            try:
                state = _Unpickler(file, archive, prefix, order, where).load()
            except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as e:
                raise ValueError(f"{where}: corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{where}: expected a state dict (a dict); got {type(state).__name__}")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise ValueError(f"{where}: entries that are not str -> tensor: {bad[:5]}")
    return dict(state)
