"""pruneax.data: MNIST (IDX), CIFAR-10 (class folders / tarball), digits, tfds, load_dataset.

Real data is read from ``<repo>/../shared/data`` (never copied into the repo); tests that need
it skip when it is absent. Everything else runs on small files written into ``tmp_path``.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import struct
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

import pruneax.data as D

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_mnist = pytest.mark.skipif(
    not (SHARED / "mnist").is_dir(),
    reason=f"shared MNIST not found at {SHARED / 'mnist'} (expected <repo>/../shared/data/mnist)",
)
needs_cifar = pytest.mark.skipif(
    not (SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").is_file(),
    reason=f"shared CIFAR-10 tarball not found under {SHARED / 'cifar10-jpeg'}",
)

PUBLIC = [
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

# Published MD5s of the decompressed MNIST files (shared/data/README.md).
MNIST_MD5 = {
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests see neither the user's data folder nor their cache folder."""
    monkeypatch.delenv("PRUNEAX_DATA_DIR", raising=False)
    monkeypatch.delenv("PRUNEAX_CACHE_DIR", raising=False)


# ------------------------------------------------------------------------------ public surface


def test_all_is_pinned():
    assert list(D.__all__) == PUBLIC


def test_no_unlisted_public_names():
    public = {n for n in dir(D) if not n.startswith("_")}
    assert public == set(PUBLIC), public ^ set(PUBLIC)


@pytest.mark.parametrize(
    "name", ["load_cifar10", "load_dataset", "load_digits", "load_mnist", "load_tfds", "read_idx"]
)
def test_loaders_are_documented(name):
    obj = getattr(D, name)
    doc = inspect.getdoc(obj)
    for section in ("Returns:", "Raises:"):
        assert section in doc, f"{name}'s docstring has no {section}"
    assert obj.__module__.startswith("pruneax.data._")


def test_cifar_docstring_says_jpeg_is_lossy():
    assert "lossy" in inspect.getdoc(D.load_cifar10)


# ------------------------------------------------------------------------------ synthetic MNIST


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0800 | ndim unless given)."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, n_train=6, n_test=4, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


def check_synthetic(ds: D.ImageDataset, arrays: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(ds.train_images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_images, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "uncompressed"])
def test_load_mnist_synthetic(tmp_path, gz):
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    ds = D.load_mnist(tmp_path / "mnist")
    check_synthetic(ds, arrays)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.uint8
    assert ds.train_images.flags.writeable
    assert ds.input_shape == (28, 28, 1) and ds.pixel_max == 255 and ds.num_classes == 10
    check_synthetic(D.load_mnist(tmp_path), arrays)  # the parent folder works too


def test_load_dataset_reads_env_var_and_parent(tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("PRUNEAX_DATA_DIR", str(tmp_path))
    check_synthetic(D.load_dataset("mnist"), arrays)
    check_synthetic(D.load_dataset("MNIST", tmp_path / "mnist"), arrays)


def test_read_idx_other_dtypes(tmp_path):
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    path = tmp_path / "x.idx"
    path.write_bytes(
        struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 3) + array.tobytes()
    )
    out = D.read_idx(path)
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))
    assert out.dtype == np.int32 and out.dtype.isnative


# ------------------------------------------------------------------------------ corrupt MNIST


def _corrupt(tmp_path: Path, name: str, data: bytes) -> Path:
    write_mnist(tmp_path)
    for stale in tmp_path.glob(f"{name}*"):
        stale.unlink()
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_gzip_is_reported(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    path = _corrupt(tmp_path, "t10k-images-idx3-ubyte.gz", data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{path.name}: corrupt gzip data.*replace"):
        D.load_mnist(tmp_path)


def test_garbled_gzip_is_reported(tmp_path):
    data = bytearray(gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8).reshape(-1, 1))))
    data[20:60] = bytes(40)
    path = _corrupt(tmp_path, "t10k-labels-idx1-ubyte.gz", bytes(data))
    with pytest.raises(ValueError, match=rf"{path.name}: corrupt gzip"):
        D.load_mnist(tmp_path)


