"""Loaders on files written here in the real formats, seeded splits, on-device batches and augmentation."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from kernel_reg import data


def write_idx_by_hand(path, array, compress):
    """IDX: two zero bytes, type 0x08 (uint8), the number of dimensions, big-endian sizes, raw bytes."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("layout", ["", "FashionMNIST/raw"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_loader_reads_the_standard_files(tmp_path, layout, compress):
    rng = np.random.RandomState(0)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (50, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, 50),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (20, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, 20),
    }
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx_by_hand(folder / name, array, compress)
    train_x, train_y, test_x, test_y = data.load_arrays("fashion-mnist", str(tmp_path))
    np.testing.assert_array_equal(train_x[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(train_y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(test_x[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(test_y, arrays["t10k-labels-idx1-ubyte"])
    assert train_x.shape == (50, 1, 28, 28) and train_y.dtype == np.int64


def test_cifar_loader_reads_the_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.randint(0, 256, (4, 3072)).astype(np.uint8)  # rows: 1024 red, 1024 green, 1024 blue
        labels = list(rng.randint(0, 10, 4))
        batches[name] = (images, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": images, b"labels": labels}, f, protocol=2)
    train_x, train_y, test_x, test_y = data.load_arrays("cifar10", str(tmp_path))
    assert train_x.shape == (20, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    first = batches["data_batch_1"][0][0]
    np.testing.assert_array_equal(train_x[0, 1, 0, :], first[1024:1056])  # green channel, top row
    np.testing.assert_array_equal(train_y[-4:], batches["data_batch_5"][1])
    np.testing.assert_array_equal(test_y, batches["test_batch"][1])


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
