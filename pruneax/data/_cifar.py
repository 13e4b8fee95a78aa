"""CIFAR-10 from class-folder images, or from a tarball of them extracted once into a cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pruneax.data._dataset import (
    CACHE_DIR_ENV,
    ImageDataset,
    candidate_dirs,
    describe,
    how_to_provide,
)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_TARBALL = "cifar10-jpeg.tar.gz"
_SUBDIRS = ("cifar10-jpeg", "cifar10")
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".tif", ".tiff"})
_COMPLETE = ".complete"


def default_cache_dir() -> Path:
    """``$PRUNEAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/pruneax``, else ``~/.cache/pruneax``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pruneax"


def _has_splits(directory: Path) -> bool:
    return (directory / "train").is_dir() and (directory / "test").is_dir()


def _split_root(directory: Path, tarball: Path) -> Path:
    """The folder holding ``train/`` and ``test/``: the extraction dir or its only subfolder."""
    if _has_splits(directory):
        return directory
    subdirs = [p for p in directory.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and _has_splits(subdirs[0]):
        return subdirs[0]
    raise ValueError(
        f"{tarball}: the archive holds no train/ and test/ folders (extracted to {directory}); "
        f"expected train/<class>/*.jpg and test/<class>/*.jpg"
    )


def _safe_extract(archive: tarfile.TarFile, destination: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
        archive.extractall(destination, filter="data")
        return
    for member in archive.getmembers():  # the same guarantees, checked by hand
        parts = Path(member.name).parts
        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
            raise tarfile.TarError(f"refusing to extract unsafe member {member.name!r}")
    archive.extractall(destination)


def extract_once(tarball: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Extracts ``tarball`` into ``<cache>/<name>-<md5 prefix>/`` unless already done.

    The cache key is the archive's MD5, so a changed archive gets a fresh folder. Extraction
    goes to a temporary folder that is renamed into place when complete, so an interrupted
    run never leaves a half-extracted cache behind. Members are extracted with tarfile's
    ``"data"`` filter (no absolute paths, links out of the folder or device files).

    Returns:
      The folder holding ``train/`` and ``test/``.

    Raises:
      ValueError: if the archive is corrupt or the cache folder cannot be written.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    with open(tarball, "rb") as f:
        digest = hashlib.file_digest(f, "md5").hexdigest()
    stem = tarball.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    target = root / f"{stem}-{digest[:12]}"
    if (target / _COMPLETE).is_file():
        return _split_root(target, tarball)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=root))
    except OSError as e:
        raise ValueError(
            f"cannot create the cache folder {root} to extract {tarball} ({e}); pass cache_dir "
            f"or set {CACHE_DIR_ENV} to a writable folder, or extract the archive yourself and "
            f"pass the folder holding train/ and test/"
        ) from e
    try:
        with tarfile.open(tarball, "r:*") as archive:
            _safe_extract(archive, tmp)
        (tmp / _COMPLETE).write_text(f"{tarball.resolve()}\nmd5 {digest}\n")
        if target.exists():  # a stale partial folder, or another process won the race
            if (target / _COMPLETE).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return _split_root(target, tarball)
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"{tarball}: cannot extract into {root} ({type(e).__name__}: {e}); the archive is "
            f"corrupt or the cache folder is not writable (set cache_dir or {CACHE_DIR_ENV})"
        ) from e
    return _split_root(target, tarball)


def _decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from e
    if rgb.size != (size[1], size[0]):
        raise ValueError(
            f"{path}: image is {rgb.size[0]}x{rgb.size[1]} (width x height), expected "
            f"{size[1]}x{size[0]}"
        )
    return np.asarray(rgb)


