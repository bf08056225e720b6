"""Generators of hostile and careless input files, one function per case, grouped by class.

Each generator writes its file(s) under a folder and returns the argv of the `python -m npdc`
command that reads them (the real entry point for that kind of file). Every file is at most
2 MB; what its headers claim is what would have made npdc allocate gigabytes or crash.
`CASES` maps class -> {case name: generator}; `generate_all(folder)` writes them all and returns
[(class, case, argv)].
"""

import gzip
import io
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
from numpy.lib import format as npy_format

from tests.io.torch_fakes import (glob, num, state_pickle, storage, tensor, text, tup,
                                  write_legacy, write_zip)

DATA = Path(__file__).resolve().parents[1] / "data"
NPDC = DATA / "npdc" / "version1.npdc"          # a real .npdc model, for evaluate and infer
CHECKPOINT = DATA / "torch" / "cifar_resnet20.pt"
BOMB_BYTES = 96 << 20                           # more than the 64 MiB any small file may ask for


def _import(path):
    return ["import", str(path), "--arch", "cifar-resnet20", "--out", str(path.with_suffix(".h5"))]


def _evaluate(path):
    return ["evaluate", str(NPDC), "--data", str(path)]


def _infer(path):
    return ["infer", str(NPDC), str(path), "--out", str(path.parent / f"{path.stem}_p.npz")]


def _zeros_member(archive, name, nbytes, prefix=b""):
    """A deflated member of `prefix` and `nbytes` zero bytes, written in 1 MiB pieces."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w") as f:
        f.write(prefix)
        for start in range(0, nbytes, 1 << 20):
            f.write(bytes(min(1 << 20, nbytes - start)))


# -- 1. PyTorch checkpoints (import) --------------------------------------------------------------
def broadcast_tensors(d):
    """Sixteen stride-0 views of one 8-byte storage, 32 MiB each once copied."""
    views = {f"w{i}": tensor(storage("0", count=2), 0, (1 << 23,), (0,)) for i in range(16)}
    return _import(write_zip(d / "broadcast.pt", state_pickle(views), {"0": bytes(8)}))


def broadcast_legacy(d):
    views = {f"w{i}": tensor(storage("k", count=1, legacy=True), 0, (1 << 12, 1 << 11), (0, 0))
             for i in range(16)}
    return _import(write_legacy(d / "broadcast_legacy.pt", state_pickle(views), [("k", 1, bytes(4))]))


def empty_classifier(d):
    """An fc.weight of shape (4e6, 0): 4 million classes, from a 0.6 KB file."""
    state = {"fc.weight": tensor(storage("0", count=0), 0, (4_000_000, 0), (0, 1))}
    return _import(write_zip(d / "empty_fc.pt", state_pickle(state), {"0": b""}))


def empty_stem(d):
    """A conv1.weight of shape (600, 3, 0, 0): a network 600 channels wide."""
    state = {"conv1.weight": tensor(storage("0", count=0), 0, (600, 3, 0, 0), (0, 0, 0, 0))}
    return _import(write_zip(d / "empty_conv1.pt", state_pickle(state), {"0": b""}))


def empty_absurd(d):
    state = {"w": tensor(storage("0", count=0), 0, (1 << 30, 1 << 20, 0), (0, 0, 0))}
    return _import(write_zip(d / "empty_absurd.pt", state_pickle(state), {"0": b""}))


def tensor_65_dims(d):
    state = {"w": tensor(storage("0", count=1), 0, (1,) * 65, (0,) * 65)}
    return _import(write_zip(d / "dims65.pt", state_pickle(state), {"0": bytes(4)}))


def zip_bomb_storage(d):
    """A storage member that honestly declares 96 MiB, deflated to ~100 KB."""
    path = d / "bomb.pt"
    count = BOMB_BYTES // 4
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        state = {"w": tensor(storage("0", count=count), 0, (count,), (1,))}
        z.writestr("archive/data.pkl", state_pickle(state))
        _zeros_member(z, "archive/data/0", BOMB_BYTES)
    return _import(path)


def zip_bomb_pickle(d):
    """data.pkl itself inflates to 96 MiB (a pickle followed by zeros)."""
    path = d / "bomb_pkl.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        _zeros_member(z, "archive/data.pkl", BOMB_BYTES, prefix=state_pickle({}))
    return _import(path)


def zip_declared_lie(d):
    """data.pkl's headers declare 3 GB uncompressed for a few compressed bytes."""
    path = write_zip(d / "lie.pt", state_pickle({}), {})
    _patch_sizes(path, b"archive/data.pkl", 3 << 30)
    return _import(path)


def zip_longer_than_declared(d):
    """A deflated data.pkl that yields 1 MiB but declares 16 bytes."""
    path = d / "longer.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", state_pickle({}) + bytes(1 << 20))
    _patch_sizes(path, b"archive/data.pkl", 16)
    return _import(path)


