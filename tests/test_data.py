"""Data loaders on small synthetic files of each format, the embedded default and the protocol."""
import argparse
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from dsch_ext import datasets as data
from dsch_ext.datasets import loaders


def write_idx(path, array, gz=True):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    blob = header + array.tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        with open(path, "wb") as f:
            f.write(blob)


def fake_fashion(root, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for prefix, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{suffix}"), rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{suffix}"), rng.integers(0, 10, n), gz)


def test_fashion_mnist_from_directory(tmp_path):
    fake_fashion(tmp_path)
    ds = data.load_fashion_mnist(str(tmp_path), split="all")
    assert ds.images.shape == (60, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (60,) and ds.labels.dtype == torch.int64
    assert len(data.load_fashion_mnist(str(tmp_path), split="test")) == 20


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(data.DataError, match="directory not found"):
        data.load_fashion_mnist(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(data.DataError, match="has no train-images-idx3-ubyte"):
        data.load_fashion_mnist(str(tmp_path / "empty"), split="train")
    fake_fashion(tmp_path / "bad")
    path = tmp_path / "bad" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataError, match="its header .* says"):
        data.load_fashion_mnist(str(tmp_path / "bad"), split="test")
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(data.DataError, match="not an unsigned-byte idx file"):
        data.load_fashion_mnist(str(tmp_path / "bad"), split="test")


def test_embedded_default_is_the_fashion_mnist_test_split():
    ds = data.load_embedded_fashion_mnist()
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 1000))
    assert os.path.isfile(os.path.join(loaders.EMBEDDED_FASHION_MNIST, "LICENSE"))


def write_cifar_batch(path, n, rng):
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist(),
             b"batch_label": b"synthetic"}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        write_cifar_batch(tmp_path / f"data_batch_{i}", 7, rng)
    write_cifar_batch(tmp_path / "test_batch", 5, rng)
    ds = data.load_cifar10(str(tmp_path))
    assert ds.images.shape == (40, 3, 32, 32) and ds.labels.shape == (40,)
    assert len(data.load_cifar10(str(tmp_path), split="test")) == 5


def test_cifar10_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(data.DataError, match="refusing to load"):
        data.load_cifar10(str(tmp_path), split="test")


def test_npz_arrays(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (9, 16, 16), dtype=np.uint8), labels=np.arange(9))
    ds = data.load_arrays(str(tmp_path / "d.npz"))
    assert ds.images.shape == (9, 1, 16, 16)
    np.savez(tmp_path / "f.npz", features=rng.standard_normal((9, 5)), labels=rng.random((9, 3)) > 0.5)
    assert data.load_arrays(str(tmp_path / "f.npz")).labels.shape == (9, 3)
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(data.DataError, match="needs arrays 'images' or 'features'"):
        data.load_arrays(str(tmp_path / "bad.npz"))


def test_retrieval_split_protocol():
    labels = torch.arange(10).repeat_interleave(700)
    split = data.retrieval_split(labels, 100, 500, seed=0)
    assert split.query.numel() == 1000 and split.database.numel() == 6000 and split.train.numel() == 5000
    assert torch.equal(torch.bincount(labels[split.query]), torch.full((10,), 100))
    assert torch.equal(torch.bincount(labels[split.train]), torch.full((10,), 500))
    assert not np.intersect1d(split.query.numpy(), split.database.numpy()).size
    assert np.isin(split.train.numpy(), split.database.numpy()).all()
    again = data.retrieval_split(labels, 100, 500, seed=0)
    assert torch.equal(split.query, again.query) and torch.equal(split.train, again.train)
    with pytest.raises(data.DataError, match="class 0 has 700 items"):
        data.retrieval_split(labels, 300, 500)


def test_training_on_the_whole_database():
    labels = torch.arange(10).repeat_interleave(700)
    split = data.retrieval_split(labels, 100, None, seed=0)
    assert torch.equal(split.train, split.database) and split.database.numel() == 6000
    assert torch.equal(split.query, data.retrieval_split(labels, 100, 500, seed=0).query)  # the same queries
    from dsch_ext.datasets import protocol_split

    scaled = protocol_split(data.Dataset(torch.zeros(7000, 1, 2, 2, dtype=torch.uint8), labels, "tiny"), 100, None)
    assert torch.equal(scaled.train, scaled.database)


def test_train_per_class_on_the_command_line():
    from dsch_ext.cli.main import _train_count

    assert _train_count("all") is None and _train_count("2000") == 2000
    for bad in ("0", "-3", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive count or 'all'"):
            _train_count(bad)
