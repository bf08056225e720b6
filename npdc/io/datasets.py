"""Load image-classification datasets (IDX, CIFAR-10 python batches, .npz, HDF5) into NumPy arrays,
and image folders (npdc.io.imagefolder) as arrays decoded batch by batch.

Images keep their stored dtype (usually uint8) so 60k images cost 47 MB instead of 188 MB as
float32; training code converts one batch at a time with `npdc.engine.images.as_float`. Every malformed input is
reported as a one-line UserError naming the file, never as a raw parser traceback.

What a file's headers ask for (IDX dimensions, .npy headers inside an .npz, HDF5 dataset shapes,
the inflated size of a gzip stream) is taken from the file's Budget (npdc.limits) before it is
allocated; float images must be finite, labels non-negative and below 2**31.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from npdc.engine.images import take_rows
from npdc.errors import UserError
from npdc.io.bounded import gunzip
from npdc.io.imagefolder import is_image_folder, load_folder
from npdc.io.npz import read_npz
from npdc.io.safe_pickle import MAX_DIMS, SAFE_KINDS, check_shape, restricted_loads
from npdc.limits import Budget

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.2  # of the training split, held out for decisions unless a caller says otherwise
                   # (12,000 of Fashion-MNIST's images: a drop's noise is sqrt(2) smaller than at 0.1)
VAL_SEED = 0
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_GZIP_MAGIC = b"\x1f\x8b"
MAX_LABEL = (1 << 31) - 1
_FINITE_CHUNK = 1 << 22  # elements checked at a time, so the check costs no copy of the images


@dataclass
class Dataset:
    """Train and test splits of one dataset, and a validation split when the dataset has its own
    (x_val/y_val); a split that was not supplied is None. An image folder's images are
    FolderImages (decoded when indexed) and its class names are `classes`."""

    name: str
    x_train: np.ndarray | None
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    classes: tuple[str, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        for images in (self.x_train, self.x_test):
            if images is not None:
                channels, height, width = (int(d) for d in images.shape[1:])
                return channels, height, width
        raise UserError(f"dataset '{self.name}' contains no images")

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        largest = [int(y.max()) for y in (self.y_train, self.y_test) if y is not None and y.size]
        if not largest:
            raise UserError(f"dataset '{self.name}' contains no labels")
        return max(largest) + 1

    def require(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}': expected 'train' or 'test'")
        images, labels = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        if images is None or labels is None:
            raise UserError(f"dataset '{self.name}' has no {split} split")
        return images, labels

    def held_out(self, fraction: float = VAL_FRACTION, seed: int = VAL_SEED):
        """(x_fit, y_fit, x_val, y_val): the training split without, and with only, a seeded
        `fraction` of its images. The same fraction and seed always hold out the same images, so
        a model trained on x_fit can be judged on x_val; the test split is never touched. A
        dataset with its own validation split gives the whole training split and that one."""
        x, y = self.require("train")
        if self.x_val is not None:
            return x, y, self.x_val, self.y_val
        fit, val = holdout_indices(len(x), fraction, seed)
        return take_rows(x, fit), y[fit], take_rows(x, val), y[val]

    def fit_to(self, shape) -> "Dataset":
        """This dataset with an image folder's images made as a model taking `shape` (C, H, W)
        wants them (its channels and crop, unless given when loading); other datasets as they are."""
        lazy = {k: v.fitted(shape) for k in ("x_train", "x_val", "x_test")
                if hasattr(v := getattr(self, k), "fitted")}
        return replace(self, **lazy) if lazy else self


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) sorted indices of n images: round(n * fraction) of them drawn by a
    permutation seeded with `seed`."""
    if not 0 <= fraction < 1:
        raise UserError(f"the held-out fraction must be in [0, 1), not {fraction}")
    k = int(round(n * fraction))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])


def shipped_names() -> list[str]:
    """Folders under DATA_DIR that hold at least one IDX file."""
    if not DATA_DIR.is_dir():
        return []
    stems = [stem for pair in _IDX_NAMES.values() for stem in pair]
    return sorted(
        folder.name
        for folder in DATA_DIR.iterdir()
        if folder.is_dir() and any(_find_idx(folder, stem) for stem in stems)
    )


