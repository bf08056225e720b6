"""Reading compressed members (zip entries, gzip streams) without letting them grow past a Budget.

A zip entry declares its uncompressed size in its header; a deflate stream can expand at most
about 1032 to 1 (RFC 1951: a 258-byte match costs at least 2 bits), so an entry that declares
more than MAX_DEFLATE_RATIO times its compressed size lies, and one that declares more than the
file's Budget allows is refused before a byte is inflated. The declared size is then not trusted
either: reads stop one byte past it, and an entry that yields more is refused as damaged.
"""

import zipfile
import zlib

from npdc.errors import UserError

MAX_DEFLATE_RATIO = 1100
_CHUNK = 1 << 20


def member_size(archive, name, source, budget=None):
    """The uncompressed size `name` declares in `archive`, checked against what its compressed
    size can hold and, if given, against what `budget` has left (nothing is taken)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise UserError(f"{source}: no member {name!r} in the archive") from None
    size, packed = info.file_size, info.compress_size
    if info.compress_type == zipfile.ZIP_STORED and size != packed:
        raise UserError(f"{source}: member {name!r} is stored uncompressed but declares "
                        f"{size:,} bytes in {packed:,} (damaged zip)")
    if size > MAX_DEFLATE_RATIO * max(packed, 1):
        raise UserError(f"{source}: member {name!r} declares {size:,} bytes from {packed:,} "
                        "compressed, more than compression can yield (a zip bomb or damage)")
    if budget is not None and size > budget.left:
        budget.take(size, f"member {name!r}")  # refuses, naming the limits
    return size


def read_member(archive, name, source, budget, count=None):
    """The first `count` bytes (default: all) of zip member `name`, taken from `budget` first and
    read in bounded chunks; a member that is shorter, or longer than it declares, is refused."""
    size = member_size(archive, name, source)
    want = size if count is None else count
    if want > size:
        raise UserError(f"{source}: member {name!r} holds {size:,} bytes, {want:,} needed (truncated?)")
    budget.take(want, f"member {name!r}")
    with archive.open(name) as f:
        raw = _read_bounded(f, want + (1 if count is None else 0))
    if len(raw) < want:
        raise UserError(f"{source}: member {name!r} is truncated ({len(raw):,} of {want:,} bytes)")
    if len(raw) > want:
        raise UserError(f"{source}: member {name!r} holds more than the {size:,} bytes it declares")
    return raw


def gunzip(raw, source, budget):
    """The bytes of the gzip stream `raw` (one member or several in a row, as gzip.decompress
    reads them), inflated at most to what `budget` has left."""
    out, inflater = [], zlib.decompressobj(16 + zlib.MAX_WBITS)
    total, data = 0, raw
    try:
        while data:
            chunk = inflater.decompress(data, _CHUNK)
            total += len(chunk)
            if total > budget.left:
                budget.take(total, "the gzip stream")  # refuses, naming the limits
            out.append(chunk)
            data = inflater.unconsumed_tail
            if inflater.eof and inflater.unused_data.strip(b"\0"):  # the next member
                data, inflater = inflater.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif inflater.eof:
                break
    except zlib.error as e:
        raise UserError(f"{source}: corrupt gzip data ({e})") from None
    if not inflater.eof:
        raise UserError(f"{source}: truncated gzip data")
    budget.take(total, "the gzip stream")
    return b"".join(out)


def _read_bounded(f, limit):
    parts, total = [], 0
    while total < limit:
        chunk = f.read(min(_CHUNK, limit - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)
