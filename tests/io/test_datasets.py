"""Tests for npdc.io.datasets: IDX/npz/HDF5 loading, validation errors and channel statistics."""

import gzip
import pickle

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.errors import UserError
from npdc.io import datasets
from npdc.engine.images import as_float, channel_stats
from npdc.io.datasets import Dataset, load_dataset, read_idx

TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}
SPLITS = ("train", "test")


def idx_bytes(array):
    """Encode an array in the IDX format (big-endian header and data)."""
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes()
    return header + dims + body


def write_idx(path, array, compress=False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def sample_array(rng, dtype, shape):
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


def write_mnist_dir(folder, n_train=6, n_test=4, size=(5, 7), compress=True, splits=SPLITS):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    made = {}
    counts = {"train": n_train, "test": n_test}
    for split in splits:
        prefix = "train" if split == "train" else "t10k"
        suffix = ".gz" if compress else ""
        images = rng.integers(0, 256, size=(counts[split], *size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=counts[split], dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        made[split] = (images, labels)
    return made


# --- IDX parser -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(TYPE_CODES), ids=str)
def test_idx_round_trip_every_type_gz_and_raw(tmp_path, dtype):
    original = sample_array(np.random.default_rng(1), dtype, (3, 4, 5))
    raw = read_idx(write_idx(tmp_path / "a.idx", original))
    packed = read_idx(write_idx(tmp_path / "a.idx.gz", original, compress=True))
    for loaded in (raw, packed):
        assert loaded.dtype == dtype and loaded.dtype.isnative
        assert loaded.shape == (3, 4, 5)
        np.testing.assert_array_equal(loaded, original)
    assert raw.flags.writeable


def test_gzip_detected_by_magic_without_suffix(tmp_path):
    original = np.arange(12, dtype=np.int16).reshape(3, 4) - 6
    path = tmp_path / "plain-name"
    path.write_bytes(gzip.compress(idx_bytes(original)))
    np.testing.assert_array_equal(read_idx(path), original)


def _damaged(kind):
    good = idx_bytes(np.arange(10, dtype=np.uint8))
    return {
        "truncated": good[:-1],
        "trailing": good + b"\x00",
        "bad_magic": b"\x01" + good[1:],
        "bad_type": good[:2] + b"\x07" + good[3:],
        "short_header": good[:6],
        "empty": b"",
        "bad_gzip": gzip.compress(good)[:-5],
    }[kind]


@pytest.mark.parametrize(
    "kind", ["truncated", "trailing", "bad_magic", "bad_type", "short_header", "empty", "bad_gzip"]
)
def test_damaged_idx_raises_user_error_naming_file(tmp_path, kind):
    path = tmp_path / f"broken-{kind}"
    path.write_bytes(_damaged(kind))
    with pytest.raises(UserError, match=f"broken-{kind}"):
        read_idx(path)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(list(TYPE_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    compress=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_idx_round_trip_property(tmp_path_factory, dtype, shape, compress, seed):
    original = sample_array(np.random.default_rng(seed), dtype, tuple(shape))
    path = write_idx(tmp_path_factory.mktemp("idx") / "x.idx", original, compress)
    loaded = read_idx(path)
    assert loaded.dtype == dtype and loaded.shape == tuple(shape)
    np.testing.assert_array_equal(loaded, original)


# --- IDX directories and shipped data ----------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory_loads_both_splits(tmp_path, compress):
    made = write_mnist_dir(tmp_path / "digits", compress=compress)
    ds = load_dataset(str(tmp_path / "digits"))
    assert ds.name == "digits"
    assert ds.x_train.shape == (6, 1, 5, 7) and ds.x_train.dtype == np.uint8
    assert ds.y_test.dtype == np.int64 and ds.y_test.shape == (4,)
    np.testing.assert_array_equal(ds.x_train[:, 0], made["train"][0])
    np.testing.assert_array_equal(ds.y_test, made["test"][1])
    assert ds.image_shape == (1, 5, 7)


def test_gz_and_raw_directories_are_equivalent(tmp_path):
    write_mnist_dir(tmp_path / "gz", compress=True)
    write_mnist_dir(tmp_path / "raw", compress=False)
    zipped, plain = load_dataset(str(tmp_path / "gz")), load_dataset(str(tmp_path / "raw"))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(zipped, key), getattr(plain, key))


def test_missing_test_split_is_none_and_require_names_dataset(tmp_path):
    write_mnist_dir(tmp_path / "only-train", splits=("train",))
    ds = load_dataset(str(tmp_path / "only-train"))
    assert ds.x_test is None and ds.y_test is None
    x, y = ds.require("train")
    assert len(x) == len(y) == 6
    with pytest.raises(UserError, match="dataset 'only-train' has no test split"):
        ds.require("test")
    with pytest.raises(UserError, match="unknown split"):
        ds.require("validation")


def test_images_without_labels_is_error(tmp_path):
    write_mnist_dir(tmp_path / "d", splits=("train",))
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="train-labels-idx1-ubyte"):
        load_dataset(str(tmp_path / "d"))


def test_directory_without_idx_files_is_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no IDX files"):
        load_dataset(str(tmp_path / "empty"))


def test_idx_label_count_mismatch_is_error(tmp_path):
    write_mnist_dir(tmp_path / "d", splits=("train",))
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), compress=True)
    with pytest.raises(UserError, match="6 train images but 5 train labels"):
        load_dataset(str(tmp_path / "d"))


def test_corrupt_file_inside_directory_names_that_file(tmp_path):
    write_mnist_dir(tmp_path / "d", compress=False)
    target = tmp_path / "d" / "t10k-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:-3])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset(str(tmp_path / "d"))


def test_shipped_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10000, 1, 28, 28) and ds.x_test.dtype == np.uint8
    for labels in (ds.y_train, ds.y_test):
        assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == 9
    assert ds.num_classes == 10 and ds.image_shape == (1, 28, 28)