def load_dataset(spec: str, shape=None, resize=None) -> Dataset:
    """Load a dataset from a path (an image folder, IDX or CIFAR-10 batch directory, .npz,
    .h5/.hdf5) or a shipped dataset name.

    An image folder's images are made `shape` (C, H, W; default 3x224x224, refitted to a model
    by Dataset.fit_to) with the shorter side resized to `resize` first; other datasets refuse
    both. Array files hold x_train/y_train/x_test/y_test (and x_val/y_val, a validation split); 4-D images are taken as (N, C, H, W), since
    channels-last cannot be told apart reliably, so transpose NHWC data before saving it.
    """
    path = Path(spec).expanduser()
    if is_image_folder(path):
        splits, classes = load_folder(path, shape, resize)
        return Dataset(path.resolve().name, *splits.get("train", (None, None)),
                       *splits.get("test", (None, None)), *splits.get("val", (None, None)),
                       classes=tuple(classes))
    if shape is not None or resize is not None:
        raise UserError(f"{spec}: --input-shape and --resize apply to image folders "
                        "(train/CLASS/*.jpg), not to this dataset")
    if path.exists():
        if path.is_dir():
            if any((path / n).is_file() for n in (*_CIFAR_TRAIN, _CIFAR_TEST)):
                return _load_cifar_dir(path, path.resolve().name)
            return _load_idx_dir(path, path.resolve().name)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _load_npz(path)
        if suffix in (".h5", ".hdf5"):
            return _load_h5(path)
        raise UserError(f"{path}: unsupported file type, expected a directory, .npz, .h5 or .hdf5")
    shipped = shipped_names()
    if spec in shipped:
        return _load_idx_dir(DATA_DIR / spec, spec)
    listing = ", ".join(shipped) if shipped else "none"
    raise UserError(f"dataset '{spec}' is not an existing path or shipped name ({listing})")


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or gzipped) into a native-endian array."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    budget = Budget(path, len(raw))
    if str(path).lower().endswith(".gz") or raw[:2] == _GZIP_MAGIC:
        raw = gunzip(raw, path, budget)
    if len(raw) < 4:
        raise UserError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path}: not an IDX file (magic starts {raw[:2].hex()}, expected 0000)")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise UserError(f"{path}: unknown IDX type code 0x{raw[2]:02x}")
    ndim = raw[3]
    if ndim > MAX_DIMS:
        raise UserError(f"{path}: IDX header declares {ndim} dimensions, more than {MAX_DIMS}")
    data_start = 4 + 4 * ndim
    if len(raw) < data_start:
        raise UserError(f"{path}: IDX header truncated ({ndim} dimensions need {data_start} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=object))  # Python ints: a product cannot wrap
    expected = count * dtype.itemsize
    actual = len(raw) - data_start
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise UserError(f"{path}: IDX data {problem} ({actual} bytes, {shape} needs {expected})")
    values = np.frombuffer(raw, dtype=dtype, count=count, offset=data_start)
    budget.take(expected, f"IDX array of shape {shape}")
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _check_pair(source: object, x_name: str, y_name: str, x: object, y: object) -> bool:
    """True if both halves of a split are present, False if neither; a lone half is an error."""
    if x is None and y is None:
        return False
    if x is None or y is None:
        have, lack = (y_name, x_name) if x is None else (x_name, y_name)
        raise UserError(f"{source}: found {have} but not {lack}")
    return True


def _load_idx_dir(folder: Path, name: str) -> Dataset:
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (image_stem, label_stem) in _IDX_NAMES.items():
        image_file, label_file = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
        if _check_pair(folder, image_stem, label_stem, image_file, label_file):
            splits[split] = (read_idx(image_file), read_idx(label_file))
    if not splits:
        wanted = ", ".join(stem for pair in _IDX_NAMES.values() for stem in pair)
        raise UserError(f"{folder}: no IDX files found (expected {wanted}, optionally .gz)")
    return _assemble(name, folder, splits)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: a pickled dict with b'data' (N, 3072) uint8, channel-major
    32x32 RGB, and b'labels'. Read by npdc's restricted unpickler, so it never runs code."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    batch = restricted_loads(raw, path, encoding="bytes")
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR batch (holds {type(batch).__name__}, expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise UserError(f"{path}: not a CIFAR batch (needs b'data' and b'labels')")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: CIFAR data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: unusable CIFAR labels ({exc})") from None
    return data.reshape(-1, 3, 32, 32), _checked_labels(labels, len(data), path, "batch")


def _load_cifar_dir(folder: Path, name: str) -> Dataset:
    """data_batch_1..5 (those present) form the train split, test_batch the test split."""
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    train = [read_cifar_batch(folder / n) for n in _CIFAR_TRAIN if (folder / n).is_file()]
    if train:
        splits["train"] = (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]))
    if (folder / _CIFAR_TEST).is_file():
        splits["test"] = read_cifar_batch(folder / _CIFAR_TEST)
    return _assemble(name, folder, splits)


