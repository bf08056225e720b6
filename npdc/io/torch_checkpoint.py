"""Read PyTorch checkpoints (.pt, .pth, .th) into NumPy arrays, without importing torch.

The facts come from PyTorch's serialization format as documented (the `torch.save` /
`torch.load` reference and the "Saving and Loading Models" notes) and as observed in files
written by torch 2.x, and from the pickle protocol (PEP 307, PEP 3154):

- zip format (torch >= 1.6): a zip archive with one top folder (named after the file, or
  `archive`) holding `data.pkl`, the object pickled with protocol 2, and `data/<key>` with the
  raw bytes of each storage; an optional `byteorder` entry says "little" or "big". The pickle
  names a storage by the persistent id ('storage', storage type, key, location, element count).
- legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles in a row
  -- the magic number 0x1950a86a20f9469cfc6c, the format version 1001, a dict of system facts
  (`little_endian`, type sizes), the object (persistent ids ('storage', type, key, location,
  count, view)), the list of storage keys -- then, for each key in that order, an 8-byte element
  count and the raw elements.

A tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`:
element i is storage[offset + sum_k i_k * stride_k]. It is rebuilt with
`np.lib.stride_tricks.as_strided` on the storage's array once the whole extent is checked to lie
inside the storage, then copied; views into one storage (slices, transposes) read the same array.
Every copy is taken from the file's Budget (npdc.limits) first, so views that repeat a few stored
elements (stride 0) cannot together grow past what the file may ask for; zip members are read
through npdc.io.bounded, which refuses a member that declares or yields more than that.
Only the globals in TORCH_GLOBALS exist for the pickle (npdc.io.safe_pickle); a pickled
`nn.Module`, an optimizer class or `os.system` is refused by name and never run.
"""

import io
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from npdc.errors import UserError
from npdc.io.bounded import member_size, read_member
from npdc.io.safe_pickle import (BASE_GLOBALS, Placeholder, RestrictedUnpickler, check_int,
                                 check_shape, nonzero_product, one_line, resolve, restricted_load)
from npdc.limits import Budget

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_VERSION = 1001

_CODES = {"float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "bf16", "int64": "i8",
          "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "?"}
_STORAGE_NAMES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
                  "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                  "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
                  "BoolStorage": "bool", "UntypedStorage": "uint8"}
_DTYPE_ALIASES = {"double": "float64", "float": "float32", "half": "float16", "long": "int64",
                  "int": "int32", "short": "int16"}


class ElementType:
    """A torch element type (what `torch.FloatStorage` or `torch.float32` stands for here)."""

    def __init__(self, name):
        self.name = name
        self.bfloat16 = name == "bfloat16"  # NumPy has none: read as uint16, widen to float32
        self.dtype = np.dtype("<u2" if self.bfloat16 else _CODES[name]).newbyteorder("<")

    def __repr__(self):
        return f"torch.{self.name}"


class Storage:
    """One storage: `count` elements of `kind`; `array` is filled from the file (or a parent)."""

    def __init__(self, kind, count, key, budget):
        if not isinstance(kind, ElementType):
            raise UserError(f"storage {key!r} has unknown type {kind!r}")
        self.kind, self.count, self.key = kind, check_int(count, f"storage {key!r} size"), key
        self.budget, self.array = budget, None

    def data(self):
        if self.array is None:
            raise UserError(f"storage {self.key!r} has no data (truncated file?)")
        return self.array


class StorageView(Storage):
    """A legacy-format storage that is a window [offset, offset + count) of another storage."""

    def __init__(self, base, offset, count, key):
        super().__init__(base.kind, count, key, base.budget)
        self.base, self.offset = base, check_int(offset, f"storage view {key!r} offset")

    def data(self):
        parent = self.base.data()
        if self.offset + self.count > len(parent):
            raise UserError(f"storage view {self.key!r} reaches past its storage of {len(parent)}")
        return parent[self.offset:self.offset + self.count]


