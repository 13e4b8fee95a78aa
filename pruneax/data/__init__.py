"""Dataset readers: standard on-disk formats into NumPy arrays (no download, no TensorFlow).

- ``load_mnist``: the four MNIST IDX files (gzipped or not); ``read_idx`` for one IDX file.
- ``load_cifar10``: CIFAR-10 class-folder images, or ``cifar10-jpeg.tar.gz`` (extracted once
  into a cache folder).
- ``load_digits``: scikit-learn's bundled 8x8 digits (no files needed).
- ``load_tfds``: a prepared TensorFlow Datasets dataset via ``tfds.data_source``, if installed.
- ``load_dataset(name, data_dir)``: one of ``DATASETS`` by name; ``data_dir`` defaults to
  ``$PRUNEAX_DATA_DIR`` (``DATA_DIR_ENV``).
- ``train_val_split``: a seeded validation hold-out (the LTH's 5,000 MNIST images).

Every loader returns an ``ImageDataset`` (uint8 images and labels, fixed train / test split).
"""

from pruneax.data._cifar import CIFAR10_CLASSES, load_cifar10
from pruneax.data._dataset import DATA_DIR_ENV, ImageDataset, Split, train_val_split
from pruneax.data._idx import load_mnist, read_idx
from pruneax.data._readers import DATASETS, load_dataset, load_digits, load_tfds

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DATA_DIR_ENV",
    "ImageDataset",
    "Split",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_tfds",
    "read_idx",
    "train_val_split",
]
