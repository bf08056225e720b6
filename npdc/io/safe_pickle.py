"""A pickle reader that rebuilds data and never runs code from the file.

Facts from the pickle protocol (PEP 307 for protocol 2, PEP 3154 for protocol 4, the `pickle`
module documentation "Restricting Globals"): every callable a pickle can invoke (REDUCE, NEWOBJ,
BUILD's `__setstate__`, the copyreg extension codes) is first fetched by `find_class(module,
name)`. Here `find_class` only answers from an explicit table of stand-ins written in this module,
so a pickle can build containers, numbers, strings, NumPy arrays (as NumPy itself pickles them)
and whatever the caller's table adds (PyTorch tensors, in `npdc.io.torch_checkpoint`); anything
else -- `os.system`, `builtins.eval`, `subprocess.Popen` -- is refused by name before it exists.

Stand-ins return plain values or `Placeholder`s that `resolve` swaps for arrays after loading
(PyTorch's legacy format stores tensor data after the pickle that refers to it).
"""

import _compat_pickle
import codecs
import io
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from npdc.errors import UserError
from npdc.limits import Budget

# Element types a pickle may ask for: numbers and booleans only, never Python objects.
SAFE_KINDS = set("biuf")
# NumPy 1 arrays have at most 32 dimensions (NumPy 2: 64); no tensor npdc reads needs more.
MAX_DIMS = 32
# A dimension no array can have (NumPy's sizes are signed 64-bit).
MAX_DIM = (1 << 63) - 1
# What one opcode may make Python allocate, at most about: an empty set (EMPTY_SET, one byte) is
# 216 bytes, a dict or list 56-64 plus its slot in a container. Charged to the stream's Budget
# before loading, so a 2 MB pickle of two million empty sets is refused, not grown to 450 MB.
OPCODE_BYTES = 256
_LOAD_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, OverflowError, UnicodeDecodeError, struct.error, MemoryError,
                zipfile.BadZipFile, zlib.error)


