""".npz archives read member by member, each array's size checked before it is allocated.

An .npz file is a zip archive of .npy files (`name.npy`), each a magic string, a version, a
header dict (`descr`, `fortran_order`, `shape`) and the raw elements (numpy.lib.format). The
header is parsed from the zip member's first bytes; shape x itemsize must be exactly the bytes
the member holds after the header and is taken from the file's Budget before the elements are
read, so a 2 KB archive whose header claims 2**48 elements is refused in one line instead of
ending in a MemoryError. Only numbers and booleans are read (never pickled objects).
"""

import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from npdc.errors import UserError
from npdc.io.bounded import member_size
from npdc.io.safe_pickle import SAFE_KINDS, check_shape, one_line
from npdc.limits import Budget

# Everything a damaged zip or deflate stream can raise while it is read.
ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, OverflowError,
              NotImplementedError, RuntimeError, SyntaxError)
_HEADERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def npz_names(path):
    """The array names in the .npz file at `path` (members `name.npy`), in archive order."""
    with _open(path) as archive:
        return [n[:-4] for n in archive.namelist() if n.endswith(".npy")]


def read_npz(path, keys=None, budget=None):
    """{name: array} for the arrays of `keys` (default: all) that the .npz file holds."""
    budget = budget or Budget.for_path(path)
    out = {}
    with _open(path) as archive:
        names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        for key in names if keys is None else [k for k in keys if k in names]:
            try:
                out[key] = _read_npy(archive, f"{key}.npy", path, budget)
            except ZIP_DAMAGE as e:
                raise UserError(f"{path}: cannot load array '{key}' ({type(e).__name__}: "
                                f"{one_line(e)})") from None
    return out


class _open:
    """The zip archive at `path`; anything but a readable zip is a one-line UserError."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        try:
            with open(self.path, "rb") as f:
                if f.read(6) == npy_format.MAGIC_PREFIX:
                    raise UserError(f"{self.path}: holds a single array (.npy), expected an .npz "
                                    "archive of named arrays")
            self.archive = zipfile.ZipFile(self.path)
        except ZIP_DAMAGE as e:
            raise UserError(f"{self.path}: not a readable .npz archive ({type(e).__name__}: "
                            f"{one_line(e)})") from None
        return self.archive

    def __exit__(self, *exc):
        self.archive.close()


def _read_npy(archive, name, source, budget):
    size = member_size(archive, name, source, budget)
    with archive.open(name) as f:
        version = npy_format.read_magic(f)
        reader = _HEADERS.get(version)
        if reader is None:
            raise UserError(f"{source}: member {name!r} is .npy version {version}, npdc reads 1.0 and 2.0")
        shape, fortran, dtype = reader(f)
        shape = check_shape(shape, f"{source}: member {name!r} shape")
        if dtype.kind not in SAFE_KINDS or dtype.names or dtype.subdtype:
            raise UserError(f"{source}: member {name!r} holds {dtype}; only numbers and booleans are read")
        count = int(np.prod(shape, dtype=object))
        nbytes, offset = count * dtype.itemsize, f.tell()
        if offset + nbytes != size:
            raise UserError(f"{source}: member {name!r} shape {shape} of {dtype} needs {nbytes:,} "
                            f"bytes after its header, it holds {size - offset:,}")
        budget.take(nbytes, f"array {name!r} of shape {shape}")
        flat = np.empty(count, dtype)
        view, done = memoryview(flat.view(np.uint8)), 0
        while done < nbytes:  # readinto never writes past the array: the bound is its size
            got = f.readinto(view[done:])
            if not got:
                raise UserError(f"{source}: member {name!r} is truncated ({done:,} of {nbytes:,} bytes)")
            done += got
        if f.read(1):
            raise UserError(f"{source}: member {name!r} holds more than the {size:,} bytes it declares")
    return flat.reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="), copy=False)
