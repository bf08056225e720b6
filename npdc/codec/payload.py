"""Payload codecs of the .npdc format: quantized layers (sparse by relative indices, or dense),
their canonical Huffman streams and codebooks, and raw parameter arrays; with the bit counts a
layer would cost, for choosing a gap width and for the report.

Payload integers are unsigned LEB128 varints (the DWARF / WebAssembly encoding); bit fields and
Huffman streams are MSB first as in npdc.codec.bitio and npdc.codec.huffman. Decoders trust
nothing: every count is checked against the bytes left before anything is sliced or allocated,
and every failure is a FormatError naming the payload kind (the caller adds file and section).
The byte-level specification: docs/format.md.
"""

import contextlib

import math
import struct

import numpy as np

from npdc.codec import huffman, relindex
from npdc.codec.errors import FormatError

MAX_CODE_LEN = 16  # longest Huffman code in a layer payload
LENGTH_BITS = 4  # a stored code length is length - 1, 1..16
MAX_CODEBOOK = huffman.MAX_SYMBOLS - 1  # values 0..k must form a Huffman alphabet
MAX_NDIM = 32
MAX_RAW_EXTENT = 1 << 40  # product of a raw array's non-zero dimensions a reader accepts
DENSE = 0  # first byte of a dense layer payload; a sparse one starts with its gap width 1..16
DTYPES = {"float16": 2, "float32": 4}  # value dtype -> its code byte, which is its width


def varint(n):
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit = more."""
    n = int(n)
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _dtype(name):
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _floats(values, code, what):
    """Little-endian bytes of real values stored in `code` bytes each; they must stay finite."""
    values = np.asarray(values)
    if values.size and values.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be real numbers")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        stored = values.astype(f"<f{code}")
    if not np.all(np.isfinite(stored)):
        raise ValueError(f"{what} must be finite in float{8 * code}")
    return stored.tobytes()


def _codebook(codebook, dtype):
    """u8 dtype code, varint k, k values."""
    codebook, code = np.asarray(codebook), _dtype(dtype)
    if codebook.ndim != 1 or codebook.size > MAX_CODEBOOK:
        raise ValueError(f"the codebook must be 1-D with at most {MAX_CODEBOOK} values")
    return bytes([code]) + varint(codebook.size) + _floats(codebook, code, "codebook values")


def _stream(symbols):
    """A coded stream: its code-length table (length_table), varint bit count, the canonical
    Huffman codes of the symbols."""
    symbols = symbols.astype(np.int64) if symbols.dtype == np.uint64 else symbols
    alphabet = int(symbols.max()) + 1 if symbols.size else 0
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet), MAX_CODE_LEN)
    data, n_bits = huffman.encode(symbols, lengths, MAX_CODE_LEN)
    return b"".join([length_table(lengths), varint(n_bits), data])


def length_table(lengths):
    """varint U (symbols with a code), then per such symbol, in increasing order: the step from
    the previous one (from -1) in Elias gamma code and its length - 1 in 4 bits, MSB first,
    zero-padded to a byte. A full alphabet costs 5 bits a symbol; a sparse one (a few wide gaps)
    pays only for the symbols it uses."""
    return varint(np.count_nonzero(lengths)) + _pack_bits(_table_bits(lengths))


def _table_bits(lengths):
    used = np.flatnonzero(lengths)
    steps = np.diff(used, prepend=-1)
    return "".join("0" * (int(d).bit_length() - 1) + format(int(d), "b")
                   + format(int(lengths[u]) - 1, f"0{LENGTH_BITS}b") for d, u in zip(steps, used))


def table_bits(lengths):
    """Bits of a stream's code-length table, as stored (padding and the count included)."""
    return 8 * len(length_table(lengths))


def _pack_bits(text):
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b""


