"""Bit-stream kernels for npdc.codec: MSB-first bit packing and a table-driven canonical Huffman
decoder that emits up to three symbols per table lookup.

Bit order everywhere: stream bit k is bit (7 - k % 8) of byte k // 8, and every field or code is
written most significant bit first. Canonical codes follow the DEFLATE convention (RFC 1951):
within one length codes count up in symbol order, and a longer length continues from the last
shorter code shifted left, so the unused code space of an incomplete code lies at the all-ones end.

Decoding: the per-length limits of canonical decoding (Moffat & Turpin 1997, "On the
implementation of minimum redundancy prefix codes") behind a primary lookup table that yields
several whole codes at once, as the multi-symbol tables of fast software Huffman decoders do
(e.g. Zstandard's double-symbol decoder). Departures: up to three symbols per entry, one stream
(no interleaved streams, so the format stays a plain concatenation of codes).
- A 64-bit buffer holds the next bits left-aligned. One branch-free refill (an 8-byte big-endian
  load shifted under the bits still held, as in F. Giesen's 2018 notes "Reading bits in far too
  many ways") leaves at least 56 valid bits, enough for four lookups.
- The primary table has 2**TABLE_BITS uint32 entries, indexed by the next TABLE_BITS bits:
  bits 0-4 = bits consumed, bits 5-6 = number of symbols (0-3), bits 8-15, 16-23, 24-31 = the
  symbols in stream order (alphabets of <= 256 symbols). An entry holds as many complete codes as
  fit in the window, at most three. For larger alphabets an entry holds one symbol in bits 8-23.
- An entry with no symbol means the next code is longer than TABLE_BITS or is no code at all; one
  symbol is then found from the per-length limits (canonical decoding), or the stream is invalid.
- All three symbol slots are stored unconditionally and the output index moves by the count.
- The fast loop runs only while 16 input bytes and room for a full round of output (13 symbols)
  remain, so even the unconditional stores stay before out[count]; the last symbols are decoded
  one at a time with bounds-checked reads. Every loop is bounded by the input length or
  by `count`, so a corrupt or truncated stream ends in an error code, never in a stray read.
"""

import numba
import numpy as np

TABLE_BITS = 12  # a 16 KB table stays in L1; 11 and 13 bits measured slower here
ENTRY_SYMBOLS = 3  # four per entry needs 64-bit entries and measured slower
LOOKUPS = 56 // TABLE_BITS  # lookups per refill: each consumes at most TABLE_BITS of >= 56 bits
MAX_CODE_BITS = 32

OK = 0
ERR_TRUNCATED = -1  # the bits ran out before `count` symbols
ERR_INVALID = -2  # a bit pattern that starts no code (only an incomplete code has them)
ERR_TRAILING = -3  # `count` symbols decoded but bits of n_bits are left over
ERR_ARGS = -4  # buffers too small for the sizes given
ERR_SYMBOL = -5  # (encoders) a value out of range or a symbol without a code

_U8 = np.uint64(8)
_U32 = np.uint64(32)
_U56 = np.uint64(56)
_U63 = np.uint64(63)
_SHIFT = np.uint64(64 - TABLE_BITS)


@numba.njit(cache=True)
def _load_be64(data, i):
    """Bytes data[i:i+8] as one big-endian uint64 (caller guarantees i + 8 <= len(data))."""
    w = np.uint64(0)
    for k in range(8):
        w = (w << _U8) | np.uint64(data[i + k])
    return w


@numba.njit(cache=True)
def _put32(out, p, w):
    """Store the low 32 bits of w big-endian at out[p:p+4]."""
    out[p] = (w >> np.uint64(24)) & np.uint64(255)
    out[p + 1] = (w >> np.uint64(16)) & np.uint64(255)
    out[p + 2] = (w >> _U8) & np.uint64(255)
    out[p + 3] = w & np.uint64(255)


@numba.njit(cache=True)
def _flush_tail(out, p, acc, nacc):
    """Write the last nacc (< 32) bits of acc left-aligned into whole bytes from out[p]."""
    if nacc == 0:
        return 0
    w = (acc & ((np.uint64(1) << np.uint64(nacc)) - np.uint64(1))) << np.uint64(32 - nacc)
    nb = (nacc + 7) // 8
    if p + nb > out.shape[0]:
        return -1
    for k in range(nb):
        out[p + k] = (w >> np.uint64(24 - 8 * k)) & np.uint64(255)
    return nb