def _load_npz(path: Path) -> Dataset:
    return _assemble_keyed(path, read_npz(path, ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")))


def _load_h5(path: Path) -> Dataset:
    import h5py

    arrays, budget = {}, Budget.for_path(path)
    try:
        with h5py.File(path, "r") as handle:
            for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
                if key not in handle:
                    continue
                node = handle[key]
                if not isinstance(node, h5py.Dataset):
                    raise UserError(f"{path}: '{key}' is an HDF5 group, expected an array")
                if node.dtype.kind not in SAFE_KINDS or node.dtype.names or node.dtype.subdtype:
                    raise UserError(f"{path}: '{key}' holds {node.dtype}, expected numbers")
                shape = check_shape(node.shape or (), f"{path}: '{key}' shape")
                # An unwritten dataset stores nothing yet reads as its full shape of fill values.
                budget.take(int(np.prod(shape, dtype=object)) * node.dtype.itemsize,
                            f"'{key}' of shape {shape} ({node.id.get_storage_size():,} bytes stored)")
                arrays[key] = np.asarray(node[()])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc})") from None
    return _assemble_keyed(path, arrays)


def _assemble_keyed(path: Path, arrays: dict[str, np.ndarray]) -> Dataset:
    splits = {}
    for split in SPLITS:
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if _check_pair(path, f"x_{split}", f"y_{split}", x, y):
            splits[split] = (x, y)
    if not splits:
        raise UserError(f"{path}: contains none of the keys x_train/y_train/x_test/y_test")
    return _assemble(path.stem, path, splits)


def _assemble(name: str, source: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Dataset:
    checked: dict[str, np.ndarray] = {}
    for split, (images, labels) in splits.items():
        checked[f"x_{split}"] = _checked_images(images, source, split)
        checked[f"y_{split}"] = _checked_labels(labels, len(checked[f"x_{split}"]), source, split)
    shapes = {split: checked[f"x_{split}"].shape[1:] for split in SPLITS if f"x_{split}" in checked}
    if len(set(shapes.values())) > 1:
        raise UserError(f"{source}: the splits' images differ in shape: "
                        + ", ".join(f"{split} {shape}" for split, shape in shapes.items()))
    if "x_val" in checked and "x_train" not in checked:
        raise UserError(f"{source}: a validation split (x_val) needs a training split (x_train)")
    return Dataset(name, *(checked.get(key) for key in ("x_train", "y_train", "x_test", "y_test")),
                   x_val=checked.get("x_val"), y_val=checked.get("y_val"))


def _checked_images(images: np.ndarray, source: Path, split: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim != 4:
        raise UserError(
            f"{source}: {split} images have shape {images.shape}, expected (N,C,H,W) or (N,H,W)"
        )
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        return check_finite(images.astype(np.float32, copy=False), source, f"{split} images")
    raise UserError(f"{source}: {split} images have dtype {images.dtype}, expected uint8 or float")


def check_finite(images: np.ndarray, source: object, what: str = "images") -> np.ndarray:
    """`images`, refused in one line if they are floats holding NaN or infinity (checked a chunk
    at a time, so no image-sized mask is allocated)."""
    if not np.issubdtype(images.dtype, np.floating):
        return images
    flat = images.reshape(-1)
    for start in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[start:start + _FINITE_CHUNK]
        if not np.isfinite(chunk).all():
            bad = start + int(np.argmin(np.isfinite(chunk)))
            raise UserError(f"{source}: {what} hold {flat[bad]} at element {bad:,}; "
                            "images must be finite numbers")
    return images


def _checked_labels(labels: np.ndarray, count: int, source: Path, split: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: {split} labels have dtype {labels.dtype}, expected integers")
    if labels.ndim != 1:
        raise UserError(f"{source}: {split} labels have shape {labels.shape}, expected 1-D")
    if len(labels) != count:
        raise UserError(f"{source}: {count} {split} images but {len(labels)} {split} labels")
    if labels.size and int(labels.min()) < 0:
        raise UserError(f"{source}: {split} labels contain negative value {int(labels.min())}")
    if labels.size and int(labels.max()) > MAX_LABEL:  # compared before a cast could wrap it
        raise UserError(f"{source}: {split} labels contain {int(labels.max())}, above {MAX_LABEL}")
    return labels.astype(np.int64, copy=False)
