"""Loaders on files written here in the real formats, seeded splits, on-device batches and augmentation."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from kernel_reg.app import data


def write_idx_by_hand(path, array, compress):
    """IDX: two zero bytes, type 0x08 (uint8), the number of dimensions, big-endian sizes, raw bytes."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_standard_idx_files(folder, compress, train=50, test=20):
    """The four Fashion-MNIST IDX files (random contents) in ``folder``; returns {name: array}."""
    rng = np.random.RandomState(0)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, train),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx_by_hand(folder / name, array, compress)
    return arrays


@pytest.mark.parametrize("layout", ["", "FashionMNIST/raw"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_loader_reads_the_standard_files(tmp_path, layout, compress):
    arrays = write_standard_idx_files(tmp_path / layout, compress)
    train_x, train_y, test_x, test_y = data.load_arrays("fashion-mnist", str(tmp_path))
    np.testing.assert_array_equal(train_x[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(train_y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(test_x[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(test_y, arrays["t10k-labels-idx1-ubyte"])
    assert train_x.shape == (50, 1, 28, 28) and train_y.dtype == np.int64


def flip_byte(raw, index):
    corrupt = bytearray(raw)
    corrupt[index] ^= 0xFF
    return bytes(corrupt)


# (name, applies to .gz files, corrupt(raw bytes of the file) -> new bytes, phrase the message must hold)
IDX_CORRUPTIONS = [
    ("gz-empty", True, lambda raw: b"", "empty"),
    ("gz-plain-bytes", True, lambda raw: b"<html><body>404 Not Found</body></html>\n", "not gzip-compressed"),
    ("gz-uncompressed-idx", True, gzip.decompress, "uncompressed IDX"),
    ("gz-truncated-half", True, lambda raw: raw[: len(raw) // 2], "truncated"),
    ("gz-truncated-trailer", True, lambda raw: raw[:-3], "truncated"),
    ("gz-flipped-stream-byte", True, lambda raw: flip_byte(raw, len(raw) // 2), "corrupt"),
    ("gz-invalid-block-type", True, lambda raw: raw[:10] + b"\xff" + raw[11:], "invalid block type"),  # zlib.error
    ("gz-flipped-crc", True, lambda raw: flip_byte(raw, len(raw) - 6), "CRC"),
    ("gz-flipped-length", True, lambda raw: flip_byte(raw, len(raw) - 2), "corrupt"),
    ("gz-trailing-garbage", True, lambda raw: raw + b"garbage", "after the end"),
    ("plain-empty", False, lambda raw: b"", "empty"),
    ("plain-header-2-bytes", False, lambda raw: raw[:2], "header"),
    ("plain-header-truncated", False, lambda raw: raw[:6], "header"),
    ("plain-data-truncated-half", False, lambda raw: raw[: len(raw) // 2], "truncated"),
    ("plain-data-one-byte-short", False, lambda raw: raw[:-1], "truncated"),
    ("plain-extra-bytes", False, lambda raw: raw + b"\0\0\0", "extra"),
    ("plain-bad-magic", False, lambda raw: b"\x01\x02" + raw[2:], "magic"),
    ("plain-gzip-content", False, gzip.compress, "gzip-compressed"),
    ("plain-unknown-type", False, lambda raw: raw[:2] + b"\x07" + raw[3:], "data type 0x07"),
]


@pytest.mark.parametrize("target", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize(
    ("compress", "corrupt", "phrase"), [c[1:] for c in IDX_CORRUPTIONS], ids=[c[0] for c in IDX_CORRUPTIONS]
)
def test_unreadable_idx_files_raise_a_data_file_error_naming_them(tmp_path, target, compress, corrupt, phrase):
    write_standard_idx_files(tmp_path, compress)
    path = tmp_path / (target + (".gz" if compress else ""))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(data.DataFileError) as error:
        data.load_arrays("fashion-mnist", str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, ValueError)  # the command line reports ValueErrors as one line
    assert str(path) in message and phrase in message
    assert "expected an IDX file" in message or "expected an uncompressed IDX file" in message
    assert data.WHERE_TO_GET["fashion-mnist"] in message
    if compress:
        assert "not a valid gzip file" in message or "empty" in message


def test_read_idx_alone_names_the_file_without_a_hint(tmp_path):
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(b"plain text, not gzip")
    with pytest.raises(data.DataFileError, match="images-idx3-ubyte.gz: not a valid gzip file") as error:
        data.read_idx(path)
    assert "download" not in str(error.value)
    with pytest.raises(data.DataFileError, match="somewhere else"):
        data.read_idx(path, hint="get it from somewhere else")
    data.write_idx(path, np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(data.read_idx(path), np.arange(12).reshape(3, 4))


@pytest.mark.parametrize(
    ("sizes", "images", "labels"),
    [
        ((49, 20), "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ((50, 21), "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ],
)
def test_idx_images_and_labels_must_agree_in_count(tmp_path, sizes, images, labels):
    write_standard_idx_files(tmp_path, compress=True)
    short = tmp_path / (labels + ".gz")
    write_idx_by_hand(tmp_path / labels, np.zeros(sizes[0] if "train" in labels else sizes[1]), compress=True)
    with pytest.raises(data.DataFileError) as error:
        data.load_arrays("fashion-mnist", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / (images + ".gz")) in message and str(short) in message
    assert ("50 images" if "train" in images else "20 images") in message
    assert f"{sizes[0] if 'train' in labels else sizes[1]} labels" in message


@pytest.mark.parametrize("labels", ["train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"])
def test_idx_labels_must_be_classes(tmp_path, labels):
    arrays = write_standard_idx_files(tmp_path, compress=False)
    bad = arrays[labels].copy()
    bad[7] = 10
    write_idx_by_hand(tmp_path / labels, bad, compress=False)
    with pytest.raises(data.DataFileError, match="label 10 at index 7") as error:
        data.load_arrays("fashion-mnist", str(tmp_path))
    assert str(tmp_path / labels) in str(error.value)


def test_idx_files_must_hold_images_and_labels_of_one_size(tmp_path):
    write_standard_idx_files(tmp_path, compress=False)
    write_idx_by_hand(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 32, 32)), compress=False)
    with pytest.raises(data.DataFileError, match="28 x 28") as error:
        data.load_arrays("fashion-mnist", str(tmp_path))
    assert "t10k-images-idx3-ubyte" in str(error.value)
    write_standard_idx_files(tmp_path, compress=False)
    write_idx_by_hand(tmp_path / "train-images-idx3-ubyte", np.zeros(50), compress=False)  # labels in place of images
    with pytest.raises(data.DataFileError, match="train-images-idx3-ubyte.*shape \\(50,\\)"):
        data.load_arrays("fashion-mnist", str(tmp_path))


CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar_batch(path, images, labels):
    """A batch of the CIFAR-10 python version: a pickled dict, bytes keys, rows 1024 red, 1024 green, 1024 blue."""
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": path.name.encode(), b"data": images, b"labels": labels}, f, protocol=2)


def write_standard_cifar_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(1)
    batches = {}
    for name in CIFAR_BATCHES:
        images = rng.randint(0, 256, (4, 3072)).astype(np.uint8)
        labels = list(rng.randint(0, 10, 4))
        batches[name] = (images, labels)
        write_cifar_batch(folder / name, images, labels)
    return batches


def test_cifar_loader_reads_the_python_batches(tmp_path):
    batches = write_standard_cifar_files(tmp_path / "cifar-10-batches-py")
    train_x, train_y, test_x, test_y = data.load_arrays("cifar10", str(tmp_path))
    assert train_x.shape == (20, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    first = batches["data_batch_1"][0][0]
    np.testing.assert_array_equal(train_x[0, 1, 0, :], first[1024:1056])  # green channel, top row
    np.testing.assert_array_equal(train_y[-4:], batches["data_batch_5"][1])
    np.testing.assert_array_equal(test_y, batches["test_batch"][1])


def pickled(obj):
    return pickle.dumps(obj, protocol=2)


GOOD_IMAGES = np.zeros((4, 3072), np.uint8)
# (name, corrupt(raw bytes of the batch) -> new bytes, phrase the message must hold)
CIFAR_CORRUPTIONS = [
    ("empty", lambda raw: b"", "empty"),
    ("truncated-half", lambda raw: raw[: len(raw) // 2], "cannot be unpickled"),
    ("truncated-last-byte", lambda raw: raw[:-1], "cannot be unpickled"),
    ("not-a-pickle", lambda raw: b"<html><body>404 Not Found</body></html>\n", "cannot be unpickled"),
    ("gzip-tarball", lambda raw: gzip.compress(raw), "cannot be unpickled"),
    ("a-list", lambda raw: pickled([1, 2, 3]), "list"),
    ("no-labels", lambda raw: pickled({b"data": GOOD_IMAGES}), "b'labels'"),
    ("str-keys", lambda raw: pickled({"data": GOOD_IMAGES, "labels": [0] * 4}), "b'data'"),
    ("wrong-data-size", lambda raw: pickled({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}), "3072"),
    ("data-not-numbers", lambda raw: pickled({b"data": "pixels", b"labels": [0] * 4}), "b'data'"),
    ("label-count", lambda raw: pickled({b"data": GOOD_IMAGES, b"labels": [0] * 3}), "3 labels"),
    ("label-range", lambda raw: pickled({b"data": GOOD_IMAGES, b"labels": [0, 1, -1, 2]}), "label -1 at index 2"),
]


@pytest.mark.parametrize("target", ["data_batch_3", "test_batch"])
@pytest.mark.parametrize(
    ("corrupt", "phrase"), [c[1:] for c in CIFAR_CORRUPTIONS], ids=[c[0] for c in CIFAR_CORRUPTIONS]
)
def test_unreadable_cifar_batches_raise_a_data_file_error_naming_them(tmp_path, target, corrupt, phrase):
    write_standard_cifar_files(tmp_path)
    path = tmp_path / target
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(data.DataFileError) as error:
        data.load_arrays("cifar10", str(tmp_path))
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert str(path) in message and phrase in message
    assert "CIFAR-10 python version" in message and "cifar-10-python.tar.gz" in message


@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist", "cifar10"])
def test_missing_files_name_the_folder_the_files_and_the_source(tmp_path, dataset):
    with pytest.raises(data.DataNotFoundError) as error:
        data.load_arrays(dataset, str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message
    assert ("data_batch_1" if dataset == "cifar10" else "train-images-idx3-ubyte") in message
    assert "http" in message


def test_embedded_subset_is_small_and_complete():
    train_x, train_y, test_x, test_y = data.load_arrays("fashion-mnist", data.EMBEDDED)
    assert train_x.shape == (4000, 1, 28, 28) and test_x.shape == (2000, 1, 28, 28)
    assert set(np.unique(train_y)) == set(range(10)) and set(np.unique(test_y)) == set(range(10))
    size = sum(f.stat().st_size for f in data.EMBEDDED_FASHION_MNIST.iterdir())
    assert size < 5_000_000
    splits = data.make_splits((train_x, train_y, test_x, test_y), 1000, 2000, 0, torch.device("cpu"))
    assert len(splits.train_y) == 1000 and len(splits.val_y) == 2000 and len(splits.test_y) == 2000


def test_splits_follow_the_original_seeded_shuffle():
    train_idx, val_idx = data.split_indices(100, 30, 20, shuf_seed=3)
    expected = np.arange(100)
    np.random.RandomState(45).shuffle(expected)
    np.testing.assert_array_equal(train_idx, expected[:30])
    np.testing.assert_array_equal(val_idx, expected[-20:])
    assert not set(train_idx) & set(val_idx)
    full_train, _ = data.split_indices(100, None, 20, 0)
    assert len(full_train) == 80
    with pytest.raises(ValueError, match="exceeds the 100 examples"):
        data.split_indices(100, 90, 20, 0)


def test_batches_visit_every_example_once_per_epoch():
    x = torch.arange(10).float().view(10, 1, 1, 1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in data.batches(x, y, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert all(torch.equal(xb.flatten().long(), yb) for xb, yb in data.batches(x, y, 4))


def test_random_crop_flip_gives_crops_of_the_padded_image():
    x = torch.rand(16, 3, 8, 8)
    out = data.random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(16):
        candidates = [
            (padded[i, :, r : r + 8, c : c + 8], flipped)
            for r in range(5)
            for c in range(5)
            for flipped in (False, True)
        ]
        matches = [f for crop, f in candidates if torch.equal(out[i], crop.flip(-1) if f else crop)]
        assert matches, f"image {i} is not a (flipped) crop"
        flips += matches[0]
    assert 0 < flips < 16


def test_an_unreadable_embedded_subset_says_to_reinstall(tmp_path, monkeypatch):
    write_standard_idx_files(tmp_path, compress=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setattr(data, "EMBEDDED_FASHION_MNIST", tmp_path)
    with pytest.raises(data.DataFileError, match="t10k-images-idx3-ubyte.gz: the file is empty.*reinstall"):
        data.load_arrays("fashion-mnist", data.EMBEDDED)