@numba.njit(cache=True, inline="always")
def _push(out, p, acc, nacc, v, n):
    """Append the n-bit value v to the bit accumulator; whole 32-bit words go to out[p:].
    Returns (acc, nacc, p), p = -1 when out is too small."""
    acc = (acc << np.uint64(n)) | v
    nacc += n
    if nacc >= 32:
        nacc -= 32
        if p + 4 > out.shape[0]:
            return acc, nacc, -1
        _put32(out, p, acc >> np.uint64(nacc))
        p += 4
    return acc, nacc, p


@numba.njit(cache=True)
def pack_fixed_bits(values, width, out):
    """Write each value in `width` (1..32) bits, MSB first, into out (uint8, >= ceil(n*width/8)).

    Returns the number of bits written, or ERR_SYMBOL if a value needs more than `width` bits,
    or ERR_ARGS if out is too small."""
    mask = (np.uint64(1) << np.uint64(width)) - np.uint64(1)
    acc = np.uint64(0)
    nacc = 0
    p = 0
    for i in range(values.shape[0]):
        v = np.uint64(values[i])
        if v > mask or values[i] < 0:
            return ERR_SYMBOL
        acc, nacc, p = _push(out, p, acc, nacc, v, width)
        if p < 0:
            return ERR_ARGS
    if _flush_tail(out, p, acc, nacc) < 0:
        return ERR_ARGS
    return 8 * p + nacc


@numba.njit(cache=True)
def unpack_fixed_bits(data, width, count, out):
    """Read `count` fields of `width` (1..32) bits from data into out[:count].

    Returns OK, or ERR_TRUNCATED when data ends first (nothing past data is read)."""
    mask = (np.uint64(1) << np.uint64(width)) - np.uint64(1)
    acc = np.uint64(0)
    nacc = 0
    p = 0
    n = data.shape[0]
    if out.shape[0] < count:
        return ERR_ARGS
    for i in range(count):
        while nacc < width:  # at most 31 bits held before 8 more come in
            if p >= n:
                return ERR_TRUNCATED
            acc = (acc << _U8) | np.uint64(data[p])
            p += 1
            nacc += 8
        nacc -= width
        out[i] = (acc >> np.uint64(nacc)) & mask
    return OK


@numba.njit(cache=True)
def pack_codes(symbols, code_of, len_of, out):
    """Write code_of[s] in len_of[s] bits (1..32) for each s in symbols, MSB first, into out.

    Returns the number of bits written, ERR_SYMBOL for a symbol outside the table or without a
    code, ERR_ARGS when out is too small. out must come zeroed only past the last whole byte."""
    n_tab = code_of.shape[0]
    acc = np.uint64(0)
    nacc = 0
    p = 0
    for i in range(symbols.shape[0]):
        s = symbols[i]
        if s < 0 or s >= n_tab:
            return ERR_SYMBOL
        l = np.int64(len_of[s])
        if l == 0:
            return ERR_SYMBOL
        acc, nacc, p = _push(out, p, acc, nacc, np.uint64(code_of[s]), l)
        if p < 0:
            return ERR_ARGS
    if _flush_tail(out, p, acc, nacc) < 0:
        return ERR_ARGS
    return 8 * p + nacc


@numba.njit(cache=True)
def build_decoder(codes, lengths, multi):
    """Lookup structures for canonical codes (codes[s] in lengths[s] bits, 0 = unused symbol).

    Returns (table, limit, base, order, longest):
      table  uint32 (2**TABLE_BITS,), the primary table described in the module docstring;
             `multi` (honoured for <= 256 symbols) packs up to three 8-bit symbols per
             entry, else an entry holds one symbol in bits 8-23;
      limit  int64 (longest+1,), limit[l] = first code of length l + number of codes of length l;
             the next code has the smallest length l whose l-bit prefix is < limit[l];
      base   int64, symbol = order[base[l] + prefix];
      order  int32, used symbols sorted by (length, symbol)."""
    n = lengths.shape[0]
    longest = 0
    for s in range(n):
        longest = max(longest, np.int64(lengths[s]))
    per_len = np.zeros(longest + 2, np.int64)
    for s in range(n):
        per_len[lengths[s]] += 1
    per_len[0] = 0
    limit = np.zeros(longest + 1, np.int64)
    base = np.zeros(longest + 1, np.int64)
    start = np.zeros(longest + 2, np.int64)  # where length l starts in `order`
    first = 0
    for l in range(1, longest + 1):
        start[l + 1] = start[l] + per_len[l]
        limit[l] = first + per_len[l]
        base[l] = start[l] - first
        first = (first + per_len[l]) << 1
    order = np.zeros(start[longest + 1] if longest > 0 else 0, np.int32)
    fill = start.copy()
    for s in range(n):
        l = lengths[s]
        if l > 0:
            order[fill[l]] = s
            fill[l] += 1

    size = 1 << TABLE_BITS
    one_sym = np.zeros(size, np.int64)
    one_len = np.zeros(size, np.int64)
    for s in range(n):
        l = np.int64(lengths[s])
        if 0 < l <= TABLE_BITS:
            lo = np.int64(codes[s]) << (TABLE_BITS - l)
            hi = (np.int64(codes[s]) + 1) << (TABLE_BITS - l)
            one_sym[lo:hi] = s
            one_len[lo:hi] = l
    per = ENTRY_SYMBOLS if multi and n <= 256 else 1
    table = np.zeros(size, np.uint32)
    for i in range(size):
        used = 0
        ns = 0
        e = 0
        while ns < per:
            w = (i << used) & (size - 1)  # the window after the codes taken so far
            l = one_len[w]
            if l == 0 or used + l > TABLE_BITS:
                break
            e |= one_sym[w] << (8 + 8 * ns)
            used += l
            ns += 1
        table[i] = e | used | (ns << 5)
    return table, limit, base, order, longest