def read_class_folders(
    split_dir: Path,
    class_names: Sequence[str],
    size: tuple[int, int],
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes ``split_dir/<class>/*`` images; label = index of ``<class>`` in ``class_names``.

    Image files are those with a suffix in ``_IMAGE_SUFFIXES`` (other files and hidden files are
    ignored), read in sorted order per class. Every image is converted to RGB.

    Returns:
      images uint8 [N, H, W, 3], labels uint8 [N] (grouped by class, in class order).

    Raises:
      FileNotFoundError: if a class folder is missing.
      ValueError: for a folder not in ``class_names``, an empty class, an undecodable image or
        an image of another size.
    """
    try:
        from PIL import Image  # noqa: F401
    except ImportError as e:
        raise ImportError("reading image folders needs Pillow: pip install pillow") from e
    missing = [c for c in class_names if not (split_dir / c).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{split_dir}: missing class folders {missing}; expected one folder per class: "
            f"{list(class_names)}"
        )
    unknown = sorted(
        p.name
        for p in split_dir.iterdir()
        if p.is_dir() and p.name not in class_names and not p.name.startswith(".")
    )
    if unknown:
        raise ValueError(
            f"{split_dir}: unexpected folders {unknown}; class folders must be exactly "
            f"{list(class_names)}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        found = sorted(
            p
            for p in (split_dir / name).iterdir()
            if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not found:
            raise ValueError(
                f"{split_dir / name}: no image files (suffixes {sorted(_IMAGE_SUFFIXES)})"
            )
        files += found
        labels += [label] * len(found)
    threads = num_threads or min(8, os.cpu_count() or 1)
    images = np.empty((len(files), size[0], size[1], 3), np.uint8)
    with ThreadPoolExecutor(threads) as pool:
        for i, image in enumerate(pool.map(lambda p: _decode(p, size), files)):
            images[i] = image
    return images, np.asarray(labels, np.uint8)


def load_cifar10(
    data_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
) -> ImageDataset:
    """Loads CIFAR-10 from class-folder images, or from ``cifar10-jpeg.tar.gz``.

    Looks in ``data_dir``, ``data_dir/cifar10-jpeg`` and ``data_dir/cifar10``, in that order,
    for ``train/<class>/*`` and ``test/<class>/*`` image folders (PNG, JPEG, ...; class folders
    ``airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck``, label = that
    order). If none has them, the first folder holding ``cifar10-jpeg.tar.gz`` is used: the
    archive is extracted once into ``<cache_dir>/cifar10-jpeg-<md5 prefix>/`` (default
    ``$PRUNEAX_CACHE_DIR`` or ``~/.cache/pruneax``; never beside the archive, which may be
    read-only) and read from there on later calls. Images are decoded with Pillow.

    The shared copy (``cifar10-jpeg.tar.gz``) is JPEG-compressed, i.e. lossy (quality ~75,
    median PSNR ~30 dB): it is the real CIFAR-10 split, but absolute accuracies on it are about
    2 points below published CIFAR-10 numbers; compare methods on it, not with papers.

    Args:
      data_dir: the CIFAR-10 folder, or a parent holding ``cifar10-jpeg/`` or ``cifar10/``.
      cache_dir: where the archive is extracted (default: see above).
      num_threads: decoding threads (default ``min(8, cpu_count)``).

    Returns:
      ``ImageDataset`` with ``train_images`` uint8 [50000, 32, 32, 3] (RGB), ``train_labels``
      uint8 [50000], ``test_images`` uint8 [10000, 32, 32, 3], ``test_labels`` uint8 [10000]
      for the full dataset (fewer if the folders hold fewer); ``pixel_max=255``.

    Raises:
      FileNotFoundError: if neither class folders nor the archive are found (the message lists
        what was looked for where, and how to provide it), or a class folder is missing.
      ValueError: for a corrupt archive or image, an image that is not 32x32, an empty class
        or an unexpected folder.
      ImportError: if Pillow is not installed.

    References: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.

    Example:
      >>> import pathlib, tempfile
      >>> from PIL import Image
      >>> from pruneax.data import CIFAR10_CLASSES, load_cifar10
      >>> with tempfile.TemporaryDirectory() as d:  # one black 32x32 PNG per class and split
      ...     for split in ("train", "test"):
      ...         for name in CIFAR10_CLASSES:
      ...             pathlib.Path(d, split, name).mkdir(parents=True)
      ...             Image.new("RGB", (32, 32)).save(pathlib.Path(d, split, name, "0.png"))
      ...     ds = load_cifar10(d)
      >>> ds.train_images.shape, ds.test_labels.tolist()[:3], ds.class_names[1]
      ((10, 32, 32, 3), [0, 1, 2], 'automobile')
    """
    candidates = candidate_dirs(data_dir, _SUBDIRS)
    root = next((d for d in candidates if _has_splits(d)), None)
    if root is None:
        tarball = next(
            (d / CIFAR10_TARBALL for d in candidates if (d / CIFAR10_TARBALL).is_file()), None
        )
        if tarball is None:
            raise FileNotFoundError(
                "CIFAR-10 not found: looked for train/<class>/ and test/<class>/ image folders, "
                f"or {CIFAR10_TARBALL}, in:\n"
                + "\n".join(f"  {describe(d)}" for d in candidates)
                + f"\nClass folders: {', '.join(CIFAR10_CLASSES)}. "
                + how_to_provide("cifar10", "cifar10-jpeg")
            )
        root = extract_once(tarball, cache_dir)
    train = read_class_folders(root / "train", CIFAR10_CLASSES, (32, 32), num_threads)
    test = read_class_folders(root / "test", CIFAR10_CLASSES, (32, 32), num_threads)
    return ImageDataset(
        name="cifar10",
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
        class_names=CIFAR10_CLASSES,
        pixel_max=255,
    )
