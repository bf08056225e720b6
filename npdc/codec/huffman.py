"""Canonical Huffman coding of symbol streams, the last stage of Deep Compression (Han, Mao &
Dally 2016), which Huffman-codes the quantized weight indices and the relative sparse indices.

- Code lengths: optimal prefix-code lengths (Huffman 1952) under a maximum length, found exactly
  by package-merge (Larmore & Hirschberg 1990, "A fast algorithm for optimal length-limited
  Huffman codes"). When the limit does not bind, the total length equals an unrestricted Huffman
  code's. Departures: a lone used symbol gets length 1 (a zero-length code could not be read
  back); unused symbols get length 0 and no code.
- Canonical codes (Schwartz & Kallick 1964; the DEFLATE convention of RFC 1951): used symbols in
  (length, symbol) order get consecutive values; stepping to a longer length appends zero bits:
  code = (previous code + 1) << (length - previous length), starting from 0. Hence only the
  lengths are stored, and the code space an incomplete code leaves unused is at the all-ones end.

Stream layout: the codes of the symbols, in order, back to back with no separators, MSB first
(stream bit k is bit 7 - k % 8 of byte k // 8, each code most significant bit first). The last
byte is padded with zero bits; n_bits is the exact number of code bits. The decoder needs the
lengths, n_bits and the symbol count, and refuses a stream that uses a different number of bits.

Decoding runs in npdc.kernels.huffman (a multi-symbol lookup table; see there). Decoded symbols
come back as uint8 for alphabets of up to 256 symbols, else uint16 (alphabets up to 65536).
"""

import numpy as np

from npdc.kernels import huffman as kern

MAX_LEN = 16  # default length limit; the stream format allows up to kern.MAX_CODE_BITS
MAX_SYMBOLS = 1 << 16

_ERRORS = {
    kern.ERR_TRUNCATED: "truncated Huffman stream: the bits end before all symbols are decoded",
    kern.ERR_INVALID: "corrupt Huffman stream: a bit pattern that is not a code",
    kern.ERR_TRAILING: "corrupt Huffman stream: bits left over after the last symbol",
    kern.ERR_ARGS: "inconsistent Huffman stream arguments",
}


def _check_max_len(max_len):
    if not 1 <= int(max_len) <= kern.MAX_CODE_BITS:
        raise ValueError(f"max_len must be in 1..{kern.MAX_CODE_BITS}, got {max_len}")
    return int(max_len)


def code_lengths(counts, max_len=MAX_LEN):
    """Optimal code lengths (uint8, one per symbol) for symbol counts, none longer than max_len.

    Package-merge: level 1 (the deepest, length max_len) lists the used symbols by ascending
    count; each shallower level lists the symbols again merged with "packages", the sums of
    consecutive pairs of the level below. The 2n - 2 cheapest items of the top level are taken;
    a taken package takes its two parts one level down, and a symbol's length is the number of
    levels at which it is taken. A taken prefix of a sorted merged list is a prefix of the symbols
    and a prefix of the packages, so only per-level counts are needed: O(n * max_len) memory."""
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError("counts must be one-dimensional")
    max_len = _check_max_len(max_len)
    lengths = np.zeros(counts.shape[0], np.uint8)
    if counts.size == 0:
        return lengths
    if counts.dtype.kind not in "iu":
        raise ValueError("counts must be integers")
    if counts.min() < 0:
        raise ValueError("counts must be non-negative")
    used = np.flatnonzero(counts)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used[0]] = 1
        return lengths
    if n > 1 << max_len:
        raise ValueError(f"{n} symbols cannot all have codes of at most {max_len} bits")
    rank = np.argsort(counts[used], kind="stable")  # ascending count, ties by symbol
    leaf = counts[used][rank].astype(np.int64)
    # taken[d] = cumulative number of symbols among the first j+1 items of level d's list
    taken_leaves = [np.arange(1, n + 1)]
    items = leaf
    for _ in range(max_len - 1):
        half = items.shape[0] // 2
        packages = items[0:2 * half:2] + items[1:2 * half:2]
        merged = np.concatenate([leaf, packages])
        is_leaf = np.concatenate([np.ones(n, np.int64), np.zeros(half, np.int64)])
        order = np.argsort(merged, kind="stable")  # symbols before packages on ties
        items = merged[order]
        taken_leaves.append(np.cumsum(is_leaf[order]))
    depth = np.zeros(n + 1, np.int64)  # difference array over ranks
    m = 2 * n - 2
    for cum in reversed(taken_leaves):  # from length 1 down to length max_len
        if m == 0:
            break
        k = int(cum[m - 1])  # the k lightest symbols are taken at this level
        depth[0] += 1
        depth[k] -= 1
        m = 2 * (m - k)
    lengths[used[rank]] = np.cumsum(depth)[:n]
    return lengths


