"""Write a state_dict in PyTorch's zip checkpoint format, without PyTorch.

The layout is the one npdc.io.torch_checkpoint reads (see its docstring for the sources): a zip
archive, stored uncompressed, with the top folder `archive/` holding `data.pkl` (an OrderedDict
of tensors pickled with protocol 2), `byteorder` ("little"), one `data/<key>` per tensor with its
raw little-endian elements, and `version`. Each tensor is pickled as the call
`torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` whose storage
is the persistent id ('storage', torch.FloatStorage or LongStorage, key, 'cpu', element count),
the few globals PyTorch's loader allows with weights_only=True. The pickle is written opcode by
opcode (PEP 307), so nothing is imported from torch and no object of ours is pickled. Member data
start on 64-byte boundaries (padding in a local header's extra field, as PyTorch's writer does),
so that readers may map them. Same arrays, same bytes: no timestamps, no random ids.
"""

import struct
import zipfile
from collections import OrderedDict

import numpy as np

from npdc.atomic import atomic_path
from npdc.errors import UserError

STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}
ALIGN = 64
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _text(s):
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v):
    v = int(v)
    if -(1 << 31) <= v < (1 << 31):
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tuple(items):
    return b"(" + b"".join(_int(i) for i in items) + b"t" if items else b")"


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _ordered_dict():
    return _global("collections", "OrderedDict") + b")R"


def state_pickle(state):
    """(data.pkl bytes, [(key, raw bytes)]) of {name: array} (float32 or int64)."""
    out, blobs = [b"\x80\x02", _ordered_dict(), b"("], []
    for i, (name, arr) in enumerate(state.items()):
        arr = np.asarray(arr)
        arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d
        if arr.dtype not in STORAGES:
            raise UserError(f"cannot write {name} of dtype {arr.dtype} as a PyTorch tensor")
        key = str(i)
        strides = [s // arr.itemsize for s in arr.strides] if arr.ndim else []
        out += [_text(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(",
                b"(", _text("storage"), _global("torch", STORAGES[arr.dtype]), _text(key), _text("cpu"),
                _int(arr.size), b"tQ", _int(0), _tuple(arr.shape), _tuple(strides), b"\x89",
                _ordered_dict(), b"tR"]
        blobs.append((key, arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()))
    out += [b"u."]
    return b"".join(out), blobs


def _member(archive, name, data):
    """Add a stored member whose data starts on an ALIGN-byte boundary."""
    info = zipfile.ZipInfo(name, _EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    start = archive.fp.tell() + 30 + len(name.encode()) + 4
    pad = -start % ALIGN
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    archive.writestr(info, data)


def save_torch_state(state, path):
    """Write {name: array} to `path` as a PyTorch zip checkpoint, atomically."""
    data_pkl, blobs = state_pickle(OrderedDict(state))
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            _member(archive, "archive/data.pkl", data_pkl)
            _member(archive, "archive/byteorder", b"little")
            for key, raw in blobs:
                _member(archive, f"archive/data/{key}", raw)
            _member(archive, "archive/version", b"3\n")
