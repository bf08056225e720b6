"""How much memory a file may make npdc allocate, decided before anything is allocated.

Every reader of a file (model files, checkpoints, zip members, pickles, datasets) works out what
the bytes ask for — elements per tensor, the network a header declares, decoded positions per
layer, parsed header objects, uncompressed zip members — and takes it from the file's Budget
before allocating it. A file may ask for

    max(floor, ratio * its size in bytes), and never more than cap,

so a small file can only make npdc allocate a little, however its header is crafted, while real
models (Deep Compression files decode to 35-50x their size, datasets and float checkpoints to
about their size) stay well inside. The defaults are below; each is overridden by an environment
variable, in bytes or as a plain ratio:

    NPDC_ALLOC_FLOOR   64 MiB    what any file may ask for, however small
    NPDC_ALLOC_RATIO   100       bytes allocated per byte of file above that
    NPDC_ALLOC_CAP     8 GiB     what no file may ask for, however large

Refusals are one-line UserErrors that name the file, what it asked for and the variable to set.
"""

import os

from npdc.errors import UserError

DEFAULTS = {"NPDC_ALLOC_FLOOR": 64 << 20, "NPDC_ALLOC_RATIO": 100, "NPDC_ALLOC_CAP": 8 << 30}


def setting(name):
    """The limit `name` (a key of DEFAULTS) from the environment, else its default."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return DEFAULTS[name]
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not a whole number") from None
    if value < 1:
        raise UserError(f"{name} must be at least 1, not {value}")
    return value


def allowance(file_bytes):
    """Bytes a file of `file_bytes` bytes may make npdc allocate."""
    floor, ratio, cap = (setting(k) for k in ("NPDC_ALLOC_FLOOR", "NPDC_ALLOC_RATIO", "NPDC_ALLOC_CAP"))
    return min(cap, max(floor, ratio * max(int(file_bytes), 0)))


class Budget:
    """What one file may still make npdc allocate; `take` before each allocation it asks for."""

    def __init__(self, name, file_bytes):
        self.name = str(name)
        self.file_bytes = int(file_bytes)
        self.total = allowance(file_bytes)
        self.left = self.total

    @classmethod
    def for_path(cls, path):
        return cls(path, os.path.getsize(path))

    def take(self, nbytes, what):
        """Account for `nbytes` more bytes asked for by `what`; UserError past the allowance."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise UserError(f"{self.name}: {what} has a negative size ({nbytes})")
        if nbytes > self.left:
            raise UserError(f"{self.name}: {what} asks for {nbytes:,} bytes, more than a "
                            f"{self.file_bytes:,}-byte file may ({self.total:,} in all; "
                            f"NPDC_ALLOC_RATIO, NPDC_ALLOC_FLOOR and NPDC_ALLOC_CAP raise it)")
        self.left -= nbytes
        return nbytes
