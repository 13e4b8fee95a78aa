"""Reading Hugging Face checkpoints without torch: a NumPy safetensors reader.

``read_safetensors(file)`` memory-maps one ``.safetensors`` file; ``read_checkpoint(dir)`` reads
a ``save_pretrained`` directory (``model.safetensors`` or the shards listed in
``model.safetensors.index.json``). No torch, ``transformers`` or ``safetensors`` package.

References: the safetensors format, https://github.com/huggingface/safetensors (README,
"Format").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


_MAX_HEADER = 100_000_000  # the format's own reader refuses larger headers
_MAX_DIMS = 32  # NumPy supports 64; no checkpoint tensor comes close
_MAX_BYTES = 2**64  # the format's reader computes sizes in 64-bit integers


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of ``json.loads``: refuses a key given twice in one object."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_json(raw: bytes, what: str) -> Any:
    """``raw`` parsed as UTF-8 JSON without duplicate keys; a ``ValueError`` starting with
    ``what`` otherwise (also for nesting too deep for the parser or an int literal too long)."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ValueError(f"{what} ({type(e).__name__}: {reason})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """``repr(value)`` for a message: at most 200 characters, never raising."""
    try:
        text = repr(value) if not _is_int(value) or abs(value) < 10**100 else "<huge int>"
    except (RecursionError, ValueError):
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."