class TensorSpec(Placeholder):
    """What `_rebuild_tensor_v2` returns: the storage window, turned into an array by `value`."""

    def __init__(self, storage, offset, size, stride, kind=None):
        if not isinstance(storage, Storage):
            raise UserError(f"a tensor refers to {type(storage).__name__}, not a storage")
        self.storage, self.kind = storage, kind or storage.kind
        self.offset = check_int(offset, "tensor storage offset")
        self.size, self.stride = check_shape(size, "tensor size"), check_shape(stride, "tensor stride")
        if len(self.size) != len(self.stride):
            raise UserError(f"tensor size {self.size} and stride {self.stride} differ in length")

    def value(self):
        flat = self.storage.data()
        if self.kind.dtype.itemsize != flat.dtype.itemsize:  # typed view of an untyped storage
            usable = flat.nbytes - flat.nbytes % self.kind.dtype.itemsize
            flat = flat.view(np.uint8)[:usable].view(self.kind.dtype.newbyteorder(flat.dtype.byteorder))
        count = int(np.prod(self.size, dtype=object))
        itemsize = 4 if self.kind.bfloat16 else self.kind.dtype.itemsize  # widened to float32
        budget = self.storage.budget
        if count == 0:
            claimed = nonzero_product(self.size) * itemsize  # the sizes still shape a network
            if claimed > budget.total:
                raise UserError(f"empty tensor of size {self.size} claims {claimed:,} bytes of "
                                f"sizes, more than the file may ask for ({budget.total:,})")
            return np.zeros(self.size, self.kind.dtype.newbyteorder("="))
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= len(flat):
            raise UserError(f"tensor of size {self.size}, stride {self.stride} at offset "
                            f"{self.offset} reaches element {last} of a storage of {len(flat)}")
        # Every tensor is a copy, however few elements it stores (stride 0 repeats them).
        budget.take(count * itemsize * (2 if self.kind.bfloat16 else 1), f"tensor of size {self.size}")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=[s * flat.dtype.itemsize for s in self.stride], writeable=False)
        out = np.array(view, dtype=flat.dtype.newbyteorder("="))
        if self.kind.bfloat16:  # the upper half of a float32
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """Stand-in for torch._utils._rebuild_tensor and _rebuild_tensor_v2 (the extra arguments
    are requires_grad, backward hooks and metadata, which arrays do not have)."""
    return TensorSpec(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, kind, *_ignored):
    """Stand-in for torch._utils._rebuild_tensor_v3: the element type is given separately."""
    if not isinstance(kind, ElementType):
        raise UserError(f"tensor of unknown element type {kind!r}")
    return TensorSpec(storage, offset, size, stride, kind)


def _rebuild_parameter(data, *_ignored):
    """Stand-in for torch._utils._rebuild_parameter(_with_state): a parameter is its data."""
    if not isinstance(data, TensorSpec):
        raise UserError(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


def _size(dims=()):
    return tuple(check_shape(dims, "torch.Size"))


TORCH_GLOBALS = {
    **BASE_GLOBALS,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
    **{("torch", name): ElementType(kind) for name, kind in _STORAGE_NAMES.items()},
    **{("torch", name): ElementType(name) for name in _CODES},
    **{("torch", alias): ElementType(name) for alias, name in _DTYPE_ALIASES.items()},
}


class _StorageUnpickler(RestrictedUnpickler):
    """Restricted unpickler whose persistent ids are storages, found by `lookup(pid)`."""

    def __init__(self, file, table, source, encoding, lookup):
        super().__init__(file, table, source, encoding)
        self.lookup = lookup

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except UserError as e:
            if module.split(".")[0] in ("torch", "torchvision", "__main__", "models", "model"):
                raise UserError(f"{e}; a pickled model object? save and import model.state_dict() "
                                "instead") from None
            raise

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise UserError(f"{self.source}: holds a pickled nn.Module with its source code; "
                            "save and import model.state_dict() instead")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[2], str)):
            return super().persistent_load(pid)
        return self.lookup(pid)


def _load_with_storages(file, source, lookup):
    return restricted_load(file, source, TORCH_GLOBALS,
                           unpickler=lambda f, t, s, e: _StorageUnpickler(f, t, s, e, lookup))


# -- zip format ----------------------------------------------------------------------------------
# Every damage a zip reader can report while reading members; they all mean a damaged file.
ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, OverflowError,
              NotImplementedError,
              RuntimeError)


def _load_zip(data, source, budget):
    try:
        return _read_zip(data, source, budget)
    except ZIP_DAMAGE as e:
        raise UserError(f"{source}: damaged zip checkpoint ({one_line(e)})") from None


