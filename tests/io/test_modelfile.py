"""Tests for npdc.io.modelfile: the .h5 model file round trip, atomic writing, and one-line
UserErrors for every kind of bad file."""

import json
import os

import h5py
import numpy as np
import pytest

from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.io.modelfile import FORMAT, VERSION, load_model, read_meta, save_model

SPEC = {"arch": "resnet18", "input_shape": [1, 6, 6], "width": 2, "embedding": 4,
        "num_classes": 3, "strides": [1, 2, 1, 2, 1]}


def _trained_looking_net(seed=0):
    """A net whose every parameter, buffer and normalisation entry differs from a fresh build."""
    net = build_net(SPEC, seed=seed)
    r = np.random.default_rng(seed + 50)
    for path, arr in {**net.params(), **net.buffers()}.items():
        var = path.endswith("var")
        arr[...] = r.uniform(0.5, 1.5, arr.shape) if var else r.normal(size=arr.shape)
    net.mean, net.std = np.array([0.4], np.float32), np.array([0.3], np.float32)
    return net


@pytest.fixture
def saved(tmp_path):
    net = _trained_looking_net()
    path = tmp_path / "model.h5"
    save_model(path, net, {"dataset": "toy", "test_accuracy": 0.5})
    return path, net


def test_round_trip_bit_identical(saved):
    """load(save(net)) predicts bit-identically and holds the same state, spec and meta."""
    path, net = saved
    loaded = load_model(path)
    x = np.random.default_rng(1).integers(0, 256, (4, 1, 6, 6)).astype(np.uint8)
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    a, b = net.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert loaded.spec == net.spec
    assert read_meta(path) == {"dataset": "toy", "test_accuracy": 0.5}


def test_file_layout(saved):
    """The file carries the format name, version, JSON spec and one dataset per state path."""
    path, net = saved
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and int(f.attrs["version"]) == VERSION
        assert json.loads(f.attrs["spec"])["arch"] == "resnet18"
        assert set(f["state"]) == set(net.state_dict())


def test_written_atomically_without_leftovers(tmp_path):
    """Saving leaves only the model file in the folder (no temporary files), creates missing
    folders, gives the file ordinary permissions and replaces an existing file."""
    path = tmp_path / "sub" / "m.h5"
    save_model(path, build_net(SPEC, seed=1))
    save_model(path, _trained_looking_net(2))
    assert sorted(os.listdir(path.parent)) == ["m.h5"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    np.testing.assert_array_equal(load_model(path).mean, np.float32([0.4]))


def test_failed_write_keeps_previous_file(saved, monkeypatch):
    """If writing fails midway the old model is untouched and no temporary file remains."""
    path, net = saved
    before = path.read_bytes()
    other = _trained_looking_net(3)

    def broken():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(other, "state_dict", broken)
    with pytest.raises(RuntimeError):
        save_model(path, other)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


# -- bad files -----------------------------------------------------------------------------------
def _error(path):
    with pytest.raises(UserError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    """A path with no file is reported as such."""
    assert "no model file" in _error(tmp_path / "nothing.h5")


def test_not_hdf5(tmp_path):
    """A text file is not a readable HDF5 file."""
    path = tmp_path / "model.h5"
    path.write_text("this is not a model\n" * 20)
    assert "HDF5" in _error(path)


def test_truncated_file(saved):
    """A file cut in half is refused with a UserError naming the file."""
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    assert str(path) in _error(path)


def test_hdf5_without_format_attribute(tmp_path):
    """Some other HDF5 file (no npdc format attribute) is not a model file."""
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    assert "not an npdc model file" in _error(path)


def test_wrong_version(saved):
    """A version this reader does not know is refused, naming both versions."""
    path, _ = saved
    with h5py.File(path, "a") as f:
        f.attrs["version"] = VERSION + 1
    message = _error(path)
    assert f"version {VERSION + 1}" in message and f"version {VERSION}" in message


def test_wrong_shape_entry_names_the_path(saved):
    """One mis-shaped state entry is refused with its path in the message."""
    path, _ = saved
    with h5py.File(path, "a") as f:
        del f["state"]["res3a_2b.W"]
        f["state"].create_dataset("res3a_2b.W", data=np.zeros((4, 4, 1, 1), np.float32))
    message = _error(path)
    assert "res3a_2b.W" in message and "shape" in message


def test_missing_state_entry_names_the_path(saved):
    """A state entry that is absent is refused with its path in the message."""
    path, _ = saved
    with h5py.File(path, "a") as f:
        del f["state"]["fc5_bn.running_mean"]
    assert "fc5_bn.running_mean" in _error(path)


def test_missing_state_group_is_damaged(saved):
    """A model file without its state group is a damaged file, not a traceback."""
    path, _ = saved
    with h5py.File(path, "a") as f:
        del f["state"]
    assert "damaged" in _error(path)


@pytest.mark.parametrize("spec, words", [('["resnet18"]', "spec"),
                                          ('{"arch": "vgg16"}', "vgg16"),
                                          ('{"arch": "resnet18", ', "damaged"),
                                          (None, "damaged")])
def test_bad_spec(saved, spec, words):
    """A spec that is not an object, names an unknown architecture, is not JSON, or is missing
    is a UserError."""
    path, _ = saved
    with h5py.File(path, "a") as f:
        if spec is None:
            del f.attrs["spec"]
        else:
            f.attrs["spec"] = spec
    assert words in _error(path)


def test_non_integer_version(saved):
    """A version attribute that is not a number is refused with a UserError (load_model promises
    a one-line UserError for any problem with the file), not a ValueError traceback."""
    path, _ = saved
    with h5py.File(path, "a") as f:
        f.attrs["version"] = "one"
    assert "version" in _error(path)
