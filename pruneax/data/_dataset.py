"""The in-memory dataset type, the validation split, and where data directories are looked for."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

DATA_DIR_ENV = "PRUNEAX_DATA_DIR"
CACHE_DIR_ENV = "PRUNEAX_CACHE_DIR"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ImageDataset:
    """An image classification dataset held in NumPy arrays (a fixed train / test split).

    Images are stored as the files store them, unscaled: ``uint8`` in ``[0, pixel_max]``
    (255 for MNIST and CIFAR-10, 16 for scikit-learn digits). Scale with
    ``images.astype(np.float32) / ds.pixel_max``. Grey images have no channel axis
    ([N, H, W]); add one with ``images[..., None]`` for convolutions (``ds.input_shape`` is
    always ``(H, W, C)``).

    Attributes:
      name: ``"mnist"``, ``"cifar10"``, ``"digits"`` or a tfds name.
      train_images: uint8 [N_train, H, W] or [N_train, H, W, C].
      train_labels: uint8 [N_train], values in ``[0, num_classes)``.
      test_images: uint8 [N_test, H, W(, C)], same H, W, C as ``train_images``.
      test_labels: uint8 [N_test].
      class_names: names of the classes, label ``i`` is ``class_names[i]``.
      pixel_max: the largest possible pixel value (the scale of the images).

    Raises:
      ValueError: if images and labels disagree in length, the arrays have the wrong rank, the
        train and test images differ in shape, or a label is outside ``[0, len(class_names))``.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    pixel_max: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.ndim not in (3, 4):
                raise ValueError(
                    f"{self.name}: {split}_images must be [N, H, W] or [N, H, W, C]; got shape "
                    f"{images.shape}"
                )
            if labels.ndim != 1 or len(labels) != len(images):
                raise ValueError(
                    f"{self.name}: {split}_labels must be [N] with N = len({split}_images) = "
                    f"{len(images)}; got shape {labels.shape}"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise ValueError(
                    f"{self.name}: {split}_labels must lie in [0, {len(self.class_names)}); got "
                    f"range [{labels.min()}, {labels.max()}]"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train and test images differ in shape: "
                f"{self.train_images.shape[1:]} vs {self.test_images.shape[1:]}"
            )

    @property
    def num_classes(self) -> int:
        """``len(class_names)``."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image (C = 1 for grey images stored as [N, H, W])."""
        shape = self.train_images.shape[1:]
        return (shape[0], shape[1], shape[2] if len(shape) == 3 else 1)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, train={self.train_images.shape} "
            f"{self.train_images.dtype}, test={self.test_images.shape} {self.test_images.dtype}, "
            f"num_classes={self.num_classes}, pixel_max={self.pixel_max})"
        )


class Split(NamedTuple):
    """A training set split into the part to train on and a held-out validation part."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def train_val_split(images: np.ndarray, labels: np.ndarray, val_size: int, seed: int) -> Split:
    """Holds out ``val_size`` random examples of a training set as a validation set.

    The LTH paper (Frankle & Carbin 2019, Appendix) holds out 5,000 of MNIST's 60,000 training
    images for early stopping: ``train_val_split(ds.train_images, ds.train_labels, 5000, seed)``.
    Which examples are held out depends only on ``seed`` and ``len(images)``; each part keeps the
    original order of its examples.

    Args:
      images: [N, ...] any array.
      labels: [N] labels (or any array with the same first dimension).
      val_size: number of validation examples, ``1 <= val_size < N``.
      seed: seed of the NumPy generator that draws the validation examples.

    Returns:
      ``Split(train_images [N - val_size, ...], train_labels, val_images [val_size, ...],
      val_labels)``.

    Raises:
      ValueError: if the lengths differ or ``val_size`` is not an int in ``[1, N)``.

    Example:
      >>> import numpy as np
      >>> from pruneax.data import train_val_split
      >>> images, labels = np.arange(10), np.arange(10) % 2
      >>> split = train_val_split(images, labels, val_size=3, seed=0)
      >>> len(split.train_images), len(split.val_images)
      (7, 3)
      >>> sorted(split.train_images.tolist() + split.val_images.tolist()) == images.tolist()
      True
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim < 1 or labels.ndim < 1 or len(images) != len(labels):
        raise ValueError(
            f"images and labels must have the same first dimension; got shapes {images.shape} "
            f"and {labels.shape}"
        )
    n = len(images)
    if isinstance(val_size, bool) or not isinstance(val_size, int | np.integer):
        raise ValueError(f"val_size must be an int (a count of examples); got {val_size!r}")
    if not 1 <= val_size < n:
        raise ValueError(f"val_size must be in [1, {n}) for {n} examples; got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    val = np.sort(perm[:val_size])
    train = np.sort(perm[val_size:])
    return Split(images[train], labels[train], images[val], labels[val])


def candidate_dirs(data_dir: str | os.PathLike[str], subdirs: tuple[str, ...]) -> list[Path]:
    """``data_dir`` itself, then ``data_dir/<sub>`` for each conventional subdirectory name."""
    root = Path(data_dir).expanduser()
    return [root, *(root / s for s in subdirs)]


def describe(path: Path) -> str:
    """``path`` and whether it exists, for error messages."""
    if path.is_dir():
        return f"{path} (directory)"
    if path.exists():
        return f"{path} (exists but is not a directory)"
    return f"{path} (does not exist)"


def how_to_provide(name: str, subdir: str) -> str:
    """The common end of every "data not found" message."""
    return (
        f"Pass the directory as data_dir (the {name} directory itself, or a parent holding "
        f"{subdir}/), or set the environment variable {DATA_DIR_ENV} to it; "
        f"load_dataset({name!r}) reads {DATA_DIR_ENV} when data_dir is None."
    )
