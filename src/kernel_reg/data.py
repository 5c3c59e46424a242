"""Data: IDX and CIFAR-10 readers, the embedded Fashion-MNIST subset, seeded splits, on-device batches.

Images are returned as uint8 arrays (N, C, H, W) and labels as int64 arrays (N,); ``Splits`` holds
float tensors in [0, 1] on the training device, since the small data sets of the paper fit there and
batches then cost no host-to-device copies.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_FASHION_MNIST = Path(__file__).parent / "data" / "fashion-mnist-subset"
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


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are missing; the message says where we looked and where to get them."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped): big-endian header, magic 0x0000TTDD, D sizes, then data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header announces shape {shape} but holds {data.size} values")
    return data.reshape(shape)


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
    """(train_x, train_y, test_x, test_y) of MNIST or Fashion-MNIST from the IDX files under ``root``."""
    root = Path(root)
    folders = [root / layout for layout in IDX_LAYOUTS[name]]
    found = {key: _find_idx_file(folders, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in found.items() if path is None]
    if missing:
        raise DataNotFoundError(
            f"{name}: looked in {', '.join(str(f) for f in folders)} for {', '.join(missing)} "
            f"(plain or .gz); get them from {WHERE_TO_GET[name]}"
        )
    arrays = {key: read_idx(path) for key, path in found.items()}
    return (
        arrays["train_images"][:, None].copy(),
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None].copy(),
        arrays["test_labels"].astype(np.int64),
    )


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

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        return np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(entry[b"labels"])

    train = [batch(n) for n in names[:5]]
    test_x, test_y = batch("test_batch")
    train_x = np.concatenate([b[0] for b in train])
    train_y = np.concatenate([b[1] for b in train]).astype(np.int64)
    return train_x, train_y, test_x, test_y.astype(np.int64)


def resolve_data_dir(dataset: str, data_dir: str | None) -> str:
    """The folder a run reads: ``data_dir`` as given; for Fashion-MNIST without one, Debian's folder when
    installed, else the embedded subset (``"embedded"``)."""
    if data_dir is not None:
        return data_dir
    if dataset == "fashion-mnist":
        return str(DEBIAN_FASHION_MNIST) if DEBIAN_FASHION_MNIST.is_dir() else EMBEDDED
    if dataset == "cifar10":
        return "data"
    raise DataNotFoundError(f"{dataset}: no default folder; pass --data-dir (files from {WHERE_TO_GET[dataset]})")


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


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """CIFAR augmentation on a whole batch, on its device: a random crop of the zero-padded image
    (offsets uniform in [0, 2 padding]) and a horizontal flip with probability 1/2, per image."""
    n, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    flips = torch.rand(n, generator=generator).to(x.device) < 0.5
    rows = (offsets[0, :, None] + torch.arange(height, device=x.device)).view(n, 1, height, 1)
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols).view(n, 1, 1, width)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]