def test_truncated_idx_is_reported(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    path = _corrupt(tmp_path, "t10k-images-idx3-ubyte", data[:-100])
    with pytest.raises(ValueError, match=rf"{path.name}.*\[4, 28, 28\].*3136 bytes.*truncated"):
        D.load_mnist(tmp_path)


def test_too_long_idx_is_reported(tmp_path):
    data = idx_bytes(np.zeros(4, np.uint8)) + b"\0"
    _corrupt(tmp_path, "t10k-labels-idx1-ubyte.gz", gzip.compress(data))
    with pytest.raises(ValueError, match="longer than its header says"):
        D.load_mnist(tmp_path)


def test_wrong_magic_is_reported(tmp_path):
    labels = idx_bytes(np.zeros(4, np.uint8))  # magic 2049 where images (2051) are expected
    _corrupt(tmp_path, "t10k-images-idx3-ubyte.gz", gzip.compress(labels))
    with pytest.raises(ValueError, match=r"magic number is 2049.*expected 2051"):
        D.load_mnist(tmp_path)


def test_not_idx_at_all_is_reported(tmp_path):
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(_corrupt(tmp_path, "x", b"<html>404 not found</html>"))
    with pytest.raises(ValueError, match="too short"):
        D.read_idx(_corrupt(tmp_path, "y", b"\0\0"))


def test_count_mismatch_is_reported(tmp_path):
    _corrupt(tmp_path, "t10k-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(np.zeros(3))))
    with pytest.raises(ValueError, match=r"holds 4 images but .*t10k-labels.* holds 3 labels"):
        D.load_mnist(tmp_path)


def test_bad_labels_are_reported(tmp_path):
    _corrupt(tmp_path, "t10k-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(np.full(4, 10))))
    with pytest.raises(ValueError, match="labels up to 10"):
        D.load_mnist(tmp_path)


def test_missing_mnist_file_is_reported(tmp_path):
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        D.load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert "has ['train-images-idx3-ubyte'," in message
    assert "but not ['train-labels-idx1-ubyte']" in message
    assert f"{tmp_path} (directory)" in message and "PRUNEAX_DATA_DIR" in message


def test_no_data_dir_is_reported():
    with pytest.raises(FileNotFoundError, match=r"PRUNEAX_DATA_DIR.*t10k-labels-idx1-ubyte"):
        D.load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match=r"PRUNEAX_DATA_DIR.*cifar10-jpeg\.tar\.gz"):
        D.load_dataset("cifar10")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"'imagenet'.*\['cifar10', 'digits', 'mnist'\]"):
        D.load_dataset("imagenet")


# ------------------------------------------------------------------------------ real MNIST


@needs_mnist
def test_mnist_test_labels_md5_is_the_published_one():
    data = gzip.decompress((SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.md5(data).hexdigest() == MNIST_MD5["t10k-labels-idx1-ubyte"]


@needs_mnist
@pytest.mark.parametrize(
    "name",
    [
        "t10k-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        pytest.param("train-images-idx3-ubyte", marks=pytest.mark.slow),
    ],
)
def test_mnist_md5s(name):
    data = gzip.decompress((SHARED / "mnist" / f"{name}.gz").read_bytes())
    assert hashlib.md5(data).hexdigest() == MNIST_MD5[name]


@needs_mnist
def test_load_real_mnist():
    ds = D.load_dataset("mnist", SHARED)
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (60000,) and ds.train_labels.dtype == np.uint8
    assert ds.test_labels.shape == (10000,) and ds.test_labels.dtype == np.uint8
    assert np.bincount(ds.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.test_labels).tolist() == MNIST_TEST_COUNTS
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0
    raw = gzip.decompress((SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    np.testing.assert_array_equal(ds.test_labels, np.frombuffer(raw, np.uint8, offset=8))
    # LTH's validation hold-out: 5,000 of the 60,000 training images.
    split = D.train_val_split(ds.train_images, ds.train_labels, 5000, seed=0)
    assert split.train_images.shape == (55000, 28, 28) and split.val_labels.shape == (5000,)


# ------------------------------------------------------------------------------ digits


def test_load_digits():
    from sklearn.datasets import load_digits

    ds = D.load_dataset("digits", "/ignored")
    assert ds.train_images.shape == (1437, 8, 8) and ds.test_images.shape == (360, 8, 8)
    assert ds.train_images.dtype == np.uint8 and ds.pixel_max == 16
    assert ds.train_images.max() == 16 and ds.input_shape == (8, 8, 1)
    reference = load_digits()
    np.testing.assert_array_equal(ds.test_images, reference.images[-360:])
    np.testing.assert_array_equal(ds.train_labels, reference.target[:1437])
    assert np.all(np.bincount(ds.test_labels, minlength=10) >= 30)


# ------------------------------------------------------------------------------ train_val_split


def test_train_val_split():
    images = np.arange(100).reshape(50, 2)
    labels = np.arange(50)
    split = D.train_val_split(images, labels, 10, seed=1)
    assert split.val_labels.shape == (10,) and split.train_images.shape == (40, 2)
    assert sorted([*split.train_labels, *split.val_labels]) == list(range(50))
    np.testing.assert_array_equal(split.train_images[:, 0] // 2, split.train_labels)
    assert np.all(np.diff(split.train_labels) > 0)  # original order kept
    again = D.train_val_split(images, labels, 10, seed=1)
    np.testing.assert_array_equal(again.val_labels, split.val_labels)
    other = D.train_val_split(images, labels, 10, seed=2)
    assert not np.array_equal(other.val_labels, split.val_labels)


@pytest.mark.parametrize("val_size", [0, 50, 2.5, True])
def test_train_val_split_rejects_bad_sizes(val_size):
    with pytest.raises(ValueError, match="val_size"):
        D.train_val_split(np.zeros((50, 2)), np.zeros(50), val_size, seed=0)


def test_train_val_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"\(5, 2\).*\(4,\)"):
        D.train_val_split(np.zeros((5, 2)), np.zeros(4), 1, seed=0)


def test_image_dataset_validates():
    ok = dict(
        name="x",
        train_images=np.zeros((3, 4, 4), np.uint8),
        train_labels=np.zeros(3, np.uint8),
        test_images=np.zeros((2, 4, 4), np.uint8),
        test_labels=np.zeros(2, np.uint8),
        class_names=("a", "b"),
        pixel_max=255,
    )
    D.ImageDataset(**ok)
    with pytest.raises(ValueError, match="train_labels must be"):
        D.ImageDataset(**{**ok, "train_labels": np.zeros(2, np.uint8)})
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, 2\)"):
        D.ImageDataset(**{**ok, "test_labels": np.full(2, 2, np.uint8)})
    with pytest.raises(ValueError, match="differ in shape"):
        D.ImageDataset(**{**ok, "test_images": np.zeros((2, 5, 4), np.uint8)})


# ------------------------------------------------------------------------------ CIFAR-10 (tiny)


def write_cifar_tree(root: Path, per_class=(2, 1), size=(32, 32), suffix=".png") -> None:
    """train/<class>/ and test/<class>/ with images whose colour encodes class and index."""
    from PIL import Image

    for split, n in zip(("train", "test"), per_class, strict=True):
        for label, name in enumerate(D.CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                pixels = np.zeros((*size, 3), np.uint8)
                pixels[..., 0] = 20 * label
                pixels[..., 1] = k
                pixels[..., 2] = 200 if split == "train" else 100
                Image.fromarray(pixels).save(folder / f"{k:04d}{suffix}")
        (root / split / "airplane" / "notes.txt").write_text("not an image")


def check_tiny_cifar(ds: D.ImageDataset, per_class=(2, 1)) -> None:
    n_train, n_test = (10 * n for n in per_class)
    assert ds.train_images.shape == (n_train, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (n_test, 32, 32, 3) and ds.test_labels.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_labels, np.repeat(np.arange(10), per_class[0]))
    np.testing.assert_array_equal(ds.train_images[:, 5, 7, 0], 20 * ds.train_labels)
    np.testing.assert_array_equal(ds.train_images[:, 0, 0, 1], np.tile(range(per_class[0]), 10))
    assert np.all(ds.train_images[..., 2] == 200) and np.all(ds.test_images[..., 2] == 100)
    assert ds.class_names == D.CIFAR10_CLASSES and ds.input_shape == (32, 32, 3)


def test_load_cifar10_class_folders(tmp_path):
    write_cifar_tree(tmp_path / "cifar10")
    check_tiny_cifar(D.load_cifar10(tmp_path / "cifar10", num_threads=1))
    check_tiny_cifar(D.load_dataset("cifar10", tmp_path))  # parent holding cifar10/


def _tarball(tree: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(tree / split, arcname=split)
    return path


def test_load_cifar10_tarball_is_extracted_once(tmp_path, monkeypatch):
    write_cifar_tree(tmp_path / "tree")
    data = tmp_path / "data"
    _tarball(tmp_path / "tree", data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz")
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNEAX_DATA_DIR", str(data))
    monkeypatch.setenv("PRUNEAX_CACHE_DIR", str(cache))
    check_tiny_cifar(D.load_dataset("cifar10"))
    (extracted,) = cache.iterdir()
    assert extracted.name.startswith("cifar10-jpeg-") and (extracted / ".complete").is_file()
    assert sorted(p.name for p in data.rglob("*")) == ["cifar10-jpeg", "cifar10-jpeg.tar.gz"]

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("the archive was extracted again")

    monkeypatch.setattr(tarfile, "open", no_second_extraction)  # the module pruneax uses
    check_tiny_cifar(D.load_cifar10(data, cache_dir=cache))
    assert list(cache.iterdir()) == [extracted]


def test_corrupt_tarball_is_reported(tmp_path):
    write_cifar_tree(tmp_path / "tree")
    path = _tarball(tmp_path / "tree", tmp_path / "data" / "cifar10-jpeg.tar.gz")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cifar10-jpeg.tar.gz: cannot extract"):
        D.load_cifar10(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # no half-extracted folder left behind


def test_cifar_errors(tmp_path):
    write_cifar_tree(tmp_path)
    bad = tmp_path / "train" / "cat" / "0001.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"{bad}: cannot decode"):
        D.load_cifar10(tmp_path)
    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(buffer, format="PNG")
    bad.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=rf"{bad}: image is 32x30 .* expected 32x32"):
        D.load_cifar10(tmp_path)
    bad.unlink()
    (tmp_path / "test" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"unexpected folders \['zebra'\]"):
        D.load_cifar10(tmp_path)
    (tmp_path / "test" / "zebra").rmdir()
    for f in (tmp_path / "test" / "ship").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"test/ship: no image files"):
        D.load_cifar10(tmp_path)
    (tmp_path / "test" / "ship").rmdir()
    with pytest.raises(FileNotFoundError, match=r"missing class folders \['ship'\]"):
        D.load_cifar10(tmp_path)


def test_cifar_not_found_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        D.load_cifar10(tmp_path)
    message = str(info.value)
    for text in (
        f"{tmp_path} (directory)",
        f"{tmp_path / 'cifar10-jpeg'} (does not exist)",
        "cifar10-jpeg.tar.gz",
        "airplane, automobile",
        "PRUNEAX_DATA_DIR",
    ):
        assert text in message


@needs_cifar
@pytest.mark.slow
def test_load_real_cifar10_tarball(tmp_path):
    ds = D.load_cifar10(SHARED, cache_dir=tmp_path)
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.train_labels).tolist() == [5000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert 100 < ds.train_images.mean() < 140


# ------------------------------------------------------------------------------ tfds


def test_load_tfds_without_tfds(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(ImportError, match=r"tensorflow_datasets.*not installed.*load_dataset"):
        D.load_tfds("mnist")


def _fake_tfds(monkeypatch, data_source) -> None:
    module = types.ModuleType("tensorflow_datasets")
    module.data_source = data_source
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)


def test_load_tfds_not_prepared(monkeypatch, tmp_path):
    def data_source(name, download, data_dir=None):
        assert download is False
        raise AssertionError(f"Dataset {name}: could not find data in {data_dir}")

    _fake_tfds(monkeypatch, data_source)
    with pytest.raises(FileNotFoundError, match=rf"'mnist' is not prepared in {tmp_path}.*build"):
        D.load_tfds("mnist", tmp_path)


def test_load_tfds_reads_data_sources(monkeypatch):
    rng = np.random.default_rng(0)

    def split(n):
        return [
            {"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "label": np.int64(i % 10)}
            for i in range(n)
        ]

    _fake_tfds(monkeypatch, lambda name, download: {"train": split(12), "test": split(5)})
    ds = D.load_tfds("mnist")
    assert ds.train_images.shape == (12, 28, 28) and ds.test_images.shape == (5, 28, 28)
    assert ds.train_labels.dtype == np.uint8 and ds.num_classes == 10 and ds.pixel_max == 255

    class Source(list):  # tfds data sources read batches through __getitems__
        def __getitems__(self, keys):
            return [self[k] for k in keys]

    _fake_tfds(monkeypatch, lambda name, download: {"train": Source(split(7)), "test": split(2)})
    assert D.load_tfds("mnist").train_images.shape == (7, 28, 28)

    _fake_tfds(monkeypatch, lambda name, download: {"train": split(3)})
    with pytest.raises(ValueError, match=r"missing \['test'\]"):
        D.load_tfds("mnist")