def newobj_dtype_checkpoint(d):
    state = b"\x80\x02}(" + text("w") + glob("numpy", "dtype") + tup(text("f8")) + b"\x81u."
    return _import(write_zip(d / "newobj.pt", state, {}))


def _patch_sizes(path, name, size):
    """Rewrite the uncompressed size of member `name` in its local and central headers."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := data.find(signature, at)) >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                data[at + offset:at + offset + 4] = struct.pack("<I", size)
            at += 4
    path.write_bytes(bytes(data))


# -- 2. the restricted unpickler (a CIFAR batch folder, read by evaluate) ---------------------------
def _cifar(d, name, pickled):
    folder = d / name
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickled)
    return _evaluate(folder)


def _array_pickle(shape_ops):
    """A protocol-2 pickle of _reconstruct(ndarray, (0,), b'b') with BUILD state (1, shape,
    dtype('u1'), False, b'') where the shape is written by `shape_ops`."""
    dtype = glob("numpy", "dtype") + tup(text("u1"), b"\x89", b"\x88") + b"R" \
        + tup(num(3), text("|"), b"NNN", num(-1), num(-1), num(0)) + b"b"
    head = (glob("numpy.core.multiarray", "_reconstruct")
            + tup(glob("numpy", "ndarray"), tup(num(0)), b"C\x01b") + b"R")
    return head + tup(num(1), shape_ops, dtype, b"\x89", b"C\x00") + b"b"


def _batch(data_ops):
    return b"\x80\x02}(" + b"C\x04data" + data_ops + b"C\x06labels" + b"]u."


def newobj_dtype(d):
    return _cifar(d, "newobj_dtype", _batch(glob("numpy", "dtype") + tup(text("u1")) + b"\x81"))


def newobj_reconstruct(d):
    return _cifar(d, "newobj_reconstruct", _batch(glob("numpy.core.multiarray", "_reconstruct") + b")\x81"))


def shape_2_64(d):
    huge = b"\x8a\x09" + (1 << 64).to_bytes(9, "little")
    return _cifar(d, "shape_2_64", _batch(_array_pickle(tup(huge, num(0)))))


def shape_65_dims(d):
    return _cifar(d, "shape_65", _batch(_array_pickle(tup(*[num(1)] * 65))))


def bytes_call(d):
    """builtins.bytes(2**30): a gigabyte from one call, were bytes() allowed arguments."""
    return _cifar(d, "bytes_call", _batch(glob("__builtin__", "bytes") + tup(num(1 << 30)) + b"R"))


def many_sets(d):
    """1.9 million EMPTY_SET opcodes in a list: one byte each in the file, 216 in memory."""
    return _cifar(d, "many_sets", b"\x80\x04(" + b"\x8f" * 1_900_000 + b"l.")


def memo_slot(d):
    return _cifar(d, "memo_slot", b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 30) + b".")


# -- 3. datasets (evaluate --data) ------------------------------------------------------------------
def _npy_header(descr, shape):
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _npz(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(f"{name}.npy", raw)
    return path


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _labels():
    return _npy(np.zeros(1, np.int64))


def npz_claims_2_48(d):
    return _evaluate(_npz(d / "claims.npz", {"x_test": _npy_header("|u1", (1 << 48,)), "y_test": _labels()}))


def npz_bomb(d):
    """x_test honestly 96 MiB of zeros, deflated to ~100 KB."""
    path = d / "npz_bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        header = _npy_header("|u1", (BOMB_BYTES // 1024, 1, 32, 32))
        _zeros_member(z, "x_test.npy", BOMB_BYTES, prefix=header)
        z.writestr("y_test.npy", _labels())
    return _evaluate(path)


def npz_65_dims(d):
    return _evaluate(_npz(d / "dims65.npz", {"x_test": _npy_header("|u1", (1,) * 65), "y_test": _labels()}))


def npz_object(d):
    return _evaluate(_npz(d / "object.npz", {"x_test": _npy_header("|O", (1, 1, 2, 2)), "y_test": _labels()}))


def h5_unwritten(d):
    """A 3 GB dataset that was created but never written: the file holds only its header."""
    path = d / "unwritten.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x_test", shape=(3 << 20, 1, 32, 32), dtype="u1")
        f["y_test"] = np.zeros(1, np.uint8)
    return _evaluate(path)


def idx_folder(d, name, images, labels):
    folder = d / name
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte").write_bytes(images)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return _evaluate(folder)


_IDX_LABELS = b"\0\0\x08\x01" + struct.pack(">I", 1) + b"\0"


def idx_65_dims(d):
    return idx_folder(d, "idx65", b"\0\0\x08\x41" + struct.pack(">I", 1) * 65 + b"\0", _IDX_LABELS)


def idx_wrapping_dims(d):
    """Four dims of 65536: 2**64 elements, 0 in 64-bit arithmetic, so 'no data' matched it."""
    return idx_folder(d, "idx_wrap", b"\0\0\x08\x04" + struct.pack(">I", 65536) * 4, _IDX_LABELS)


def idx_gzip_bomb(d):
    folder = d / "idx_bomb"
    folder.mkdir()
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0\0\x08\x03" + struct.pack(">III", BOMB_BYTES // 1024, 32, 32))
        for _ in range(BOMB_BYTES >> 20):
            f.write(bytes(1 << 20))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_IDX_LABELS)
    return _evaluate(folder)


def labels_2_63(d):
    """A uint64 label of 2**63, which a cast to int64 turns negative."""
    return _evaluate(_npz(d / "labels.npz", {"x_test": _npy(np.zeros((1, 1, 2, 2), np.uint8)),
                                             "y_test": _npy(np.array([1 << 63], np.uint64))}))


def images_nan(d):
    x = np.zeros((2, 1, 2, 2), np.float32)
    x[1, 0, 1, 1] = np.nan
    return _evaluate(_npz(d / "nan.npz", {"x_test": _npy(x), "y_test": _npy(np.zeros(2, np.int64))}))


def images_inf_h5(d):
    path = d / "inf.h5"
    with h5py.File(path, "w") as f:
        f["x_test"] = np.full((1, 1, 2, 2), np.inf, np.float64)
        f["y_test"] = np.zeros(1, np.int64)
    return _evaluate(path)


def images_inf_idx(d):
    images = b"\0\0\x0d\x03" + struct.pack(">III", 1, 2, 2) + np.full(4, -np.inf, ">f4").tobytes()
    return idx_folder(d, "idx_inf", images, _IDX_LABELS)


def _damaged_npz(d, name, cut=None):
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x_test.npy", _npy(np.arange(4096, dtype=np.uint8).reshape(1, 1, 64, 64)))
        z.writestr("y_test.npy", _labels())
    data = bytearray(raw.getvalue())
    if cut:
        data = data[:len(data) // 2]
    else:  # overwrite the middle of the first member's deflate stream
        data[60:120] = bytes(range(60))
    (d / name).write_bytes(bytes(data))
    return d / name


def npz_truncated(d):
    return _evaluate(_damaged_npz(d, "truncated.npz", cut=True))


def npz_damaged_deflate(d):
    return _evaluate(_damaged_npz(d, "deflate.npz"))


# -- 3b. infer's images ------------------------------------------------------------------------------
def infer_npy(d):
    (d / "images.npy").write_bytes(_npy(np.zeros((1, 1, 28, 28), np.float32)))
    return _infer(d / "images.npy")


def infer_truncated(d):
    return _infer(_damaged_npz(d, "infer_truncated.npz", cut=True))


def infer_damaged_deflate(d):
    return _infer(_damaged_npz(d, "infer_deflate.npz"))


def infer_claims_2_48(d):
    return _infer(_npz(d / "infer_claims.npz", {"x": _npy_header("<f4", (1 << 46, 1, 2, 2))}))


def infer_nan(d):
    x = np.full((1, 1, 28, 28), np.nan, np.float32)
    return _infer(_npz(d / "infer_nan.npz", {"x": _npy(x)}))


# -- 4. normalisation (import --mean/--std) ---------------------------------------------------------
def _normalised(d, option, values):
    return _import(CHECKPOINT)[:-1] + [str(d / "norm.h5"), option, values]


CASES = {
    "checkpoint": {f.__name__: f for f in (
        broadcast_tensors, broadcast_legacy, empty_classifier, empty_stem, empty_absurd,
        tensor_65_dims, zip_bomb_storage, zip_bomb_pickle, zip_declared_lie,
        zip_longer_than_declared, newobj_dtype_checkpoint)},
    "unpickler": {f.__name__: f for f in (
        newobj_dtype, newobj_reconstruct, shape_2_64, shape_65_dims, bytes_call, many_sets, memo_slot)},
    "dataset": {f.__name__: f for f in (
        npz_claims_2_48, npz_bomb, npz_65_dims, npz_object, h5_unwritten, idx_65_dims,
        idx_wrapping_dims, idx_gzip_bomb, labels_2_63, npz_truncated, npz_damaged_deflate)},
    "infer": {f.__name__: f for f in (
        infer_npy, infer_truncated, infer_damaged_deflate, infer_claims_2_48, infer_nan)},
    "finite": {
        "images_nan": images_nan, "images_inf_h5": images_inf_h5, "images_inf_idx": images_inf_idx,
        "mean_inf": lambda d: _normalised(d, "--mean", "inf,0,0"),
        "mean_nan": lambda d: _normalised(d, "--mean", "nan,0,0"),
        "std_zero": lambda d: _normalised(d, "--std", "0,1,1"),
        "std_inf": lambda d: _normalised(d, "--std", "1,inf,1")},
}


def generate_all(folder):
    """Write every case's files under `folder`; [(class, case, argv)] in a stable order."""
    folder = Path(folder)
    out = []
    for kind, cases in CASES.items():
        for name, make in cases.items():
            where = folder / kind / name
            where.mkdir(parents=True)
            out.append((kind, name, make(where)))
    return out
