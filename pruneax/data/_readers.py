"""scikit-learn digits, tfds data sources, and ``load_dataset`` (choose a reader by name)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pruneax.data._cifar import CIFAR10_TARBALL, load_cifar10
from pruneax.data._dataset import DATA_DIR_ENV, ImageDataset
from pruneax.data._idx import MNIST_FILES, load_mnist

DATASETS: tuple[str, ...] = ("cifar10", "digits", "mnist")
DIGITS_TEST_SIZE = 360


def load_digits() -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), with a fixed split by index.

    The last 360 images (ceil(20%)) are the test set, the first 1,437 the training set. The
    set is stored roughly in cycles of 0..9, so both parts hold every class in about equal
    numbers (train 141-146 per class, test 33-37). No download: the data ships inside the
    scikit-learn wheel.

    Returns:
      ``ImageDataset`` with ``train_images`` uint8 [1437, 8, 8], ``train_labels`` uint8 [1437],
      ``test_images`` uint8 [360, 8, 8], ``test_labels`` uint8 [360]. Pixels are counts 0..16
      (each is the number of set pixels in a 4x4 block of the original 32x32 bitmap), so
      ``pixel_max=16``: scale with ``images / 16``, not ``/ 255``.

    Raises:
      ImportError: if scikit-learn is not installed.

    References: Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI, 1998.

    Example:
      >>> from pruneax.data import load_digits
      >>> ds = load_digits()
      >>> ds.train_images.shape, ds.test_images.shape, ds.pixel_max
      ((1437, 8, 8), (360, 8, 8), 16)
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn (it ships the data): pip install scikit-learn"
        ) from e
    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)
    if not np.array_equal(images, bunch.images):  # pragma: no cover - guards the cast
        raise ValueError("scikit-learn digits are expected to be integers 0..16")
    labels = bunch.target.astype(np.uint8)
    n_train = len(images) - DIGITS_TEST_SIZE
    return ImageDataset(
        name="digits",
        train_images=images[:n_train],
        train_labels=labels[:n_train],
        test_images=images[n_train:],
        test_labels=labels[n_train:],
        class_names=tuple(str(i) for i in range(10)),
        pixel_max=16,
    )


def _tfds_split(source: Any, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    keys = list(range(len(source)))
    getitems = getattr(source, "__getitems__", None)  # tfds' batched read, when available
    records = list(getitems(keys)) if callable(getitems) else [source[i] for i in keys]
    if not records:
        raise ValueError(f"tfds {name!r} split {split!r} is empty")
    first = records[0]
    if not (isinstance(first, dict) and "image" in first and "label" in first):
        got = sorted(first) if isinstance(first, dict) else type(first).__name__
        raise ValueError(
            f"tfds {name!r} split {split!r}: expected records with 'image' and 'label' features; "
            f"got {got}"
        )
    images = np.stack([np.asarray(r["image"]) for r in records])
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]  # grey images as [N, H, W], like load_mnist
    labels = np.asarray([r["label"] for r in records])
    if labels.min() >= 0 and labels.max() < 256:
        labels = labels.astype(np.uint8)
    return images, labels


def load_tfds(name: str, data_dir: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Loads a *prepared* TensorFlow Datasets image dataset through ``tfds.data_source``.

    Uses random-access ``tfds.data_source(name, data_dir=..., download=False)`` (ArrayRecord
    files; no TensorFlow graph), reads the ``train`` and ``test`` splits into memory and
    takes the ``image`` and ``label`` features. Nothing is downloaded: machines without
    internet need the dataset prepared beforehand (``tfds build NAME``), or the standard
    files with ``load_dataset`` / ``load_mnist`` / ``load_cifar10`` instead.

    Args:
      name: a tfds name, e.g. ``"mnist"``, ``"cifar10"``, ``"fashion_mnist"``.
      data_dir: the tfds data folder (default: tfds' own, ``~/tensorflow_datasets``).

    Returns:
      ``ImageDataset``; images as tfds stores them (grey [N, H, W, 1] become [N, H, W]),
      labels uint8 when they fit, ``class_names`` from the label feature when available,
      ``pixel_max=255`` for uint8 images (else 1).

    Raises:
      ImportError: if ``tensorflow_datasets`` is not installed (the message says how to read
        the standard files instead).
      FileNotFoundError: if the dataset is not prepared under ``data_dir``.
      ValueError: if a split is missing or the records have no image / label.

    References: TensorFlow Datasets, https://www.tensorflow.org/datasets (``tfds.data_source``).

    Example:
      >>> from pruneax.data import load_tfds
      >>> # skipped: needs the data prepared by `tfds build mnist`, a download (no offline form)
      >>> ds = load_tfds("mnist")  # doctest: +SKIP
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            f"load_tfds({name!r}) needs tensorflow_datasets, which is not installed "
            f"(pip install tensorflow-datasets array_record, then prepare the data with "
            f"`tfds build {name}` on a machine with internet). Without it, read the standard "
            f"files instead: load_dataset('mnist' | 'cifar10', data_dir) with the MNIST IDX files "
            f"({', '.join(MNIST_FILES.values())}, .gz or not) in DIR/mnist/, or CIFAR-10 class "
            f"folders train/<class>/, test/<class>/ or {CIFAR10_TARBALL} in DIR/cifar10-jpeg/; "
            f"DIR can also come from {DATA_DIR_ENV}."
        ) from e
    kwargs = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
    try:
        sources = tfds.data_source(name, download=False, **kwargs)
    except Exception as e:  # tfds raises assorted types for "not prepared"
        where = os.fspath(data_dir) if data_dir is not None else "tfds' default data_dir"
        raise FileNotFoundError(
            f"tfds dataset {name!r} is not prepared in {where} ({type(e).__name__}: {e}). "
            f"Prepare it with `tfds build {name}` (needs internet) and pass that data_dir, or "
            f"use load_dataset with the standard files (see load_dataset's docstring)."
        ) from e
    missing = [s for s in ("train", "test") if s not in sources]
    if missing:
        raise ValueError(
            f"tfds {name!r} has splits {sorted(sources)}; load_tfds needs 'train' and 'test' "
            f"(missing {missing})"
        )
    train_x, train_y = _tfds_split(sources["train"], name, "train")
    test_x, test_y = _tfds_split(sources["test"], name, "test")
    try:
        class_names = tuple(sources["train"].dataset_info.features["label"].names)
    except (AttributeError, KeyError, TypeError):
        class_names = ()
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    if len(class_names) < num_classes:
        class_names = tuple(str(i) for i in range(num_classes))
    return ImageDataset(
        name=name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        class_names=class_names,
        pixel_max=255 if train_x.dtype == np.uint8 else 1,
    )


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Loads ``"mnist"``, ``"cifar10"`` or ``"digits"`` by name, from standard files.

    Expected layout (``DIR`` = ``data_dir``, else ``$PRUNEAX_DATA_DIR``)::

        DIR/mnist/train-images-idx3-ubyte.gz   (and train-labels-idx1-ubyte.gz,
                                                t10k-images-idx3-ubyte.gz,
                                                t10k-labels-idx1-ubyte.gz; .gz optional)
        DIR/cifar10-jpeg/cifar10-jpeg.tar.gz   (or train/<class>/*.png|jpg, test/<class>/*)

    ``DIR`` may also be the dataset folder itself (``DIR = .../mnist``). ``digits`` needs no
    files (scikit-learn ships it) and ignores ``data_dir``.

    Args:
      name: ``"mnist"``, ``"cifar10"`` or ``"digits"`` (case-insensitive).
      data_dir: the data folder; ``None`` reads ``$PRUNEAX_DATA_DIR``.

    Returns:
      ``ImageDataset``: see ``load_mnist``, ``load_cifar10`` and ``load_digits``.

    Raises:
      ValueError: for an unknown name, or corrupt data (the message names the file).
      FileNotFoundError: if neither ``data_dir`` nor ``$PRUNEAX_DATA_DIR`` is given, or the
        files are not there (the message lists the paths and files looked for, and how to
        provide them).

    Example:
      >>> from pruneax.data import load_dataset
      >>> ds = load_dataset("digits")  # needs no files; "mnist" / "cifar10" read data_dir
      >>> ds.name, ds.num_classes, ds.input_shape
      ('digits', 10, (8, 8, 1))
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    if key == "digits":
        return load_digits()
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
        if data_dir is None:
            layout = (
                "mnist/ (the four MNIST IDX files: " + ", ".join(MNIST_FILES.values()) + ")"
                if key == "mnist"
                else f"cifar10-jpeg/ ({CIFAR10_TARBALL}, or train/<class>/ and test/<class>/ "
                "image folders)"
            )
            raise FileNotFoundError(
                f"load_dataset({key!r}) needs the dataset's files and no folder was given: pass "
                f"data_dir, or set the environment variable {DATA_DIR_ENV}, to a folder holding "
                f"{layout}. ('digits' needs no files.)"
            )
    data_dir = Path(data_dir)
    return load_mnist(data_dir) if key == "mnist" else load_cifar10(data_dir)