def check_lengths(lengths, max_len=MAX_LEN):
    """Validated code lengths as uint8: integers in 0..max_len, Kraft sum <= 1, at most
    MAX_SYMBOLS symbols. Raises ValueError otherwise."""
    max_len = _check_max_len(max_len)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError("code lengths must be one-dimensional")
    if lengths.size > MAX_SYMBOLS:
        raise ValueError(f"at most {MAX_SYMBOLS} symbols, got {lengths.size}")
    if lengths.size == 0:
        return np.zeros(0, np.uint8)
    if lengths.dtype.kind not in "iu":
        raise ValueError("code lengths must be integers")
    if lengths.min() < 0 or lengths.max() > max_len:
        raise ValueError(f"code lengths must be in 0..{max_len}")
    used = lengths[lengths > 0].astype(np.int64)
    if int(np.sum(np.int64(1) << (max_len - used))) > 1 << max_len:
        raise ValueError("code lengths violate the Kraft inequality (sum of 2**-l exceeds 1)")
    return lengths.astype(np.uint8)


def canonical_codes(lengths):
    """Canonical code values (uint32, 0 for unused symbols) for valid code lengths: used symbols
    in (length, symbol) order count up, shifting left whenever the length grows."""
    lengths = check_lengths(lengths, kern.MAX_CODE_BITS)
    codes = np.zeros(lengths.shape[0], np.uint32)
    if lengths.size == 0 or lengths.max() == 0:
        return codes
    longest = int(lengths.max())
    per_len = np.bincount(lengths, minlength=longest + 1)
    per_len[0] = 0
    first = np.zeros(longest + 1, np.int64)
    for l in range(2, longest + 1):
        first[l] = (first[l - 1] + per_len[l - 1]) << 1
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    sorted_len = lengths[order].astype(np.int64)
    group_start = np.searchsorted(sorted_len, sorted_len, side="left")
    codes[order] = first[sorted_len] + np.arange(order.size) - group_start
    return codes


def total_bits(counts, lengths):
    """Number of bits a stream with these symbol counts takes under these code lengths."""
    return int(np.dot(np.asarray(counts, np.int64), np.asarray(lengths, np.int64)))


def _as_symbols(symbols, n_symbols):
    """Symbols as a 1-D integer array that bincount accepts; ValueError when out of range."""
    symbols = np.ascontiguousarray(symbols).reshape(-1)
    if symbols.size == 0:
        return symbols
    if symbols.dtype.kind not in "iu":
        raise ValueError("symbols must be integers")
    if symbols.min() < 0 or symbols.max() >= n_symbols:
        raise ValueError(f"symbols must be in 0..{n_symbols - 1}")
    if symbols.dtype.itemsize == 8 and symbols.dtype.kind == "u":
        symbols = symbols.astype(np.int64)
    return symbols


def encode(symbols, lengths, max_len=MAX_LEN):
    """Huffman-code a stream of symbols (any shape, read flat): returns (bytes, n_bits).

    Raises ValueError for bad lengths or a symbol that has no code."""
    lengths = check_lengths(lengths, max_len)
    symbols = _as_symbols(symbols, lengths.shape[0])
    if symbols.size == 0:
        return b"", 0
    counts = np.bincount(symbols, minlength=lengths.shape[0])
    if np.any(counts[lengths == 0]):
        raise ValueError("a symbol in the stream has no code (its length is 0)")
    n_bits = total_bits(counts, lengths)
    out = np.zeros((n_bits + 7) // 8, np.uint8)
    written = kern.pack_codes(symbols, canonical_codes(lengths), lengths, out)
    if written != n_bits:
        raise RuntimeError(f"Huffman encoder wrote {written} bits, expected {n_bits}")
    return out.tobytes(), n_bits


def decode(data, n_bits, lengths, count, max_len=MAX_LEN):
    """Decode `count` symbols from a stream made by encode; only the code lengths are needed.

    Returns uint8 symbols (uint16 for alphabets over 256). Raises ValueError on bad lengths or
    a stream that is truncated, holds an invalid code or does not use exactly n_bits bits."""
    lengths = check_lengths(lengths, max_len)
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise ValueError("data must be bytes or a 1-D uint8 array")
    buf = np.ascontiguousarray(buf)
    n_bits, count = int(n_bits), int(count)
    if n_bits < 0 or count < 0:
        raise ValueError("n_bits and count must be non-negative")
    if n_bits > 8 * buf.shape[0]:
        raise ValueError(f"truncated Huffman stream: {n_bits} bits announced, "
                         f"{8 * buf.shape[0]} present")
    dtype = np.uint8 if lengths.shape[0] <= 256 else np.uint16
    if count == 0:
        if n_bits:
            raise ValueError(_ERRORS[kern.ERR_TRAILING])
        return np.zeros(0, dtype)
    if lengths.size == 0 or lengths.max() == 0:
        raise ValueError("no symbol has a code, but symbols were asked for")
    table, limit, base, order, longest = kern.build_decoder(
        canonical_codes(lengths), lengths, lengths.shape[0] <= 256)
    out = np.empty(count, dtype)
    status = kern.decode_symbols(buf, n_bits, count, table, limit, base, order, longest, out)
    if status != kern.OK:
        raise ValueError(_ERRORS.get(status, f"Huffman decoder failed with status {status}"))
    return out
