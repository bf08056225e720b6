"""Upgrades of older .npdc versions, in the spirit of Caffe's upgrade_proto: each format version
a reader still accepts has one function turning the sections of that version into the sections of
the next, and `UPGRADES` lists them as a literal table. The container reader applies them in
order from the file's version up to the current one and refuses any version the table does not
reach. The framing (tags, lengths, CRCs) is the same in every version so far, so an upgrade works
on the (tag, payload) list the framing gives, never on raw bytes.

Version 1 -> 2: layer payloads stored a Huffman code-length table as its alphabet size and every
symbol's length in 5 bits; version 2 stores only the used symbols (payload.length_table). The
codebook, counts and Huffman codes themselves are the same bytes.

Version 2 -> 3: version 3 may end a model file with an INT8 section (int8 activation scales); a
version-2 file has none and every section it has reads the same, so the upgrade keeps them all.
"""

from npdc.codec import bitio, huffman
from npdc.codec.errors import FormatError
from npdc.codec.payload import DENSE, Reader, length_table

V1_LENGTH_BITS = 5  # version 1 stored every symbol's length (0..16) in 5 bits


def _length_table_v1(r, what, alphabet_limit):
    """A version-1 code-length table read by `r`: varint alphabet size A, then A lengths of 5 bits
    each."""
    alphabet = r.varint(f"{what} alphabet size", alphabet_limit)
    raw = r.take(bitio.packed_size(alphabet, V1_LENGTH_BITS), f"{what} code lengths")
    return bitio.unpack_fixed(raw, V1_LENGTH_BITS, alphabet)


def _layer_v1(payload):
    """A version-1 layer payload with its code-length tables rewritten as version 2 stores them."""
    r = Reader(payload, "version-1 layer")
    gap_bits = r.byte("gap width")
    r.codebook()
    if gap_bits != DENSE:
        r.varint("entry count", 1 << 62)
    parts = [bytes(r.buf[:r.pos])]
    for what in ("value",) if gap_bits == DENSE else ("gap", "value"):
        lengths = _length_table_v1(r, what, huffman.MAX_SYMBOLS)
        start = r.pos
        r.take((r.varint(f"{what} bit count", 8 * r.left()) + 7) // 8, f"{what} stream")
        parts += [length_table(lengths), bytes(r.buf[start:r.pos])]
    r.done()
    return b"".join(parts)


def upgrade_v1(sections, name):
    """Version-1 sections as version 2: every LAYR payload's code-length tables rewritten."""
    out = []
    for index, (tag, payload) in enumerate(sections):
        if tag == "LAYR":
            try:
                payload = _layer_v1(payload)
            except FormatError as e:
                raise FormatError(e.problem, file=name, index=index, tag=tag) from None
        out.append((tag, payload))
    return out


def upgrade_v2(sections, name):
    """Version-2 sections as version 3: the same sections (version 3 only adds INT8, which a
    version-2 file cannot hold)."""
    for index, (tag, _) in enumerate(sections):
        if tag == "INT8":
            raise FormatError("an INT8 section in a version-2 file", file=name, index=index, tag=tag)
    return list(sections)


# version v -> the function turning a file's sections of version v into those of version v + 1
UPGRADES = {
    1: upgrade_v1,
    2: upgrade_v2,
}
