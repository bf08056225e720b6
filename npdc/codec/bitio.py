"""Fixed-width unsigned bit fields: the storage of codebook indices and relative sparse indices
when they are not Huffman-coded (Deep Compression, Han, Mao & Dally 2016, stores both in a
fixed number of bits per entry).

Layout of `pack_fixed(values, w)`: value i occupies stream bits [i*w, (i+1)*w), most significant
bit first; stream bit k is bit 7 - k % 8 of byte k // 8 (MSB first within each byte). The stream
is ceil(n*w / 8) bytes long and the bits after the last field are zero. For example, widths 3 and
values [5, 1, 7] give bits 101 001 111 (+ 0000000) = bytes 0xA7 0x80. This is the same bit order
as the Huffman streams of npdc.codec.huffman.

The loops run in npdc.kernels.huffman (Numba); unpacking reads only the bytes it was given and
ignores bytes past the last field.
"""

import numpy as np

from npdc.kernels import huffman as kern

MAX_WIDTH = 32


def _check_width(width):
    if int(width) != width or not 1 <= int(width) <= MAX_WIDTH:
        raise ValueError(f"field width must be an integer in 1..{MAX_WIDTH}, got {width}")
    return int(width)


def packed_size(count, width):
    """Bytes that `count` fields of `width` bits take."""
    return (int(count) * _check_width(width) + 7) // 8


def field_dtype(width):
    """The smallest unsigned dtype that holds a `width`-bit field (what unpack_fixed returns)."""
    width = _check_width(width)
    return np.uint8 if width <= 8 else np.uint16 if width <= 16 else np.uint32


def pack_fixed(values, width):
    """Pack non-negative integers (read flat) into `width`-bit fields; returns bytes.

    Raises ValueError when a value does not fit in `width` bits or is not an integer."""
    width = _check_width(width)
    values = np.ascontiguousarray(values).reshape(-1)
    if values.size == 0:
        return b""
    if values.dtype.kind not in "iu":
        raise ValueError("values must be integers")
    if values.min() < 0 or int(values.max()) >= 1 << width:
        raise ValueError(f"values must be in 0..{(1 << width) - 1} to fit {width} bits")
    out = np.zeros(packed_size(values.size, width), np.uint8)
    written = kern.pack_fixed_bits(values, width, out)
    if written != values.size * width:
        raise RuntimeError(f"bit packer wrote {written} bits, expected {values.size * width}")
    return out.tobytes()


def unpack_fixed(data, width, count):
    """Read `count` fields of `width` bits from bytes made by pack_fixed.

    Returns an array of field_dtype(width). Raises ValueError when data is shorter than
    packed_size(count, width)."""
    width = _check_width(width)
    count = int(count)
    if count < 0:
        raise ValueError("count must be non-negative")
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise ValueError("data must be bytes or a 1-D uint8 array")
    need = packed_size(count, width)
    if buf.shape[0] < need:
        raise ValueError(f"truncated bit fields: {count} x {width} bits need {need} bytes, "
                         f"got {buf.shape[0]}")
    out = np.empty(count, field_dtype(width))
    if kern.unpack_fixed_bits(buf, width, count, out) != kern.OK:
        raise ValueError("truncated bit fields")
    return out
