"""Data: IDX and CIFAR-10 readers, the embedded Fashion-MNIST subset, seeded splits, on-device batches.

Images are returned as uint8 arrays (N, C, H, W) and labels as int64 arrays (N,); ``Splits`` holds
float tensors in [0, 1] on the training device, since the small data sets of the paper fit there and
batches then cost no host-to-device copies.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_FASHION_MNIST = Path(__file__).parents[1] / "data" / "fashion-mnist-subset"
EMBEDDED = "embedded"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# layouts other tools use, relative to the folder the user names
IDX_LAYOUTS = {
    "fashion-mnist": ("", "FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
    "mnist": ("", "MNIST/raw", "mnist"),
}
WHERE_TO_GET = {
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (or Debian's package dataset-fashion-mnist)",
    "mnist": "http://yann.lecun.com/exdb/mnist/ (the four *-ubyte.gz files)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it into the folder)",
}
DATASETS = ("fashion-mnist", "mnist", "cifar10")
NUM_CLASSES = 10  # of each of them
INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # of one image


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are missing; the message says where we looked and where to get them."""


class DataFileError(ValueError):
    """A data file exists but cannot be read (truncated, corrupt, another format); the message names the
    file and says what was expected."""


IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike, *, hint: str = "") -> np.ndarray:
    """Read an IDX file (plain or gzipped): big-endian header, magic 0x0000TTDD, D sizes, then data.

    A file that is not such a file (not gzip though named .gz, truncated, corrupt, a bad header, more or
    fewer bytes than the header announces) raises DataFileError naming it and saying what was expected;
    ``hint`` (e.g. where to download the file again) ends that message."""
    compressed = str(path).endswith(".gz")

    def error(problem: str) -> DataFileError:
        if compressed:
            expected = "an IDX file, gzip-compressed because its name ends in .gz"
        else:
            expected = "an uncompressed IDX file (its name does not end in .gz)"
        return DataFileError(f"{path}: {problem}; expected {expected}" + (f"; {hint}" if hint else ""))

    raw = Path(path).read_bytes()
    if not raw:
        raise error("the file is empty (0 bytes)")
    if compressed:
        if raw[:2] != GZIP_MAGIC:
            looks = (
                " (it looks like an uncompressed IDX file: drop the .gz from its name)" if raw[:2] == b"\0\0" else ""
            )
            raise error(f"not a valid gzip file: not gzip-compressed, it starts with {raw[:8]!r}{looks}")
        try:
            raw = gzip.decompress(raw)
        except EOFError as e:
            raise error(f"not a valid gzip file: truncated ({e})") from e
        except gzip.BadGzipFile as e:
            if str(e).startswith("Not a gzipped file"):  # what follows a complete gzip stream is not another one
                raise error(f"not a valid gzip file: corrupt, unexpected bytes after the end of the data ({e})") from e
            raise error(f"not a valid gzip file: corrupt ({e})") from e
        except zlib.error as e:
            raise error(f"not a valid gzip file: corrupt ({e})") from e
    size = f"{len(raw)} bytes" + (" after decompression" if compressed else "")
    if len(raw) < 4:
        raise error(f"truncated inside the IDX header: {size}, the header alone has at least 4")
    if raw[0] != 0 or raw[1] != 0:
        looks = " (it looks gzip-compressed: its name should end in .gz)" if raw[:2] == GZIP_MAGIC else ""
        raise error(f"bad magic number 0x{raw[:4].hex()}, an IDX file starts with two zero bytes{looks}")
    if raw[2] not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in IDX_DTYPES)
        raise error(f"unknown IDX data type 0x{raw[2]:02x} (known: {known})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise error(f"truncated inside the IDX header: {size}, a header of {ndim} dimensions has {header}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = math.prod(shape)
    expected, held = count * dtype.itemsize, len(raw) - header
    if held != expected:
        problem = "truncated: " if held < expected else "extra bytes at the end: "
        raise error(
            f"{problem}header announces shape {shape} ({count} values, {expected} bytes of data) "
            f"but the file holds {held} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find_idx_file(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_dataset(name: str, root: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, test_x, test_y) of MNIST or Fashion-MNIST from the IDX files under ``root``.

    Missing files raise DataNotFoundError; files that cannot be read, or that do not fit together (uint8
    images (N, H, W) of one size, as many labels as images, labels in [0, NUM_CLASSES)), DataFileError."""
    root = Path(root)
    folders = [root / layout for layout in IDX_LAYOUTS[name]]
    found = {key: _find_idx_file(folders, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in found.items() if path is None]
    if missing:
        raise DataNotFoundError(
            f"{name}: looked in {', '.join(str(f) for f in folders)} for {', '.join(missing)} "
            f"(plain or .gz); get them from {WHERE_TO_GET[name]}"
        )
    if root == EMBEDDED_FASHION_MNIST:
        hint = hints = "this subset ships with kernel_reg: reinstall the package"
    else:
        hint, hints = (f"download {what} again from {WHERE_TO_GET[name]}" for what in ("it", "them"))
    arrays = {key: read_idx(path, hint=hint) for key, path in found.items() if path is not None}
    for split in ("train", "test"):
        images_path, labels_path = found[f"{split}_images"], found[f"{split}_labels"]
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataFileError(
                f"{images_path}: holds {images.dtype} values of shape {images.shape}; expected {name} {split} "
                f"images, uint8 of shape (N, height, width); {hint}"
            )
        if split == "test" and images.shape[1:] != arrays["train_images"].shape[1:]:
            raise DataFileError(
                f"{images_path}: holds images of {' x '.join(map(str, images.shape[1:]))} pixels; expected the "
                f"{' x '.join(map(str, arrays['train_images'].shape[1:]))} of the training images in "
                f"{found['train_images']}; {hints}"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataFileError(
                f"{labels_path}: holds {labels.dtype} values of shape {labels.shape}; expected {name} {split} "
                f"labels, integers of shape (N,); {hint}"
            )
        if len(images) != len(labels):
            raise DataFileError(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                f"expected one label per image, both files from the same {name} download; {hints}"
            )
        outside = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
        if outside.size:
            raise DataFileError(
                f"{labels_path}: label {labels[outside[0]]} at index {outside[0]} is outside [0, {NUM_CLASSES}) "
                f"({outside.size} of {labels.size} labels out of range); "
                f"expected {name} classes 0 to {NUM_CLASSES - 1}; {hint}"
            )
    return (
        arrays["train_images"][:, None].copy(),
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None].copy(),
        arrays["test_labels"].astype(np.int64),
    )


def _read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch of the CIFAR-10 python version;
    DataFileError naming the file if it is not one."""

    def error(problem: str) -> DataFileError:
        return DataFileError(
            f"{path}: {problem}; expected a batch of the CIFAR-10 python version (cifar-10-python.tar.gz, "
            f"extracted): a pickled dict with b'data' (N x 3072 uint8) and b'labels' (N classes in "
            f"[0, {NUM_CLASSES})); download it again from {WHERE_TO_GET['cifar10']}"
        )

    with open(path, "rb") as f:
        if not f.read(1):
            raise error("the file is empty (0 bytes)")
        f.seek(0)
        try:
            entry = pickle.load(f, encoding="bytes")
        except Exception as e:  # unpickling other bytes can raise almost anything
            raise error(f"cannot be unpickled ({type(e).__name__}: {e})") from e
    if not isinstance(entry, dict):
        raise error(f"holds a pickled {type(entry).__name__}, not a dict")
    absent = [repr(key) for key in (b"data", b"labels") if key not in entry]
    if absent:
        keys = ", ".join(repr(key) for key in list(entry)[:10])
        raise error(f"the pickled dict has no {' or '.join(absent)} (its keys: {keys})")
    try:
        images = np.asarray(entry[b"data"], dtype=np.uint8)
    except (TypeError, ValueError, OverflowError) as e:
        raise error(f"b'data' is not an array of bytes ({type(e).__name__}: {e})") from e
    if images.size % (3 * 32 * 32):
        raise error(f"b'data' holds {images.size} values, not a multiple of 3 x 32 x 32 = 3072")
    try:
        labels = np.asarray(entry[b"labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise error(f"b'labels' is not a list of integers ({type(e).__name__}: {e})") from e
    images = images.reshape(-1, 3, 32, 32)
    if labels.ndim != 1 or len(labels) != len(images):
        raise error(f"{len(images)} images but {labels.size} labels")
    outside = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if outside.size:
        raise error(f"label {labels[outside[0]]} at index {outside[0]} is outside [0, {NUM_CLASSES})")
    return images, labels


def load_cifar10(root: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, test_x, test_y) from the python batches in ``root`` or ``root/cifar-10-batches-py``."""
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder = next((f for f in (root / "cifar-10-batches-py", root) if all((f / n).is_file() for n in names)), None)
    if folder is None:
        raise DataNotFoundError(
            f"cifar10: looked in {root / 'cifar-10-batches-py'} and {root} for {', '.join(names)}; "
            f"get them from {WHERE_TO_GET['cifar10']}"
        )
    train = [_read_cifar_batch(folder / n) for n in names[:5]]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    train_x = np.concatenate([b[0] for b in train])
    train_y = np.concatenate([b[1] for b in train])
    return train_x, train_y, test_x, test_y


# where a run's data came from (``DataRecord.source``), as its description says it
DATA_SOURCES = {
    "debian": "Debian's files",
    "folder": "a folder given with --data-dir",
    "embedded": "the embedded subset",
}


@dataclass(frozen=True)
class DataRecord:
    """Which data a run read: the data set, where its files came from (``source``: Debian's package, a
    folder the user named, or the subset embedded in kernel_reg; never the folder's path) and the sha256 of
    the decoded training and test arrays (``content_sha256``), whatever their compression or layout."""

    dataset: str
    source: str
    train_sha256: str
    test_sha256: str
    train_size: int
    test_size: int

    def describe(self) -> str:
        return (
            f"{self.dataset} from {DATA_SOURCES.get(self.source, self.source)} ({self.train_size} training / "
            f"{self.test_size} test images; train sha256 {self.train_sha256[:16]}..., test sha256 "
            f"{self.test_sha256[:16]}...)"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataRecord:
        return cls(**values)


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over (dtype, shape, bytes) of the images, then of the labels: equal exactly when the decoded
    examples are, in the same order."""
    digest = hashlib.sha256()
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """The arrays of a data set (train_x, train_y, test_x, test_y) and the record of what they are."""

    arrays: tuple[np.ndarray, ...]
    record: DataRecord


class DataMismatchError(ValueError):
    """The data found differ from the data a run recorded; the message names both hashes and the remedy."""


def data_mismatch(recorded: DataRecord, found: DataRecord, parts: tuple[str, ...] = ("train", "test")) -> str | None:
    """None when ``found`` holds the same ``parts`` ("train", "test") as ``recorded``; else a sentence that
    names both sha256 of each part that differs."""
    differ = [
        f"{part} sha256 recorded {getattr(recorded, part + '_sha256')}, found {getattr(found, part + '_sha256')}"
        for part in parts
        if getattr(recorded, part + "_sha256") != getattr(found, part + "_sha256")
    ]
    if recorded.dataset != found.dataset:
        differ.insert(0, f"data set recorded {recorded.dataset}, found {found.dataset}")
    if not differ:
        return None
    return f"{found.describe()} are not the data the run recorded ({'; '.join(differ)})"


def resolve_data_dir(dataset: str, data_dir: str | None) -> tuple[str, str]:
    """(folder, source) of the files a run reads: ``data_dir`` as given (``"embedded"``: the shipped subset);
    without one, the data set's standard place: Debian's package for Fashion-MNIST, ``data`` for CIFAR-10.
    The embedded subset is used only when named: a missing full data set raises DataNotFoundError."""
    if data_dir == EMBEDDED:
        if dataset != "fashion-mnist":
            raise ValueError(f"the embedded subset is Fashion-MNIST, not {dataset}")
        return str(EMBEDDED_FASHION_MNIST), "embedded"
    if data_dir is not None:
        return data_dir, "folder"
    if dataset == "fashion-mnist":
        if not any(_find_idx_file([DEBIAN_FASHION_MNIST], stem) for stem in IDX_FILES.values()):
            raise DataNotFoundError(
                f"fashion-mnist: the full data set is not installed (looked in {DEBIAN_FASHION_MNIST}); install "
                "Debian's package dataset-fashion-mnist, pass --data-dir FOLDER with its four IDX files, or "
                "--data-dir embedded for the subset of 4,000 training and 2,000 test images shipped with kernel-reg"
            )
        return str(DEBIAN_FASHION_MNIST), "debian"
    if dataset == "cifar10":
        return "data", "folder"
    raise DataNotFoundError(f"{dataset}: no default folder; pass --data-dir (files from {WHERE_TO_GET[dataset]})")


def load_dataset(dataset: str, data_dir: str | None) -> Dataset:
    """The arrays of ``dataset`` (from ``resolve_data_dir``) and their ``DataRecord``."""
    folder, source = resolve_data_dir(dataset, data_dir)
    arrays = load_arrays(dataset, folder)
    train_x, train_y, test_x, test_y = arrays
    record = DataRecord(
        dataset, source, content_sha256(train_x, train_y), content_sha256(test_x, test_y), len(train_x), len(test_x)
    )
    return Dataset(arrays, record)


def load_arrays(dataset: str, data_dir: str) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, test_x, test_y) of ``dataset`` from ``data_dir`` ("embedded": the shipped subset)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset == "cifar10":
        return load_cifar10(data_dir)
    if data_dir == EMBEDDED:
        if dataset != "fashion-mnist":
            raise ValueError(f"the embedded subset is Fashion-MNIST, not {dataset}")
        return load_idx_dataset(dataset, EMBEDDED_FASHION_MNIST)
    return load_idx_dataset(dataset, data_dir)


def split_indices(pool_size: int, n_train: int | None, n_val: int, shuf_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices into the training pool, as the original drew them: the pool
    shuffled by numpy's RandomState(42 + shuf_seed), training = the first n_train, validation = the last
    n_val (disjoint). n_train None: everything that is not validation."""
    if n_val < 0 or (n_train is not None and n_train < 1):
        raise ValueError(f"n_train must be >= 1 and n_val >= 0, got n_train={n_train}, n_val={n_val}")
    n_train = pool_size - n_val if n_train is None else n_train
    if n_train + n_val > pool_size:
        raise ValueError(
            f"n_train={n_train} plus n_val={n_val} exceeds the {pool_size} examples of the training pool; "
            f"choose n_train + n_val <= {pool_size}"
        )
    order = np.arange(pool_size)
    np.random.RandomState(42 + shuf_seed).shuffle(order)
    return order[:n_train], order[pool_size - n_val :]


@dataclass
class Splits:
    """Training, validation and test sets as float tensors in [0, 1] (N, C, H, W) and labels, on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def make_splits(
    arrays: tuple[np.ndarray, ...],
    n_train: int | None,
    n_val: int,
    shuf_seed: int,
    device: torch.device,
    n_test: int | None = None,
) -> Splits:
    """Seeded subsets of the pool and the test set (its first ``n_test`` images), moved to ``device``."""
    train_x, train_y, test_x, test_y = arrays
    train_idx, val_idx = split_indices(len(train_x), n_train, n_val, shuf_seed)

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device).float().div_(255.0)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    if n_test is not None and n_test > len(test_x):
        size = len(test_x)
        raise ValueError(f"n_test={n_test} exceeds the {size} images of the test set; choose n_test <= {size}")
    test = slice(None, n_test)
    return Splits(
        images(train_x[train_idx]),
        labels(train_y[train_idx]),
        images(train_x[val_idx]),
        labels(train_y[val_idx]),
        images(test_x[test]),
        labels(test_y[test]),
    )


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of (x, y); shuffled by ``generator`` (a CPU generator) when one is given."""
    n = x.shape[0]
    if generator is None:
        order = None
    else:
        order = torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None, flip: bool = True
) -> torch.Tensor:
    """CIFAR augmentation on a whole batch, on its device: a random crop of the zero-padded image
    (offsets uniform in [0, 2 padding]) and, when ``flip``, a horizontal flip with probability 1/2, per image."""
    n, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator).to(x.device) < 0.5) & flip
    rows = (offsets[0, :, None] + torch.arange(height, device=x.device)).view(n, 1, height, 1)
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols).view(n, 1, 1, width)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]