class Placeholder:
    """A value finished after loading; `resolve` replaces it with `self.value()`."""

    def value(self):
        raise NotImplementedError


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals come only from `table` ((module, name) -> stand-in)."""

    def __init__(self, file, table, source, encoding="utf-8"):
        super().__init__(file, encoding=encoding)
        self.table, self.source = table, source

    def find_class(self, module, name):
        # Python 2 names (protocol < 3), translated as the stock find_class does, so that the
        # error names what would have run: `commands.call` is subprocess.call.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        stand_in = self.table.get((module, name))
        if stand_in is None:
            raise UserError(f"{self.source}: refused to load global {module}.{name}; npdc reads "
                            "only tensors, arrays and plain containers and never runs code from a file")
        if isinstance(stand_in, type):
            # NEWOBJ would call `stand_in.__new__` and skip `__init__`'s checks; a plain function
            # is not a class, so the unpickler refuses NEWOBJ on it as a damaged pickle.
            return _called(stand_in)
        return stand_in

    def persistent_load(self, pid):
        raise UserError(f"{self.source}: unexpected persistent reference {_short(pid)}")


def restricted_load(file, source, table=None, encoding="utf-8", unpickler=RestrictedUnpickler):
    """Load one pickle from the binary `file`; a damaged pickle is a one-line UserError."""
    check_memo_indices(file, source)
    try:
        return unpickler(file, BASE_GLOBALS if table is None else table, source, encoding).load()
    except UserError as e:
        raise with_source(e, source) from None
    except RecursionError:
        raise UserError(f"{source}: pickle nested too deeply") from None
    except _LOAD_ERRORS as e:
        raise damaged(e, source) from None


def check_memo_indices(file, source):
    """Refuse a pickle that stores into a memo slot no pickler would use, or whose opcodes could
    build more objects than the stream's Budget allows (OPCODE_BYTES each).

    A pickler numbers its memo slots 0, 1, 2, ... as it goes, so a slot is never beyond the number
    of opcodes before it. The C unpickler grows and zero-fills its memo up to twice any index it
    is given, so one damaged PUT index could claim gigabytes; the opcodes are scanned first.
    """
    start = file.tell()
    budget = Budget(source, file.seek(0, io.SEEK_END) - start)
    file.seek(start)
    count = 0
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(file)):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= count:
                raise UserError(f"{source}: damaged pickle (memo slot {arg} after {count} opcodes)")
    except _LOAD_ERRORS as e:
        raise damaged(e, source) from None
    budget.take((count + 1) * OPCODE_BYTES, f"a pickle of {count + 1:,} opcodes")
    file.seek(start)


def _called(cls):
    def make(*args, **kwargs):
        return cls(*args, **kwargs)
    make.__qualname__ = make.__name__ = cls.__name__
    return make


def restricted_loads(data, source, table=None, encoding="utf-8"):
    return resolve(restricted_load(io.BytesIO(data), source, table, encoding), source)


def resolve(obj, source):
    """A copy of `obj` with every Placeholder replaced by its value; cycles are kept."""
    memo = {}

    def walk(o):
        if id(o) in memo:
            return memo[id(o)]
        if isinstance(o, Placeholder):
            memo[id(o)] = out = o.value()
        elif isinstance(o, dict):
            memo[id(o)] = out = type(o)() if type(o) in (dict, OrderedDict) else {}
            for k, v in o.items():
                out[walk(k)] = walk(v)
        elif isinstance(o, list):
            memo[id(o)] = out = []
            out.extend(walk(v) for v in o)
        elif isinstance(o, tuple):
            memo[id(o)] = out = tuple(walk(v) for v in o)
        elif isinstance(o, (set, frozenset)):
            memo[id(o)] = out = type(o)(walk(v) for v in o)
        else:
            out = o
        return out

    try:
        return walk(obj)
    except UserError as e:
        raise with_source(e, source) from None
    except RecursionError:
        raise UserError(f"{source}: pickle nested too deeply") from None
    except (TypeError, ValueError, AttributeError, OverflowError, MemoryError) as e:
        # e.g. an array used as a dict key, a stand-in whose state never arrived
        raise UserError(f"{source}: unusable pickled data ({type(e).__name__}: {one_line(e)})") from None


def damaged(error, source):
    return UserError(f"{source}: corrupt or truncated pickle ({type(error).__name__}: "
                     f"{one_line(error)})")


def one_line(error, limit=120):
    """An exception's text on one line and short: damaged input can put anything in it."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def with_source(error, source):
    """The UserError `error`, its message prefixed with the file name unless it has it already."""
    message = str(error)
    return UserError(message if message.startswith(f"{source}:") else f"{source}: {message}")