def _check_metadata(metadata: Any, where: str) -> None:
    """``__metadata__`` is absent / null or a ``{str: str}`` object."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(
            f"{where}: '__metadata__' must be an object of strings; got {_short(metadata)}"
        )


def _entry(name: str, info: Any, where: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """One header entry checked: ``(dtype, shape, begin, end)``."""
    bad = f"{where}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ValueError(
            f"{bad} has a malformed header entry {_short(info)}; expected "
            "{'dtype', 'shape', 'data_offsets': [begin, end]}"
        )
    dtype_str, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_str, str) or dtype_str not in SAFETENSORS_DTYPES:
        raise ValueError(
            f"{bad} has dtype {_short(dtype_str)}; supported: {sorted(SAFETENSORS_DTYPES)}"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(_is_int(s) and 0 <= s < 2**63 for s in shape)
    ):
        raise ValueError(
            f"{bad} has shape {_short(shape)}; expected a list of at most {_MAX_DIMS} ints >= 0"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise ValueError(f"{bad} has data_offsets {_short(offsets)}; expected [begin, end] ints")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise ValueError(f"{bad} has data_offsets {_short(offsets)}; expected 0 <= begin <= end")
    dtype = SAFETENSORS_DTYPES[dtype_str]
    nbytes = dtype.itemsize
    for s in shape:
        nbytes *= s
        if nbytes >= _MAX_BYTES:
            raise ValueError(f"{bad} has shape {_short(shape)}: over 2**64 bytes")
    if end - begin != nbytes:
        raise ValueError(
            f"{where} is corrupt: tensor {name!r} ({dtype_str} {shape}, {nbytes} bytes) has "
            f"data_offsets [{_short(begin)}, {_short(end)}]"
        )
    return dtype, tuple(shape), begin, end


def _check_layout(entries: dict[str, tuple], data_len: int, where: str) -> None:
    """The tensors' byte ranges tile ``[0, data_len)``: no hole, overlap or trailing bytes."""
    position, previous = 0, None
    for name, (*_, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if end > data_len:
            raise ValueError(
                f"{where} is corrupt or truncated: tensor {name!r} has data_offsets "
                f"[{_short(begin)}, {_short(end)}] in a data section of {data_len} bytes"
            )
        if begin != position:
            kind = f"overlap with tensor {previous!r}" if begin < position else "a hole before it"
            raise ValueError(
                f"{where} is corrupt: tensor {name!r} starts at byte {begin}, expected "
                f"{position} ({kind}); tensors must tile the data section"
            )
        position, previous = end, name
    if position != data_len:
        raise ValueError(
            f"{where} is corrupt: {data_len - position} trailing bytes after the last tensor "
            f"(data section of {data_len} bytes, tensors end at {position})"
        )


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

    The header is checked as strictly as the format's own reader does: its length fits in the
    file (and in 100 MB), it is a JSON object without duplicate keys, ``"__metadata__"`` (if
    any) maps strings to strings, every entry has a known ``dtype``, a ``shape`` of ints >= 0
    and two int ``data_offsets`` with ``begin <= end`` spanning exactly the tensor's bytes, and
    the tensors tile the data section from 0 to its end without holes, overlaps or trailing
    bytes.

    Raises:
      FileNotFoundError: if the file does not exist.
      ValueError: if the file is truncated or its header is corrupt; the message names the file
        and, for a bad entry, the tensor.

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
    where = f"read_safetensors: {str(path)!r}"
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(
                f"{where} is not a safetensors file: {file_size} bytes, expected an 8-byte "
                "header length first"
            )
        n = int.from_bytes(head, "little")
        if n > file_size - 8 or n > _MAX_HEADER:
            raise ValueError(
                f"{where} is corrupt or truncated: header length {n} but only {file_size - 8} "
                f"bytes follow (at most {_MAX_HEADER} allowed)"
            )
        header = _parse_json(f.read(n), f"{where} has a corrupt JSON header")
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the header must be a JSON object; got {type(header).__name__}")
    _check_metadata(header.get("__metadata__"), where)
    data_len = file_size - 8 - n
    entries = {
        name: _entry(name, info, where) for name, info in header.items() if name != "__metadata__"
    }
    _check_layout(entries, data_len, where)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if data_len else None
    out: dict[str, np.ndarray] = {}
    for name, (dtype, shape, begin, end) in entries.items():
        if begin == end:
            out[name] = np.zeros(shape, dtype)
        else:
            out[name] = data[begin:end].view(dtype).reshape(shape)
    return out


def _weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a ``model.safetensors.index.json``: ``{tensor: shard file}``."""
    what = f"read_checkpoint: {str(index)!r} is not a valid index"
    parsed = _parse_json(index.read_bytes(), what)
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(
            f"{what}: expected a JSON object with a 'weight_map' {{tensor: shard file}}; got "
            f"{_short(weight_map if isinstance(parsed, dict) else parsed)}"
        )
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or "\0" in shard:
            raise ValueError(
                f"{what}: weight_map entry {name!r} -> {_short(shard)} is not a file name"
            )
    return weight_map


def _shard_path(root: Path, index: Path, shard: str) -> Path:
    """``root / shard``, refused unless it stays inside ``root`` (after resolving ``..`` and
    symlinks). A symlink into the ``blobs`` folder of a Hugging Face cache repository (the
    layout ``snapshot_download`` makes: ``<repo>/snapshots/<rev>/<file>`` ->
    ``<repo>/blobs/<sha>``) is allowed."""
    base = root.resolve()
    file = base / shard
    target = file.resolve()
    inside = [base]
    if base.parent.name == "snapshots":
        inside.append(base.parent.parent / "blobs")
    lexical = Path(os.path.normpath(file))
    if (
        Path(shard).is_absolute()
        or not lexical.is_relative_to(base)
        or not any(target.is_relative_to(d) for d in inside)
    ):
        raise ValueError(
            f"read_checkpoint: {str(index)!r} lists shard {shard!r}, which is outside the "
            f"checkpoint directory {str(base)!r} (resolves to {str(target)!r}); shards must be "
            "files inside it"
        )
    if not file.is_file():
        raise FileNotFoundError(
            f"read_checkpoint: {str(index)!r} lists shard {shard!r}, which is missing"
        )
    return file


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
      ValueError: for a corrupt file, an index that is not a JSON object with a ``weight_map``
        of file names, a shard outside the checkpoint directory (an absolute path, ``..`` or a
        symlink leading out of it), a tensor stored in two shards, or a tensor the index lists
        but its shard lacks.

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
        weight_map = _weight_map(index)
        tensors: dict[str, np.ndarray] = {}
        origin: dict[str, str] = {}
        for shard in sorted(set(weight_map.values())):
            file = _shard_path(root, index, shard)
            for name, array in read_safetensors(file).items():
                if name in origin:
                    raise ValueError(
                        f"read_checkpoint: tensor {name!r} is stored twice, in shards "
                        f"{origin[name]!r} and {shard!r} of {str(root)!r}"
                    )
                origin[name] = shard
                tensors[name] = array
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
