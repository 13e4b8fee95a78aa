"""Reading Hugging Face checkpoints without torch: a NumPy safetensors reader.

``read_safetensors(file)`` memory-maps one ``.safetensors`` file; ``read_checkpoint(dir)`` reads
a ``save_pretrained`` directory (``model.safetensors`` or the shards listed in
``model.safetensors.index.json``). No torch, ``transformers`` or ``safetensors`` package.

References: the safetensors format, https://github.com/huggingface/safetensors (README,
"Format").
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}

_SAVE_HINT = (
    "load it with transformers and re-save it as safetensors: "
    "`Model.from_pretrained(path).save_pretrained(path)` (safetensors is the default; pass "
    "`safe_serialization=True` on transformers < 5)"
)


# ------------------------------------------------------------------------------ safetensors


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads one ``.safetensors`` file into NumPy arrays (memory-mapped, read-only).

    Format: an 8-byte little-endian header length n, n bytes of JSON ``{name: {"dtype",
    "shape", "data_offsets": [begin, end]}}`` (plus an optional ``"__metadata__"``), then the
    raw little-endian tensor bytes; offsets count from the end of the header.

    Args:
      path: the file.

    Returns:
      ``{name: array}`` with the stored shapes and dtypes (``BF16`` and ``F8_*`` as
      ``ml_dtypes`` types), in header order.

    Raises:
      FileNotFoundError: if the file does not exist.
      ValueError: if the file is truncated or its header is corrupt (bad JSON, unknown dtype,
        offsets outside the data or not matching the shape).

    References: https://github.com/huggingface/safetensors, README section "Format".

    Example:
      >>> import json, struct, tempfile, pathlib
      >>> import numpy as np
      >>> from pruneax.models import read_safetensors
      >>> data = np.arange(6, dtype="<f4").tobytes()
      >>> head = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})
      >>> f = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors"
      >>> _ = f.write_bytes(struct.pack("<Q", len(head)) + head.encode() + data)
      >>> read_safetensors(f)["w"].tolist()
      [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_safetensors: no file {str(path)!r}")
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(
                f"read_safetensors: {str(path)!r} is not a safetensors file: {file_size} bytes, "
                "expected an 8-byte header length first"
            )
        n = int.from_bytes(head, "little")
        if n > file_size - 8:
            raise ValueError(
                f"read_safetensors: {str(path)!r} is corrupt or truncated: header length {n} "
                f"but only {file_size - 8} bytes follow"
            )
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"read_safetensors: {str(path)!r} has a corrupt JSON header ({e})"
            ) from None
    if not isinstance(header, dict):
        raise ValueError(f"read_safetensors: {str(path)!r}: the header must be a JSON object")
    data_len = file_size - 8 - n
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if data_len else None
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_str, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(int(s) for s in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"read_safetensors: {str(path)!r}: tensor {name!r} has a malformed header entry "
                f"{info!r}; expected {{'dtype', 'shape', 'data_offsets': [begin, end]}}"
            ) from None
        if dtype_str not in SAFETENSORS_DTYPES:
            raise ValueError(
                f"read_safetensors: {str(path)!r}: tensor {name!r} has dtype {dtype_str!r}; "
                f"supported: {sorted(SAFETENSORS_DTYPES)}"
            )
        dtype = SAFETENSORS_DTYPES[dtype_str]
        nbytes = math.prod(shape) * dtype.itemsize
        if not 0 <= begin <= end <= data_len or end - begin != nbytes:
            raise ValueError(
                f"read_safetensors: {str(path)!r} is corrupt or truncated: tensor {name!r} "
                f"({dtype_str} {list(shape)}, {nbytes} bytes) has data_offsets [{begin}, {end}] "
                f"in a data section of {data_len} bytes"
            )
        if nbytes == 0:
            out[name] = np.zeros(shape, dtype)
        else:
            out[name] = data[begin:end].view(dtype).reshape(shape)
    return out


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a ``save_pretrained`` directory: ``model.safetensors`` or the shards of
    ``model.safetensors.index.json``.

    Args:
      path: the checkpoint directory.

    Returns:
      ``{name: array}`` (memory-mapped NumPy arrays).

    Raises:
      FileNotFoundError: if the directory does not exist or has no safetensors weights (with
        a hint when only ``pytorch_model.bin`` / TF / Flax weights are there), or a shard is
        missing.
      ValueError: for a corrupt file, an index without ``weight_map``, or a tensor the index
        lists but its shard lacks.

    Example:
      >>> import json, struct, tempfile, pathlib
      >>> from pruneax.models import read_checkpoint
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> head = json.dumps({"b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})
      >>> raw = struct.pack("<Q", len(head)) + head.encode() + struct.pack("<2i", 7, 9)
      >>> _ = (d / "model.safetensors").write_bytes(raw)
      >>> read_checkpoint(d)["b"].tolist()
      [7, 9]
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"read_checkpoint: {str(root)!r} is not a directory")
    single = root / "model.safetensors"
    index = root / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"read_checkpoint: {str(index)!r} is not a valid index: expected a JSON object "
                f"with a 'weight_map' {{tensor: shard file}} ({type(e).__name__}: {e})"
            ) from None
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            if not (root / shard).is_file():
                raise FileNotFoundError(
                    f"read_checkpoint: {str(index)!r} lists shard {shard!r}, which is missing"
                )
            tensors.update(read_safetensors(root / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(
                f"read_checkpoint: tensors listed in {str(index)!r} but absent from their "
                f"shards: {missing}"
            )
        return tensors
    others = [
        name
        for name in (
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
            "tf_model.h5",
            "flax_model.msgpack",
            "model.ckpt.index",
        )
        if (root / name).exists()
    ]
    found = f"; found only {others}: {_SAVE_HINT}" if others else ""
    raise FileNotFoundError(
        f"read_checkpoint: no model.safetensors or model.safetensors.index.json in "
        f"{str(root)!r}{found}"
    )
