"""Tests for npdc.io.torch_checkpoint: both PyTorch formats read without torch, tensors equal to
what torch itself holds, and hostile or damaged files refused with one UserError.

The checkpoints in tests/data/torch/ were written by bench/make_torch_fixtures.py with torch;
`expected.npz` holds torch's own `.numpy()` of every tensor."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npdc.errors import UserError
from npdc.io.torch_checkpoint import load_checkpoint
from tests.io.torch_fakes import (glob, num, payloads, state_pickle, storage, tensor, tup,
                                  write_legacy, write_zip)

DATA = Path(__file__).resolve().parents[1] / "data" / "torch"
TENSOR_FILES = ["tensors.pt", "tensors_legacy.pt"]


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "expected.npz") as e:
        return {k: e[k] for k in e.files}


# -- both formats, every dtype, views --------------------------------------------------------------
@pytest.mark.parametrize("name", TENSOR_FILES)
def test_tensors_equal_torch(name, expected):
    """Every tensor of the zip and the legacy file equals torch's own array: values, shape, dtype
    (bfloat16 widened to float32), views with offsets, transposed and stride-0 strides."""
    loaded = load_checkpoint(DATA / name)
    keys = {k.split(".", 1)[1] for k in expected if k.startswith("tensors.")}
    assert set(loaded) == keys
    for key in keys:
        ref = expected[f"tensors.{key}"]
        assert loaded[key].dtype == ref.dtype, key
        assert loaded[key].shape == ref.shape, key
        np.testing.assert_array_equal(loaded[key], ref, err_msg=key)


@pytest.mark.parametrize("name", TENSOR_FILES)
def test_views_of_one_storage(name):
    """The transpose, the offset window and the strided slice read the storage of `base`."""
    t = load_checkpoint(DATA / name)
    base = t["base"]
    np.testing.assert_array_equal(t["transposed"], base.T)
    np.testing.assert_array_equal(t["window"], base[1:3, 2:5])
    np.testing.assert_array_equal(t["every_other"], base.reshape(-1)[3::2])
    assert (t["expanded"] == t["expanded"][:, :1]).all()


def test_loaded_arrays_are_independent():
    """Views come back as copies: writing to one does not change another."""
    t = load_checkpoint(DATA / "tensors.pt")
    before = t["transposed"].copy()
    t["base"][:] = -1
    np.testing.assert_array_equal(t["transposed"], before)


def test_nested_training_checkpoint_keeps_plain_values():
    """Numbers and strings next to the state_dict come back as they were saved."""
    ckpt = load_checkpoint(DATA / "cifar_resnet20.pt")
    assert ckpt["epoch"] == 182 and ckpt["best_prec1"] == pytest.approx(91.73)
    assert ckpt["arch"] == "resnet20"
    assert ckpt["state_dict"]["module.conv1.weight"].shape == (16, 3, 3, 3)


def test_hand_made_views_share_one_storage(tmp_path):
    """Two tensors on one storage key in a hand-written zip read the same elements."""
    raw = np.arange(10, dtype="<f4").tobytes()
    pkl = state_pickle({"a": tensor(storage("0", count=10), 0, (2, 5), (5, 1)),
                        "b": tensor(storage("0", count=10), 7, (3,), (1,))})
    out = load_checkpoint(write_zip(tmp_path / "v.pt", pkl, {"0": raw}))
    np.testing.assert_array_equal(out["a"], np.arange(10).reshape(2, 5))
    np.testing.assert_array_equal(out["b"], [7, 8, 9])


def test_legacy_big_endian(tmp_path):
    """A legacy file written on a big-endian machine: the count and the elements are read '>'."""
    info = {"protocol_version": 1001, "little_endian": False, "type_sizes": {}}
    obj = state_pickle({"w": tensor(storage("k", "DoubleStorage", 3, legacy=True), 0, (3,), (1,))})
    body = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
            pickle.dumps(info, protocol=2), obj, pickle.dumps(["k"], protocol=2),
            struct.pack(">q", 3), np.array([1.5, -2.0, 3.25], ">f8").tobytes()]
    (tmp_path / "be.pt").write_bytes(b"".join(body))
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "be.pt")["w"], [1.5, -2.0, 3.25])


# -- hostile files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call"])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_code_in_a_checkpoint_is_refused_and_never_run(kind, fmt, tmp_path):
    """A checkpoint whose pickle calls a command is refused, the error names the global, and
    the command's side effect does not happen -- while plain pickle would have run it."""
    control, marker = tmp_path / "control", tmp_path / "marker"
    pickle.loads(pickle.dumps(payloads(control)[kind], protocol=2))
    assert control.exists()  # the payload is live
    hostile = pickle.dumps({"state_dict": {"conv1.weight": payloads(marker)[kind]}}, protocol=2)
    path = tmp_path / "evil.pt"
    if fmt == "zip":
        write_zip(path, hostile)
    else:
        write_legacy(path, hostile)
    with pytest.raises(UserError, match="refused to load global") as e:
        load_checkpoint(path)
    module, name = kind.split(".")
    assert name in str(e.value) and (module in str(e.value) or "posix" in str(e.value))
    assert not marker.exists()


