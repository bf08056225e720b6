"""Hand-made PyTorch-style files for the tests, without torch.

The pickles are written opcode by opcode (the names of PEP 307's protocol-2 opcodes are in the
comments), so a test states exactly what a damaged or hostile file contains: a tensor whose
offset runs past its storage, a storage shorter than it claims, a global that runs a command.
"""

import os
import pickle
import struct
import subprocess
import zipfile

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def glob(module, name):          # GLOBAL
    return b"c" + f"{module}\n{name}\n".encode()


def text(value):                 # BINUNICODE
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def num(value):                  # BININT (signed 32-bit)
    return b"J" + struct.pack("<i", value)


def tup(*items):                 # MARK ... TUPLE
    return b"(" + b"".join(items) + b"t"


def storage(key, kind="FloatStorage", count=0, legacy=False):
    """The persistent id of a storage, then BINPERSID."""
    fields = [text("storage"), glob("torch", kind), text(key), text("cpu"), num(count)]
    return tup(*fields, *([b"N"] if legacy else [])) + b"Q"


def tensor(storage_ref, offset, size, stride):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    hooks = glob("collections", "OrderedDict") + b")R"
    return (glob("torch._utils", "_rebuild_tensor_v2")
            + tup(storage_ref, num(offset), tup(*map(num, size)), tup(*map(num, stride)), b"\x89", hooks)
            + b"R")


def state_pickle(entries):
    """PROTO 2, EMPTY_DICT, MARK, name/value pairs, SETITEMS, STOP."""
    return b"\x80\x02}(" + b"".join(text(k) + v for k, v in entries.items()) + b"u."


def write_zip(path, data_pkl, storages=(), prefix="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data_pkl)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, raw in dict(storages).items():
            z.writestr(f"{prefix}/data/{key}", raw)
    return path


def write_legacy(path, object_pkl, storages=()):
    """storages: (key, element count, raw bytes) in file order."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps(info, protocol=2), object_pkl,
             pickle.dumps([key for key, _, _ in storages], protocol=2)]
    parts += [struct.pack("<q", count) + raw for _, count, raw in storages]
    path.write_bytes(b"".join(parts))
    return path


class Payload:
    """Pickles to a call of `func(*args)`: what a hostile checkpoint would run on loading."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    """Hostile objects that each create the file `marker` when unpickled by plain pickle."""
    return {
        "os.system": Payload(os.system, (f"touch {marker}",)),
        "builtins.eval": Payload(eval, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.exec": Payload(exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": Payload(subprocess.call, (["touch", str(marker)],)),
    }
