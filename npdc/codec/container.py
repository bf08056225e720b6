"""The .npdc file: a versioned sequence of CRC-checked sections.

Framing is the chunk design PNG made familiar (ISO/IEC 15948, RFC 2083): a fixed signature, then
self-delimiting chunks, each a type code, a length, the data and a CRC-32, and a closing chunk that
marks a complete file. Departures: a u16 format version follows the signature; integers are
little-endian; the CRC covers the length field as well as tag and payload, so every byte of a
section is checked; the closing section is tagged "END " and carries no data. The CRC is
zlib.crc32, the ISO 3309 / ITU-T V.42 polynomial that PNG and gzip also use.

Versions follow the upgrade-or-refuse rule of Caffe's upgrade_proto: a reader converts each older
version it knows with the explicit functions of npdc.codec.upgrade.UPGRADES and refuses any other
with a one-line FormatError. What the sections hold lives elsewhere: layer and parameter payloads
in npdc.codec.payload, the JSON header in npdc.codec.header, a model file's section layout in
npdc.codec.model. The byte-level specification: docs/format.md.
"""

import struct
import zlib
from pathlib import Path

from npdc.atomic import atomic_path
from npdc.codec.errors import FormatError
from npdc.codec.upgrade import UPGRADES
from npdc.errors import UserError

MAGIC = b"NPDC"
FORMAT_VERSION = 3
END_TAG = "END "
HEAD_SIZE = 6  # magic + u16 version
FRAME_SIZE = 12  # tag + u32 length + u32 CRC around each payload


def _frame(tag, payload):
    """tag, u32 length, payload, u32 CRC-32 of all three before it."""
    if not (isinstance(tag, str) and len(tag) == 4 and all(" " <= c <= "~" for c in tag)):
        raise ValueError(f"a section tag is 4 printable ASCII characters, got {tag!r}")
    if len(payload) >= 1 << 32:
        raise ValueError(f"section {tag!r}: a payload of {len(payload)} bytes exceeds u32")
    head = tag.encode("ascii") + struct.pack("<I", len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def pack_container(sections, version=FORMAT_VERSION):
    """The bytes of a .npdc file holding `sections`, a list of (tag, payload bytes)."""
    parts = [MAGIC, struct.pack("<H", version)]
    for tag, payload in sections:
        if tag == END_TAG:
            raise ValueError("the end marker is written by pack_container, not passed in")
        parts.append(_frame(tag, bytes(payload)))
    return b"".join(parts + [_frame(END_TAG, b"")])


def write_container(path, sections):
    """Write a .npdc file atomically (no half-written file on a crash); returns its size."""
    data = pack_container(sections)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def read_container(path):
    """The sections (tag, payload) of a .npdc file, every frame verified; FormatError if bad."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    return unpack_container(data, name=str(path))


def unpack_container(data, name="<bytes>"):
    """The sections (tag, payload) of a .npdc file's bytes, without the end marker.

    An older version is upgraded section by section (npdc.codec.upgrade.UPGRADES, in order).
    Raises FormatError (naming `name` and the section) for a foreign or unknown-version file,
    truncation, a length past the end, a CRC mismatch, a bad tag, a missing end marker or
    bytes after it."""
    view = memoryview(data).cast("B")
    size = len(view)
    if size == 0 or bytes(view[:4]) != MAGIC[:min(size, 4)]:
        start = f"starts with {bytes(view[:4])!r}" if size else "empty"
        raise FormatError(f"not an npdc file ({start}, expected {MAGIC!r})", file=name)
    if size < HEAD_SIZE:
        raise FormatError(f"truncated file: {size} of the {HEAD_SIZE} header bytes", file=name)
    (version,) = struct.unpack_from("<H", view, 4)
    steps = range(version, FORMAT_VERSION)
    if version > FORMAT_VERSION or any(v not in UPGRADES for v in steps):
        hint = "; a newer npdc wrote it" if version > FORMAT_VERSION else ""
        raise FormatError(f"version {version}, this npdc reads {FORMAT_VERSION}{hint}", file=name)
    sections = _read_sections(view, name)
    for v in steps:
        sections = UPGRADES[v](sections, name)
    return sections


def _read_sections(view, name):
    """The framing after the file header (the same in every version)."""
    sections, pos, size = [], HEAD_SIZE, len(view)
    while True:
        left, tag = size - pos, None

        def fail(problem, after=0):  # `after` = 1 names the place after the end marker
            raise FormatError(problem, file=name, index=len(sections) + after, tag=tag,
                              offset=pos)

        if left == 0:
            fail(f"the file ends without the end marker {END_TAG!r} (truncated?)")
        if left < 8:
            fail(f"truncated file: {left} bytes where a tag and a length need 8")
        tag = bytes(view[pos:pos + 4]).decode("ascii", "backslashreplace")
        (length,) = struct.unpack_from("<I", view, pos + 4)
        if length > left - FRAME_SIZE:
            fail(f"length {length} runs past the end of the file ({left - 8} bytes follow the "
                 f"length field, {length + 4} needed with the CRC): truncated or corrupt")
        end = pos + 8 + length
        (stored,) = struct.unpack_from("<I", view, end)
        computed = zlib.crc32(view[pos:end])
        if stored != computed:
            fail(f"CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
        if not all(0x20 <= b <= 0x7E for b in view[pos:pos + 4]):
            fail("the tag is not 4 printable ASCII characters")
        if tag == END_TAG:
            if length:
                fail(f"the end marker carries a {length}-byte payload (it must be empty)")
            pos, tag = end + 4, None
            if pos != size:
                fail(f"trailing data after the end marker ({size - pos} bytes)", after=1)
            return sections
        sections.append((tag, bytes(view[pos + 8:end])))
        pos = end + 4
