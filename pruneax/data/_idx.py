"""IDX files (LeCun's MNIST format) and the MNIST loader."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from pruneax.data._dataset import ImageDataset, candidate_dirs, describe, how_to_provide

# IDX type codes (third header byte) -> big-endian NumPy dtypes.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
MNIST_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions [N, rows, cols]
MNIST_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension [N]
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"{path}: corrupt gzip data ({type(e).__name__}: {e}); the file is truncated or "
            f"damaged: replace it with a fresh copy"
        ) from e


def _parse_idx(data: bytes, path: Path, magic: int | None = None) -> np.ndarray:
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header (4+ bytes)")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise ValueError(
            f"{path}: IDX magic number is {found} (0x{found:08x}), expected {magic} "
            f"(0x{magic:08x}); wrong or corrupt file"
        )
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: not an IDX file (header 0x{found:08x}: expected two zero bytes, a type "
            f"code in {sorted(_IDX_DTYPES)} and at least one dimension)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        raise ValueError(
            f"{path}: the IDX header gives dimensions {list(dims)} ({expected} bytes of data) "
            f"but {got} bytes follow it; the file is "
            f"{'truncated' if got < expected else 'longer than its header says'}: replace it"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-order copy


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one IDX file (gzipped or not; gzip is detected from the content, not the name).

    Format: a big-endian header (two zero bytes, a type code, the number of dimensions ``d``,
    then ``d`` uint32 sizes) followed by the data in C order. MNIST images have magic number
    2051 (``0x00000803``: uint8, 3 dimensions), labels 2049 (``0x00000801``).

    Args:
      path: the ``.gz`` or uncompressed file.

    Returns:
      A writable array of the stored dtype (uint8 for MNIST) and the header's shape.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: for corrupt gzip data, a malformed header, or a data length that disagrees
        with the header (truncated or padded file); the message names the file.

    References: LeCun, Cortes & Burges, "The MNIST database of handwritten digits" (IDX format).

    Example:
      >>> import pathlib, struct, tempfile
      >>> import numpy as np
      >>> from pruneax.data import read_idx
      >>> images = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)  # two 2x2 images
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = pathlib.Path(d, "images-idx3-ubyte")
      ...     _ = path.write_bytes(struct.pack(">4I", 2051, 2, 2, 2) + images.tobytes())
      ...     read_idx(path).tolist()
      [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    """
    path = Path(path)
    return _parse_idx(_read_maybe_gzip(path), path)


def _find_mnist_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def load_mnist(data_dir: str | os.PathLike[str]) -> ImageDataset:
    """Loads MNIST from the four canonical IDX files (gzipped or uncompressed).

    Looks in ``data_dir`` and then in ``data_dir/mnist`` for ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``,
    each with or without ``.gz`` (the ``.gz`` is preferred when both exist). Checks every
    header (magic 2051 for images, 2049 for labels), that the data length matches it, that
    images and labels agree in number, and that labels are digits.

    Args:
      data_dir: the directory with the four files, or a parent holding ``mnist/``.

    Returns:
      ``ImageDataset`` with ``train_images`` uint8 [60000, 28, 28], ``train_labels`` uint8
      [60000], ``test_images`` uint8 [10000, 28, 28], ``test_labels`` uint8 [10000];
      ``pixel_max=255`` (0 = background), ``class_names`` ``"0"`` to ``"9"``.

    Raises:
      FileNotFoundError: if no candidate directory has all four files (the message lists the
        directories and files looked for and how to provide them).
      ValueError: for a corrupt file (named in the message) or inconsistent counts.

    References: LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
      recognition", Proc. IEEE 1998.

    Example:
      >>> import pathlib, struct, tempfile
      >>> from pruneax.data import load_mnist
      >>> with tempfile.TemporaryDirectory() as d:  # tiny stand-ins: 2 train, 1 test image
      ...     for split, n in (("train", 2), ("t10k", 1)):
      ...         images = struct.pack(">4I", 2051, n, 28, 28) + bytes(784 * n)
      ...         _ = pathlib.Path(d, f"{split}-images-idx3-ubyte").write_bytes(images)
      ...         labels = struct.pack(">2I", 2049, n) + bytes(n)
      ...         _ = pathlib.Path(d, f"{split}-labels-idx1-ubyte").write_bytes(labels)
      ...     ds = load_mnist(d)
      >>> ds.train_images.shape, ds.test_labels.tolist(), ds.num_classes
      ((2, 28, 28), [0], 10)
    """
    tried = []
    for directory in candidate_dirs(data_dir, ("mnist",)):
        paths = {k: _find_mnist_file(directory, stem) for k, stem in MNIST_FILES.items()}
        if all(p is not None for p in paths.values()):
            break
        found = [MNIST_FILES[k] for k, p in paths.items() if p is not None]
        missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
        tried.append(
            f"  {describe(directory)}" + (f": has {found} but not {missing}" if found else "")
        )
    else:
        raise FileNotFoundError(
            "MNIST not found: looked for the four IDX files "
            + ", ".join(f"{s}[.gz]" for s in MNIST_FILES.values())
            + " in:\n"
            + "\n".join(tried)
            + "\n"
            + how_to_provide("mnist", "mnist")
        )

    arrays = {}
    for key, path in paths.items():
        magic = MNIST_IMAGES_MAGIC if key.endswith("images") else MNIST_LABELS_MAGIC
        arrays[key] = _parse_idx(_read_maybe_gzip(path), path, magic)
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise ValueError(
                f"MNIST {split}: {paths[f'{split}_images']} holds {n_images} images but "
                f"{paths[f'{split}_labels']} holds {n_labels} labels"
            )
        if n_labels and arrays[f"{split}_labels"].max() > 9:
            raise ValueError(
                f"MNIST {split}: {paths[f'{split}_labels']} has labels up to "
                f"{arrays[f'{split}_labels'].max()}; MNIST labels are 0..9"
            )
    return ImageDataset(
        name="mnist",
        class_names=tuple(str(i) for i in range(10)),
        pixel_max=255,
        **arrays,
    )