def _short(obj, limit=80):
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def check_int(value, what, low=0):
    """`value` as a Python int >= low; anything else (floats, bools, huge negatives) is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"{what} must be a whole number >= {low}, got {_short(value)}")
    return int(value)


def check_shape(shape, what):
    """`shape` as a tuple of ints: at most MAX_DIMS of them, each a size an array can have."""
    if not isinstance(shape, (tuple, list)):
        raise UserError(f"{what} must be a tuple of sizes, got {_short(shape)}")
    if len(shape) > MAX_DIMS:
        raise UserError(f"{what} has {len(shape)} dimensions, more than {MAX_DIMS}")
    dims = tuple(check_int(d, what) for d in shape)
    if nonzero_product(dims) > MAX_DIM:
        raise UserError(f"{what} {_short(dims)} has sizes no array can have")
    return dims


def nonzero_product(shape):
    """The product of the non-zero sizes of `shape`: what an empty array's shape still claims
    (a (4000000, 0) classifier decides a network's width although it holds nothing)."""
    count = 1
    for d in shape:
        count *= max(int(d), 1)
    return count


# -- NumPy as NumPy pickles it (ndarray.__reduce__, dtype.__reduce__, numpy scalars) ---------------
def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


class _DtypeSpec(Placeholder):
    """Stand-in for `numpy.dtype(code, align, copy)`; BUILD supplies the byte order."""

    def __init__(self, code, align=False, copy=True):
        code = _text(code)
        try:
            self.dtype = np.dtype(code) if isinstance(code, str) else None
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.kind not in SAFE_KINDS or self.dtype.names:
            raise UserError(f"refused NumPy dtype {_short(code)}: only numbers and booleans are read")

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2:
            raise UserError(f"damaged NumPy dtype state {_short(state)}")
        order = _text(state[1])
        if order not in ("<", ">", "|", "="):
            raise UserError(f"damaged NumPy dtype byte order {_short(order)}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)

    def value(self):
        return self.dtype


class _ArraySpec(Placeholder):
    """Stand-in for `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`; BUILD supplies
    (version, shape, dtype, is_fortran, raw bytes)."""

    def __init__(self, cls=None, shape=None, code=None):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UserError(f"damaged NumPy array state {_short(state)}")
        shape, dtype, fortran, raw = state[-4:]
        shape = check_shape(shape, "NumPy array shape")
        if not isinstance(dtype, _DtypeSpec):
            raise UserError(f"damaged NumPy array dtype {_short(dtype)}")
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        if not isinstance(raw, (bytes, bytearray)):
            raise UserError(f"NumPy array data of type {type(raw).__name__}; only raw bytes are read")
        count = int(np.prod(shape, dtype=object))
        if count * dtype.dtype.itemsize != len(raw):
            raise UserError(f"NumPy array data holds {len(raw)} bytes, shape {shape} of "
                            f"{dtype.dtype} needs {count * dtype.dtype.itemsize}")
        flat = np.frombuffer(bytes(raw), dtype.dtype, count)
        self.array = flat.reshape(shape, order="F" if fortran else "C").astype(
            dtype.dtype.newbyteorder("="), copy=True)

    def value(self):
        if self.array is None:
            raise UserError("a NumPy array in the pickle was never filled in")
        return self.array


class _ScalarSpec(Placeholder):
    """Stand-in for `numpy.core.multiarray.scalar(dtype, raw bytes)`: one number."""

    def __init__(self, dtype, raw=b""):
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, bytes):
            raise UserError(f"damaged NumPy scalar {_short((dtype, raw))}")
        self.dtype, self.raw = dtype, raw

    def value(self):
        if len(self.raw) != self.dtype.dtype.itemsize:
            raise UserError(f"NumPy scalar of {self.dtype.dtype} with {len(self.raw)} bytes")
        return np.frombuffer(self.raw, self.dtype.dtype)[0].astype(self.dtype.dtype.newbyteorder("="))


def _array_from_buffer(buf, dtype, shape, order="C"):
    """Stand-in for `numpy.core.numeric._frombuffer`, how protocol 5 pickles an array."""
    if not isinstance(buf, (bytes, bytearray)):
        raise UserError(f"NumPy array data of type {type(buf).__name__}; only in-band bytes are read")
    spec = _ArraySpec()
    spec.__setstate__((shape, dtype, _text(order) == "F", bytes(buf)))
    return spec


def _latin1_encode(text, encoding="latin1"):
    """Stand-in for `_codecs.encode`, which protocol 2 uses for bytes: latin-1 text to bytes."""
    if not isinstance(text, str) or codecs.lookup(str(encoding)).name != "iso8859-1":
        raise UserError(f"refused _codecs.encode with {_short(encoding)}: only latin-1 bytes are read")
    return text.encode("latin1")


def _empty_bytes(*args):
    """Stand-in for `builtins.bytes`, which protocol 2 calls with no arguments for b"" (longer
    bytes go through `_codecs.encode`); `bytes(n)` would allocate n bytes, so it is refused."""
    if args:
        raise UserError(f"refused builtins.bytes{_short(args)}: only the empty bytes are read")
    return b""


class _NdarrayClass:
    """Stands for `numpy.ndarray` as the first argument of `_reconstruct`; builds nothing."""


BASE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _DtypeSpec,
    **{(module, name): stand_in
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, stand_in in (("_reconstruct", _ArraySpec), ("scalar", _ScalarSpec))},
    **{(module, "_frombuffer"): _array_from_buffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
}