@numba.njit(cache=True)
def _peek(data, nbytes, pos, nbits):
    """The `nbits` (<= 32) stream bits from bit `pos`, as an integer; bytes past nbytes read 0."""
    b = pos >> 3
    w = np.uint64(0)
    for k in range(5):
        w <<= _U8
        if b + k < nbytes:
            w |= np.uint64(data[b + k])
    w = (w << np.uint64(pos & 7)) & np.uint64(0xFFFFFFFFFF)
    return w >> np.uint64(40 - nbits)


@numba.njit(cache=True)
def decode_symbols(data, n_bits, count, table, limit, base, order, longest, out):
    """Decode `count` symbols from the first n_bits bits of data into out[:count].

    Arguments as returned by build_decoder; out has at least `count` elements and nothing past
    out[count - 1] is written. Returns OK, or ERR_TRUNCATED / ERR_INVALID / ERR_TRAILING /
    ERR_ARGS (see the module constants)."""
    nbytes = (n_bits + 7) >> 3
    if n_bits < 0 or count < 0 or data.shape[0] < nbytes or out.shape[0] < count:
        return ERR_ARGS
    if longest < 1 or longest > MAX_CODE_BITS or table.shape[0] != 1 << TABLE_BITS:
        return ERR_ARGS
    if limit.shape[0] != longest + 1 or base.shape[0] != longest + 1:
        return ERR_ARGS
    top = np.uint64(64 - longest)
    buf = np.uint64(0)  # next bits, left-aligned
    cnt = np.uint64(0)  # how many bits of buf are valid
    bp = 0  # next byte to load
    o = 0
    last_o = count - (LOOKUPS * ENTRY_SYMBOLS + 1)  # one round may add (and store) this many
    last_bp = nbytes - 16  # one round may refill twice
    while o <= last_o and bp <= last_bp:
        buf |= _load_be64(data, bp) >> cnt
        bp += np.int64((_U63 - cnt) >> np.uint64(3))
        cnt |= _U56
        slow = False
        for _ in range(LOOKUPS):
            e = table[buf >> _SHIFT]
            ns = (e >> np.uint32(5)) & np.uint32(3)
            if ns == 0:
                slow = True
                break
            out[o] = e >> np.uint32(8)
            out[o + 1] = e >> np.uint32(16)
            out[o + 2] = e >> np.uint32(24)
            o += np.int64(ns)
            n = np.uint64(e & np.uint32(31))
            buf <<= n
            cnt -= n
        if slow:  # a code longer than the table, or none: search the per-length limits
            buf |= _load_be64(data, bp) >> cnt
            bp += np.int64((_U63 - cnt) >> np.uint64(3))
            cnt |= _U56
            v = buf >> top
            found = 0
            for l in range(TABLE_BITS + 1, longest + 1):
                c = np.int64(v >> np.uint64(longest - l))
                if c < limit[l]:
                    out[o] = order[base[l] + c]
                    o += 1
                    buf <<= np.uint64(l)
                    cnt -= np.uint64(l)
                    found = 1
                    break
            if found == 0:
                return ERR_INVALID
    pos = 8 * bp - np.int64(cnt)  # first bit not yet decoded
    while o < count:
        if pos >= n_bits:
            return ERR_TRUNCATED
        v = _peek(data, nbytes, pos, longest)
        found = 0
        for l in range(1, longest + 1):
            c = np.int64(v >> np.uint64(longest - l))
            if c < limit[l]:
                if pos + l > n_bits:
                    return ERR_TRUNCATED
                out[o] = order[base[l] + c]
                o += 1
                pos += l
                found = 1
                break
        if found == 0:
            return ERR_TRUNCATED if pos + longest > n_bits else ERR_INVALID
    if pos != n_bits:
        return ERR_TRAILING
    return OK