def test_unknown_shipped_name_lists_shipped_datasets():
    with pytest.raises(UserError, match="no-such-set.*fashion-mnist"):
        load_dataset("no-such-set")


def test_missing_file_path_is_error(tmp_path):
    with pytest.raises(UserError, match="missing.npz"):
        load_dataset(str(tmp_path / "missing.npz"))


def test_unsupported_file_type_is_error(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(UserError, match="data.csv.*unsupported"):
        load_dataset(str(tmp_path / "data.csv"))


def test_data_dir_points_at_repository_data_folder():
    assert datasets.DATA_DIR.name == "data"
    assert (datasets.DATA_DIR.parent / "npdc" / "io" / "datasets.py").is_file()
    assert "models" not in datasets.shipped_names()


# --- npz and HDF5 ------------------------------------------------------------------------------


def save_arrays(path, arrays):
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as handle:
            for key, value in arrays.items():
                handle[key] = value


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5"])
@pytest.mark.parametrize("layout", ["NHW", "NCHW"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.float16])
def test_npz_and_h5_layouts_and_dtypes(tmp_path, suffix, layout, dtype):
    rng = np.random.default_rng(2)
    shape = (5, 6, 6) if layout == "NHW" else (5, 3, 6, 6)
    images = (rng.random(shape) * 255).astype(dtype)
    labels = rng.integers(0, 4, size=5).astype(np.int32)
    path = tmp_path / f"set{suffix}"
    arrays = {"x_train": images, "y_train": labels, "x_test": images[:2], "y_test": labels[:2]}
    save_arrays(path, arrays)
    ds = load_dataset(str(path))
    expected_dtype = np.uint8 if dtype == np.uint8 else np.float32
    channels = 1 if layout == "NHW" else 3
    assert ds.name == "set"
    assert ds.x_train.dtype == expected_dtype and ds.x_train.shape == (5, channels, 6, 6)
    assert ds.x_test.shape == (2, channels, 6, 6)
    np.testing.assert_array_equal(ds.x_train.reshape(images.shape), images.astype(expected_dtype))
    assert ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, labels)
    assert ds.image_shape == (channels, 6, 6)
    assert ds.num_classes == int(labels.max()) + 1


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_npz_h5_missing_split_is_none(tmp_path, suffix):
    path = tmp_path / f"train-only{suffix}"
    save_arrays(path, {"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.arange(3)})
    ds = load_dataset(str(path))
    assert ds.x_test is None and ds.y_test is None
    with pytest.raises(UserError, match="'train-only' has no test split"):
        ds.require("test")


def train_pair(images, labels):
    return {"x_train": images, "y_train": labels}


FLAT = np.zeros((2, 4, 4), np.uint8)
BAD_ARRAYS = {
    "count_mismatch": (train_pair(FLAT, np.arange(3)), "2 train images but 3"),
    "negative_label": ({"x_test": FLAT, "y_test": np.array([0, -1])}, "negative"),
    "float_labels": (train_pair(FLAT, np.zeros(2)), "expected integers"),
    "labels_2d": (train_pair(FLAT, np.zeros((2, 1), int)), "expected 1-D"),
    "images_2d": (train_pair(FLAT[:, 0], np.zeros(2, int)), r"expected \(N,C,H,W\)"),
    "int_images": (train_pair(FLAT.astype(np.int16), np.zeros(2, int)), "int16"),
    "missing_labels": ({"x_train": FLAT}, "found x_train but not y_train"),
    "missing_images": ({"y_test": np.zeros(2, int)}, "found y_test but not x_test"),
    "no_keys": ({"images": FLAT}, "none of the keys"),
    "shape_mismatch": (
        {**train_pair(FLAT, np.zeros(2, int)), "x_test": FLAT[:, :3], "y_test": np.zeros(2, int)},
        "differ in shape",
    ),
    "val_shape": ({**train_pair(FLAT, np.zeros(2, int)), "x_val": FLAT[:, :3], "y_val": np.zeros(2, int)},
                  "differ in shape"),
    "val_alone": ({"x_val": FLAT, "y_val": np.zeros(2, int), "x_test": FLAT, "y_test": np.zeros(2, int)},
                  "needs a training split"),
}


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_dataset_with_its_own_validation_split_holds_nothing_out(tmp_path, suffix):
    """x_val/y_val are the validation images as given; the whole training split is kept."""
    arrays = {**train_pair(FLAT, np.zeros(2, int)), "x_val": FLAT[:1] + 1, "y_val": np.array([1])}
    path = tmp_path / f"d{suffix}"
    save_arrays(path, arrays)
    data = load_dataset(str(path))
    x, y, x_val, y_val = data.held_out(0.5, 0)
    assert len(x) == 2 and np.array_equal(y_val, [1]) and np.array_equal(x_val, data.x_val)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_invalid_arrays_raise_user_error(tmp_path, suffix, case):
    arrays, message = BAD_ARRAYS[case]
    path = tmp_path / f"bad-{case}{suffix}"
    save_arrays(path, arrays)
    with pytest.raises(UserError, match=message) as caught:
        load_dataset(str(path))
    assert f"bad-{case}{suffix}" in str(caught.value)


def test_npz_object_array_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    labels = np.empty(2, dtype=object)
    labels[:] = [0, 1]
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=labels)
    with pytest.raises(UserError, match="objects.npz.*y_train"):
        load_dataset(str(path))


def test_npz_that_is_a_pickle_is_refused(tmp_path):
    path = tmp_path / "sneaky.npz"
    path.write_bytes(pickle.dumps({"x_train": [1, 2, 3]}))
    with pytest.raises(UserError, match="sneaky.npz"):
        load_dataset(str(path))


def test_truncated_npz_is_refused(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez_compressed(path, x_train=np.zeros((50, 8, 8), np.uint8), y_train=np.zeros(50, int))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="cut.npz"):
        load_dataset(str(path))


def test_single_npy_renamed_npz_is_refused(tmp_path):
    path = tmp_path / "single.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(UserError, match="single.npz.*single array"):
        load_dataset(str(path))


def test_non_hdf5_file_is_refused(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not hdf5 at all")
    with pytest.raises(UserError, match="garbage.h5.*HDF5"):
        load_dataset(str(path))


def test_h5_group_instead_of_array_is_refused(tmp_path):
    path = tmp_path / "grouped.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("x_train")
        handle["y_train"] = np.zeros(2, int)
    with pytest.raises(UserError, match="grouped.h5.*x_train.*group"):
        load_dataset(str(path))


# --- conversions and statistics ----------------------------------------------------------------


def test_as_float_scales_uint8_and_keeps_float32():
    pixels = np.array([0, 51, 255], dtype=np.uint8)
    converted = as_float(pixels)
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, np.array([0.0, 0.2, 1.0], dtype=np.float32))
    already = np.linspace(-1, 1, 7, dtype=np.float32)
    assert as_float(already) is already
    assert as_float(already.astype(np.float64)).dtype == np.float32
    with pytest.raises(UserError, match="int32"):
        as_float(np.zeros(3, np.int32))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("batch", [1, 3, 4096])
def test_channel_stats_matches_numpy(dtype, batch):
    rng = np.random.default_rng(3)
    if dtype == np.uint8:
        x = rng.integers(0, 256, size=(10, 3, 5, 4), dtype=np.uint8)
    else:
        scale = np.array([1.0, 5.0, 0.1])[None, :, None, None]
        x = (rng.standard_normal((10, 3, 5, 4)) * scale + 7).astype(dtype)
    mean, std = channel_stats(x, batch=batch)
    reference = as_float(x).astype(np.float64)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (3,)
    np.testing.assert_allclose(mean, reference.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std, reference.std(axis=(0, 2, 3)), rtol=1e-6, atol=1e-6)


def test_channel_stats_maps_flat_channel_to_unit_std():
    x = np.zeros((7, 2, 3, 3), dtype=np.float32)
    x[:, 0] = 0.1
    x[:, 1] = np.arange(7, dtype=np.float32)[:, None, None]
    mean, std = channel_stats(x, batch=2)
    assert std[0] == 1.0
    assert mean[0] == pytest.approx(0.1)
    assert std[1] == pytest.approx(2.0)


def test_channel_stats_rejects_bad_input():
    with pytest.raises(UserError, match="\\(N, C, H, W\\)"):
        channel_stats(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(UserError, match="batch"):
        channel_stats(np.zeros((1, 1, 2, 2), np.uint8), batch=0)


def test_num_classes_uses_both_splits():
    images = np.zeros((2, 1, 2, 2), np.uint8)
    ds = Dataset("tiny", images, np.array([0, 1]), images, np.array([4, 2]))
    assert ds.num_classes == 5
    empty = Dataset("void", None, None, None, None)
    with pytest.raises(UserError, match="'void'"):
        empty.image_shape
    with pytest.raises(UserError, match="'void'"):
        empty.num_classes
