"""What the hardened readers must still accept, and the limits they apply, tested directly."""

import io
import pickle
import zipfile

import numpy as np
import pytest

from npdc.errors import UserError
from npdc.io.bounded import gunzip, read_member
from npdc.io.datasets import read_cifar_batch
from npdc.io.npz import read_npz
from npdc.limits import Budget


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_reader_matches_numpy(tmp_path, save):
    arrays = {"a": np.arange(24, dtype=">f8").reshape(2, 3, 4),
              "b": np.asfortranarray(np.eye(3, dtype=np.int16)),
              "c": np.array([True, False]), "d": np.zeros((0, 5), np.uint8), "e": np.float32(7)}
    save(tmp_path / "a.npz", **arrays)
    got = read_npz(tmp_path / "a.npz")
    assert set(got) == set(arrays)
    for key, want in arrays.items():
        assert got[key].dtype == want.dtype.newbyteorder("=") and got[key].shape == np.shape(want)
        np.testing.assert_array_equal(got[key], want)
    assert got["a"].dtype.isnative


def test_npz_arrays_count_against_one_budget(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(1000, np.uint8), y=np.zeros(1000, np.uint8))
    budget = Budget("a.npz", 0)
    budget.left = 1500
    with pytest.raises(UserError, match="'y.npy'"):
        read_npz(tmp_path / "a.npz", budget=budget)


def test_budget_env_override_lets_a_large_member_through(tmp_path, monkeypatch):
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m", bytes(4 << 20))
    archive = zipfile.ZipFile(io.BytesIO(raw.getvalue()))
    monkeypatch.setenv("NPDC_ALLOC_FLOOR", str(1 << 20))
    with pytest.raises(UserError, match="NPDC_ALLOC_FLOOR"):
        read_member(archive, "m", "f.pt", Budget("f.pt", len(raw.getvalue())))
    monkeypatch.setenv("NPDC_ALLOC_FLOOR", str(8 << 20))
    assert read_member(archive, "m", "f.pt", Budget("f.pt", len(raw.getvalue()))) == bytes(4 << 20)


def test_gunzip_is_bounded_and_exact():
    import gzip

    packed = gzip.compress(b"abc" * 1000)
    assert gunzip(packed, "f.gz", Budget("f.gz", 0)) == b"abc" * 1000
    assert gunzip(packed + gzip.compress(b"de") + bytes(8), "f.gz", Budget("f.gz", 0)) == b"abc" * 1000 + b"de"
    small = Budget("f.gz", 0)
    small.left = 2000
    with pytest.raises(UserError, match="gzip stream"):
        gunzip(packed, "f.gz", small)
    with pytest.raises(UserError, match="truncated"):
        gunzip(packed[:-10], "f.gz", Budget("f.gz", 0))


def test_protocol_2_cifar_batch_with_empty_bytes_loads(tmp_path):
    """Protocol 2 pickles b"" as builtins.bytes() (longer bytes as _codecs.encode)."""
    batch = {b"batch_label": b"", b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2],
             b"filenames": [b"", b"a.png"]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = read_cifar_batch(tmp_path / "test_batch")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 2]