class Reader:
    """Bounds-checked reading of one payload; every failure is a FormatError naming its kind."""

    def __init__(self, payload, kind):
        self.buf, self.pos, self.kind = memoryview(payload).cast("B"), 0, kind

    def fail(self, problem):
        raise FormatError(problem, payload=self.kind)

    @contextlib.contextmanager
    def guard(self, what):
        """Turn a ValueError of the codec modules into this payload's FormatError."""
        try:
            yield
        except ValueError as e:
            self.fail(f"{what}: {e}")

    def left(self):
        return len(self.buf) - self.pos

    def take(self, n, what):
        if n > self.left():
            self.fail(f"{what} needs {n} bytes, {self.left()} left (truncated payload)")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def byte(self, what):
        return self.take(1, what)[0]

    def varint(self, what, limit):
        value = 0
        for i in range(10):
            b = self.byte(what)
            value |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                if b == 0 and i:
                    self.fail(f"{what}: over-long varint (a redundant zero byte)")
                if value > limit:
                    self.fail(f"{what} {value} is over the limit {limit}")
                return value
        self.fail(f"{what}: varint longer than 10 bytes")

    def done(self):
        if self.left():
            self.fail(f"{self.left()} stray bytes after the last field")

    def dtype_code(self, what):
        code = self.byte(what)
        if code not in DTYPES.values():
            self.fail(f"{what} code {code} is not 2 (float16) or 4 (float32)")
        return code

    def floats(self, code, count, what):
        values = np.frombuffer(self.take(count * code, what), f"<f{code}")
        if not np.all(np.isfinite(values)):
            self.fail(f"{what} holds values that are not finite")
        return values.astype(np.float32)

    def codebook(self):
        code = self.dtype_code("codebook dtype")
        return self.floats(code, self.varint("codebook size", MAX_CODEBOOK), "codebook")

    def stream(self, what, alphabet_limit, count):
        """`count` symbols, each below alphabet_limit, from a coded stream (see _stream)."""
        lengths = self.length_table(what, alphabet_limit)
        n_bits = self.varint(f"{what} bit count", 8 * self.left())
        data = self.take((n_bits + 7) // 8, f"{what} stream")
        if count > n_bits:  # every code takes a bit; this also bounds what decode allocates
            self.fail(f"{what}: {count} symbols cannot fit in {n_bits} bits")
        with self.guard(f"{what} stream"):
            return huffman.decode(data, n_bits, lengths, count, MAX_CODE_LEN)

    def length_table(self, what, alphabet_limit):
        """The code lengths written by _length_table; every symbol below alphabet_limit."""
        used = self.varint(f"{what} code count", alphabet_limit)
        # a step below 2^17 takes at most 33 gamma bits; read no further than that could need
        most = min(self.left(), (used * (33 + LENGTH_BITS) + 7) // 8)
        bits = "".join(f"{b:08b}" for b in self.buf[self.pos:self.pos + most])
        symbols, lengths, pos, symbol = [], [], 0, -1
        for _ in range(used):
            one = bits.find("1", pos, pos + 17)  # a step below 2^17 has at most 16 leading zeros
            zeros = one - pos
            end = one + zeros + 1 + LENGTH_BITS
            if one < 0 or end > len(bits):
                self.fail(f"{what} code lengths: damaged or truncated table")
            symbol += int(bits[one:one + zeros + 1], 2)
            length = 1 + int(bits[one + zeros + 1:end], 2)
            if symbol >= alphabet_limit:
                self.fail(f"{what} code lengths: symbol {symbol} is not below {alphabet_limit}")
            symbols.append(symbol)
            lengths.append(length)
            pos = end
        self.take((pos + 7) // 8, f"{what} code lengths")
        table = np.zeros(symbol + 1, np.int64)
        table[symbols] = lengths
        return table


def _flat_indices(indices, codebook_size):
    indices = np.asarray(indices).reshape(-1)
    if indices.size and indices.dtype.kind not in "iu":
        raise ValueError("indices must be integers")
    if indices.size and (indices.min() < 0 or int(indices.max()) > codebook_size):
        raise ValueError(f"indices must be in 0..{codebook_size} (0 = pruned)")
    return indices


def encode_sparse_layer(indices, codebook, gap_bits, codebook_dtype="float32"):
    """Payload of a pruned, quantized layer: u8 gap_bits (1..16), codebook, varint entry count,
    the coded gap stream, the coded value stream (relative indexing of npdc.codec.relindex).

    indices: flat value indices, 0 = pruned, i >= 1 = codebook[i - 1]."""
    codebook = np.asarray(codebook)
    gaps, values = relindex.encode_relative(_flat_indices(indices, codebook.size), gap_bits)
    return b"".join([bytes([gap_bits]), _codebook(codebook, codebook_dtype), varint(gaps.size),
                     _stream(gaps), _stream(values)])


def encode_dense_layer(indices, codebook, codebook_dtype="float32"):
    """Payload of a quantized layer kept dense: u8 0, codebook, the coded stream of the value
    index at every position (0 = zero weight)."""
    codebook = np.asarray(codebook)
    indices = _flat_indices(indices, codebook.size)
    return bytes([DENSE]) + _codebook(codebook, codebook_dtype) + _stream(indices)


def decode_sparse_layer(payload, length):
    """(indices of `length` positions, float32 codebook) from encode_sparse_layer's payload."""
    return decode_layer(payload, length, "sparse layer")


def decode_dense_layer(payload, length):
    """(indices of `length` positions, float32 codebook) from encode_dense_layer's payload."""
    return decode_layer(payload, length, "dense layer")


def decode_layer(payload, length, kind=None):
    """(indices, float32 codebook) of a layer payload of either kind, told apart by the first
    byte (0 = dense, 1..16 = sparse gap width); `kind` ("sparse layer", "dense layer") demands
    one. `length` comes from the caller (the layer's shape); it bounds what is allocated."""
    if int(length) != length or length < 0:
        raise ValueError(f"length must be a non-negative integer, got {length}")
    length, r = int(length), Reader(payload, kind or "layer")
    gap_bits = r.byte("gap width")
    found = "dense layer" if gap_bits == DENSE else "sparse layer"
    if kind not in (None, found):
        r.fail(f"the first byte {gap_bits} marks a {found} payload")
    if gap_bits > relindex.MAX_GAP_BITS:
        r.fail(f"gap width {gap_bits} is over {relindex.MAX_GAP_BITS}")
    codebook = r.codebook()
    if gap_bits == DENSE:
        indices = r.stream("value", codebook.size + 1, length)
        r.done()
        return indices, codebook
    entries = r.varint("entry count", length)  # each entry takes a position
    gaps = r.stream("gap", 1 << gap_bits, entries)
    values = r.stream("value", codebook.size + 1, entries)
    r.done()
    with r.guard("relative index"):
        return relindex.decode_relative(gaps, values, length, gap_bits), codebook


def dequantize(indices, codebook, shape):
    """Dense float32 weights of `shape`: 0 where indices == 0, else codebook[indices - 1]."""
    indices = np.asarray(indices).reshape(-1)
    codebook = np.asarray(codebook, np.float32).reshape(-1)
    if indices.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{indices.size} indices do not fill shape {tuple(np.atleast_1d(shape))}")
    table = np.concatenate([np.zeros(1, np.float32), codebook])
    return table[_flat_indices(indices, codebook.size)].reshape(shape)


def layer_bit_stats(indices, codebook_size, gap_bits, codebook_dtype="float32"):
    """Bit counts of one layer under relative indexing with `gap_bits` (fillers included):
    fixed-width and Huffman value and index bits, code-table and codebook bits."""
    indices = _flat_indices(indices, int(codebook_size))
    gaps, values = relindex.encode_relative(indices, gap_bits)

    def coded_bits(symbols):
        """(Huffman bits of the stream, bits of its code-length table)."""
        counts = np.bincount(symbols)
        lengths = huffman.code_lengths(counts, MAX_CODE_LEN)
        return huffman.total_bits(counts, lengths), table_bits(lengths)

    (gap_bits_coded, gap_table), (value_bits_coded, value_table) = map(coded_bits, (gaps, values))
    entries, nonzero = int(gaps.size), int(np.count_nonzero(indices))
    return {"positions": int(indices.size), "nonzero": nonzero, "fillers": entries - nonzero,
            "entries": entries, "value_bits": entries * int(codebook_size).bit_length(),
            "huffman_value_bits": value_bits_coded, "index_bits": entries * int(gap_bits),
            "huffman_index_bits": gap_bits_coded, "code_table_bits": gap_table + value_table,
            "codebook_bits": int(codebook_size) * 8 * _dtype(codebook_dtype),
            "dense_bits": 32 * int(indices.size)}


def choose_gap_bits(indices, codebook_size, candidates=range(1, relindex.MAX_GAP_BITS + 1)):
    """The gap width whose layer codes smallest: Huffman-coded value and gap streams plus their
    code-length tables. Fixed-width cost would favour narrow gaps that Huffman coding makes cheap
    anyway; on the shipped model this choice saves about 3.5 % of the stream bits."""
    def cost(b):
        stats = layer_bit_stats(indices, codebook_size, b)
        return stats["huffman_value_bits"] + stats["huffman_index_bits"] + stats["code_table_bits"]

    return min(candidates, key=lambda b: (cost(b), b))


def encode_raw(arrays, dtype="float32"):
    """Payload of unquantized arrays: u8 dtype code, varint count, then per array: varint name
    length, UTF-8 name, varint ndim, ndim varint dims, the values (C order, little-endian)."""
    code = _dtype(dtype)
    parts = [bytes([code]), varint(len(arrays))]
    for name, x in arrays.items():
        x, name_b = np.asarray(x), str(name).encode("utf-8")
        if x.ndim > MAX_NDIM:
            raise ValueError(f"{name}: at most {MAX_NDIM} dimensions")
        parts += [varint(len(name_b)), name_b, varint(x.ndim)]
        parts += [varint(d) for d in x.shape] + [_floats(x, code, f"{name} values")]
    return b"".join(parts)


def decode_raw(payload):
    """{name: float32 array} from encode_raw's payload (float16 values widened exactly)."""
    r, out = Reader(payload, "raw parameters"), {}
    code = r.dtype_code("dtype")
    for _ in range(r.varint("array count", r.left())):
        raw_name = bytes(r.take(r.varint("name length", r.left()), "name"))
        with r.guard(f"array name {raw_name!r}"):
            name = raw_name.decode("utf-8")
        if name in out:
            r.fail(f"array {name!r} appears twice")
        shape = [r.varint(f"{name} dimension", 1 << 62)
                 for _ in range(r.varint(f"{name} ndim", MAX_NDIM))]
        values = r.floats(code, math.prod(shape), f"{name} values")
        if math.prod(max(d, 1) for d in shape) > MAX_RAW_EXTENT:  # an empty array's other dims
            r.fail(f"{name}: dimensions {shape} are larger than any parameter")
        out[name] = values.reshape(shape)
    r.done()
    return out


def encode_scales(scales):
    """Payload of int8 activation scales {value name: (scale, zero point)}: varint count, then per
    activation: varint name length, UTF-8 name, the scale as float32, the zero point as u8."""
    parts = [varint(len(scales))]
    for name, (scale, zero) in scales.items():
        name_b = str(name).encode("utf-8")
        if not (np.isfinite(scale) and scale > 0) or not 0 <= int(zero) <= 255:
            raise ValueError(f"{name}: scale {scale} must be finite and above 0, zero point in 0..255")
        parts += [varint(len(name_b)), name_b, struct.pack("<f", scale), bytes([int(zero)])]
    return b"".join(parts)


def decode_scales(payload, limit):
    """{value name: (float scale, int zero point)} from encode_scales' payload, at most `limit`
    activations; every scale finite and above 0 and each name once."""
    r, out = Reader(payload, "int8 scales"), {}
    for _ in range(r.varint("activation count", limit)):
        raw_name = bytes(r.take(r.varint("name length", r.left()), "name"))
        with r.guard(f"activation name {raw_name[:40]!r}"):
            name = raw_name.decode("utf-8")
        if name in out:
            r.fail(f"activation {name[:60]!r} appears twice")
        (scale,) = struct.unpack("<f", r.take(4, f"{name[:60]} scale"))
        if not (math.isfinite(scale) and scale > 0):
            r.fail(f"activation {name[:60]!r} has scale {scale}, not a finite number above 0")
        out[name] = (float(scale), r.byte(f"{name[:60]} zero point"))
    r.done()
    return out
