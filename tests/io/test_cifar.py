"""Tests for CIFAR-10 python batches in npdc.io.datasets, read by the restricted unpickler."""

import pickle

import numpy as np
import pytest

from npdc.errors import UserError
from npdc.io.datasets import load_dataset, read_cifar_batch
from tests.io.torch_fakes import payloads


def _batch(path, n, seed, protocol=2, override=None):
    """A batch laid out like the originals: bytes keys, uint8 (N, 3072), a list of labels."""
    r = np.random.default_rng(seed)
    batch = {b"batch_label": b"testing batch", b"data": r.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in r.integers(0, 10, n)], b"filenames": [b"x.png"] * n}
    batch.update(override or {})
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return batch


@pytest.fixture
def cifar_dir(tmp_path):
    batches = {name: _batch(tmp_path / name, n, seed)
               for seed, (name, n) in enumerate([("data_batch_1", 5), ("data_batch_2", 3), ("test_batch", 4)])}
    return tmp_path, batches


def test_cifar_directory_is_a_dataset(cifar_dir):
    """data_batch_* form the train split in order, test_batch the test split; images are
    (N, 3, 32, 32) with the 3072 bytes taken channel by channel, row by row."""
    folder, batches = cifar_dir
    data = load_dataset(str(folder))
    assert data.x_train.shape == (8, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.x_train.dtype == np.uint8 and data.image_shape == (3, 32, 32)
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(data.x_train[0, 1, 2], first[1024 + 64:1024 + 96])
    np.testing.assert_array_equal(data.y_train, batches["data_batch_1"][b"labels"] + batches["data_batch_2"][b"labels"])
    np.testing.assert_array_equal(data.x_test.reshape(4, -1), batches["test_batch"][b"data"])


@pytest.mark.parametrize("protocol", [2, 4])
def test_batch_with_numpy_labels(tmp_path, protocol):
    batch = _batch(tmp_path / "b", 3, 0, protocol, {b"labels": np.array([1, 2, 3])})
    x, y = read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(y, [1, 2, 3])
    np.testing.assert_array_equal(x.reshape(3, -1), batch[b"data"])


def test_hostile_batch_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "marker"
    _batch(tmp_path / "test_batch", 2, 0, override={b"labels": payloads(marker)["os.system"]})
    with pytest.raises(UserError, match="refused to load global"):
        load_dataset(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("override,match", [
    ({b"data": np.zeros((2, 100), np.uint8)}, "expected uint8"),
    ({b"data": np.zeros((2, 3072), np.float32)}, "expected uint8"),
    ({b"labels": [1]}, "2 batch images but 1"),
    ({b"labels": [1.5, 2.0]}, "integers"),
])
def test_malformed_batches(tmp_path, override, match):
    _batch(tmp_path / "test_batch", 2, 0, override=override)
    with pytest.raises(UserError, match=match):
        load_dataset(str(tmp_path))


def test_truncated_batch(tmp_path):
    _batch(tmp_path / "data_batch_1", 3, 0)
    raw = (tmp_path / "data_batch_1").read_bytes()
    (tmp_path / "data_batch_1").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(UserError, match="data_batch_1: corrupt or truncated"):
        load_dataset(str(tmp_path))