def _read_zip(data, source, budget):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise UserError(f"{source}: damaged zip checkpoint ({one_line(e)})") from None
    tops = sorted(n[:-len("data.pkl")] for n in names if n.endswith("data.pkl") and n.count("/") <= 1)
    if not tops:
        if any(n.endswith("constants.pkl") for n in names):
            raise UserError(f"{source}: a TorchScript archive, not a checkpoint; save a state_dict")
        raise UserError(f"{source}: a zip file without data.pkl, not a PyTorch checkpoint")
    prefix = tops[0]
    order = "<"
    if f"{prefix}byteorder" in names:
        text = read_member(archive, f"{prefix}byteorder", source, budget).decode("ascii", "replace").strip()
        if text not in ("little", "big"):
            raise UserError(f"{source}: unknown byte order {text!r}")
        order = "<" if text == "little" else ">"
    storages = {}

    def lookup(pid):
        _, kind, key, _location, count = pid[:5]
        if key not in storages:
            storage = Storage(kind, count, key, budget)
            name = f"{prefix}data/{key}"
            if name not in names:
                raise UserError(f"{source}: storage {key!r} is missing from the archive")
            need = storage.count * kind.dtype.itemsize
            if member_size(archive, name, source) < need:
                raise UserError(f"{source}: storage {key!r} holds fewer than {need} bytes (truncated?)")
            raw = read_member(archive, name, source, budget, need)
            storage.array = np.frombuffer(raw, kind.dtype.newbyteorder(order), storage.count)
            storages[key] = storage
        return storages[key]

    pickled = read_member(archive, f"{prefix}data.pkl", source, budget)
    return _load_with_storages(io.BytesIO(pickled), source, lookup)


# -- legacy format -------------------------------------------------------------------------------
def _load_legacy(data, source, budget):
    f = io.BytesIO(data)
    if restricted_load(f, source, {}) != LEGACY_MAGIC:
        raise UserError(f"{source}: not a PyTorch checkpoint (wrong magic number)")
    version = restricted_load(f, source, {})
    if version != LEGACY_VERSION:
        raise UserError(f"{source}: legacy checkpoint version {version!r}, npdc reads {LEGACY_VERSION}")
    info = restricted_load(f, source, {})
    little = info.get("little_endian", True) if isinstance(info, dict) else True
    storages = {}

    def lookup(pid):
        _, kind, key, _location, count = pid[:5]
        if key not in storages:
            storages[key] = Storage(kind, count, key, budget)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storages[key]
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
            raise UserError(f"{source}: damaged storage view {view!r}")
        if view[0] not in storages:
            storages[view[0]] = StorageView(storages[key], view[1], view[2], view[0])
        return storages[view[0]]

    obj = _load_with_storages(f, source, lookup)
    keys = restricted_load(f, source, {})
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UserError(f"{source}: damaged list of storage keys")
    pos, order = f.tell(), ("little" if little else "big")
    for key in keys:
        storage = storages.get(key)
        if storage is None or isinstance(storage, StorageView):
            raise UserError(f"{source}: storage {key!r} is listed but never used")
        if pos + 8 > len(data):
            raise UserError(f"{source}: truncated before storage {key!r}")
        count = int.from_bytes(data[pos:pos + 8], order, signed=True)
        if count != storage.count:
            raise UserError(f"{source}: storage {key!r} holds {count} elements, expected {storage.count}")
        need = count * storage.kind.dtype.itemsize
        if pos + 8 + need > len(data):
            raise UserError(f"{source}: storage {key!r} is truncated")
        dtype = storage.kind.dtype.newbyteorder("<" if little else ">")
        storage.array = np.frombuffer(data, dtype, count, pos + 8)
        pos += 8 + need
    return obj


def load_checkpoint(path):
    """The object saved in a PyTorch checkpoint, with every tensor as a NumPy array.

    Either format is recognised by its first bytes; anything wrong is a one-line UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint file at {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    budget = Budget(path, len(data))
    if data[:4] == b"PK\x03\x04":
        obj = _load_zip(data, path, budget)
    elif data[:1] == b"\x80":
        obj = _load_legacy(data, path, budget)
    elif not data:
        raise UserError(f"{path}: empty file")
    elif _is_tar(data):
        raise UserError(f"{path}: a tar-format checkpoint (PyTorch < 0.4), which npdc does not read")
    else:
        raise UserError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)")
    return resolve(obj, path)


def _is_tar(data):
    try:
        with tarfile.open(fileobj=io.BytesIO(data)):
            return True
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False