def test_pickled_module_source_is_refused(tmp_path):
    """A whole nn.Module pickled in the legacy way (class + source as a persistent id) is
    refused at its class, with advice to save a state_dict."""
    pkl = b"\x80\x02" + tup(b"X\x06\x00\x00\x00module", glob("torch.nn", "Linear"), b"N", b"N") + b"Q."
    with pytest.raises(UserError, match="global torch.nn.Linear.*state_dict"):
        load_checkpoint(write_legacy(tmp_path / "m.pt", pkl))


def test_unknown_torch_global_is_refused(tmp_path):
    """Only the tensor rebuilders exist: torch.load itself is not a thing a pickle can call."""
    pkl = b"\x80\x02" + glob("torch", "load") + tup(b"X\x01\x00\x00\x00x") + b"R."
    with pytest.raises(UserError, match="torch.load"):
        load_checkpoint(write_zip(tmp_path / "t.pt", pkl))


# -- damaged files ----------------------------------------------------------------------------------
def _zip_with(tmp_path, entry, raw, count=6):
    return write_zip(tmp_path / "d.pt", state_pickle({"w": entry}), {"0": raw})


@pytest.mark.parametrize("offset,size,stride,match", [
    (5, (2,), (1,), "reaches element 6"),          # runs one past the end
    (0, (2, 4), (4, 1), "reaches element 7"),      # 8 elements from a storage of 6
    (0, (3, 2), (1, 4), "reaches element 6"),      # the strides reach too far
    (0, (2, 2), (2,), "differ in length"),
    (0, (2,), (-1,), "stride"),
    (-1, (1,), (1,), "offset"),
])
def test_views_outside_the_storage_are_refused(tmp_path, offset, size, stride, match):
    """Every view is checked against its storage before a byte is read."""
    path = _zip_with(tmp_path, tensor(storage("0", count=6), offset, size, stride),
                     np.zeros(6, "<f4").tobytes())
    with pytest.raises(UserError, match=match):
        load_checkpoint(path)


def test_storage_shorter_than_claimed(tmp_path):
    path = _zip_with(tmp_path, tensor(storage("0", count=6), 0, (6,), (1,)), b"\0" * 20)
    with pytest.raises(UserError, match="fewer than 24 bytes"):
        load_checkpoint(path)


def test_missing_storage_entry(tmp_path):
    path = write_zip(tmp_path / "d.pt", state_pickle({"w": tensor(storage("9", count=1), 0, (1,), (1,))}))
    with pytest.raises(UserError, match="'9' is missing"):
        load_checkpoint(path)


def test_huge_broadcast_is_refused(tmp_path):
    """A stride-0 view may not turn one stored element into millions."""
    path = _zip_with(tmp_path, tensor(storage("0", count=1), 0, (1 << 13, 1 << 13), (0, 0)),
                     b"\0" * 4)
    with pytest.raises(UserError, match="asks for .* more than a"):
        load_checkpoint(path)


def test_legacy_storage_count_mismatch(tmp_path):
    obj = state_pickle({"w": tensor(storage("k", count=4, legacy=True), 0, (4,), (1,))})
    path = write_legacy(tmp_path / "c.pt", obj, [("k", 3, b"\0" * 12)])
    with pytest.raises(UserError, match="holds 3 elements, expected 4"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["tensors.pt", "tensors_legacy.pt", "cifar_resnet56_w8_legacy.pth"])
@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.05, 0.3, 0.6, 0.9, 0.999])
def test_truncated_files_give_one_user_error(name, fraction, tmp_path):
    """A checkpoint cut anywhere is a UserError naming the file, never a crash."""
    raw = (DATA / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(raw[:int(len(raw) * fraction)])
    with pytest.raises(UserError) as e:
        load_checkpoint(cut)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(TENSOR_FILES))
def test_corrupted_bytes_load_or_give_user_error(data, name, tmp_path):
    """Random byte changes anywhere: the reader returns arrays or raises UserError, nothing else."""
    raw = bytearray((DATA / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.pt"
    path.write_bytes(bytes(raw))
    try:
        load_checkpoint(path)
    except UserError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"hello world", "not a PyTorch checkpoint"),
    (b"PK\x03\x04garbage", "damaged zip"),
])
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_wrong_legacy_magic(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(pickle.dumps(12345, protocol=2) + num(1))
    with pytest.raises(UserError, match="wrong magic"):
        load_checkpoint(path)
