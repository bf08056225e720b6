"""Tests for npdc.kernels.huffman, called directly: the lookup table against greedy prefix
matching of every window, decoder status codes and buffer bounds, and the bit packers."""

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.codec.huffman import canonical_codes, code_lengths, encode
from npdc.kernels import huffman as kern

FIB = [1, 1]
while len(FIB) < 24:
    FIB.append(FIB[-1] + FIB[-2])


def codebook(lengths):
    codes = canonical_codes(lengths)
    return {format(int(codes[s]), f"0{int(l)}b"): s for s, l in enumerate(lengths) if l > 0}


def greedy_window(bits, book, per):
    """Whole codes at the start of a bit string, at most `per` of them: (symbols, bits used)."""
    syms, used = [], 0
    while len(syms) < per:
        for code, s in book.items():
            if bits.startswith(code, used):
                syms.append(s)
                used += len(code)
                break
        else:
            break
    return syms, used


LENGTH_SETS = {
    "skewed": code_lengths(np.round(1e3 * np.exp(-np.abs(np.arange(32) - 15.5) / 2)).astype(int)
                           + 1),
    "fibonacci": code_lengths(FIB[::-1]),
    "incomplete": np.array([1, 3, 0, 4, 6], np.uint8),
    "flat 8-bit": code_lengths(np.ones(256, np.int64)),
    "wide": code_lengths(np.arange(1, 1001)),
}


@pytest.mark.parametrize("name", LENGTH_SETS)
def test_table_entries_match_greedy_decoding(name):
    lengths = LENGTH_SETS[name]
    book = codebook(lengths)
    multi = lengths.size <= 256
    table, limit, base, order, longest = kern.build_decoder(canonical_codes(lengths), lengths,
                                                            multi)
    assert longest == int(lengths.max())
    assert order.tolist() == sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s))
    per = kern.ENTRY_SYMBOLS if multi else 1
    for i in range(0, 1 << kern.TABLE_BITS, 1 if lengths.size <= 256 else 7):
        e = int(table[i])
        syms, used = greedy_window(format(i, f"0{kern.TABLE_BITS}b"), book, per)
        assert (e >> 5) & 3 == len(syms) and e & 31 == used
        width = 8 if multi else 16
        got = [(e >> (8 + width * k)) & ((1 << width) - 1) for k in range(len(syms))]
        assert got == syms


def decode_raw(data, n_bits, lengths, count, pad=0, fill=0):
    lengths = np.asarray(lengths, np.uint8)
    table, limit, base, order, longest = kern.build_decoder(canonical_codes(lengths), lengths,
                                                            lengths.size <= 256)
    out = np.full(count + pad, fill, np.uint8 if lengths.size <= 256 else np.uint16)
    buf = np.frombuffer(data, np.uint8)
    status = kern.decode_symbols(buf, n_bits, count, table, limit, base, order, longest, out)
    return status, out


@pytest.mark.parametrize("name", ["skewed", "fibonacci", "flat 8-bit", "wide"])
def test_decoder_writes_nothing_past_count(name):
    lengths = LENGTH_SETS[name]
    rng = np.random.default_rng(1)
    symbols = rng.choice(np.flatnonzero(lengths), 5000)
    data, n_bits = encode(symbols, lengths)
    status, out = decode_raw(data, n_bits, lengths, symbols.size, pad=64, fill=77)
    assert status == kern.OK
    assert out[:symbols.size].tolist() == symbols.tolist()
    assert np.all(out[symbols.size:] == 77)
    for count in (symbols.size // 2, symbols.size - 40, 13, 1):  # the stream holds more symbols
        status, out = decode_raw(data, n_bits, lengths, count, pad=64, fill=77)
        assert status == kern.ERR_TRAILING
        assert out[:count].tolist() == symbols[:count].tolist()
        assert np.all(out[count:] == 77)


def test_status_codes():
    lengths = LENGTH_SETS["fibonacci"]
    symbols = np.random.default_rng(2).permutation(np.repeat(np.arange(24), FIB[::-1]))
    data, n_bits = encode(symbols, lengths)
    n = symbols.size
    assert decode_raw(data, n_bits, lengths, n)[0] == kern.OK
    assert decode_raw(data, n_bits, lengths, n + 1)[0] == kern.ERR_TRUNCATED
    assert decode_raw(data, n_bits, lengths, n - 1)[0] == kern.ERR_TRAILING
    assert decode_raw(data[:-1], n_bits, lengths, n)[0] == kern.ERR_ARGS
    assert decode_raw(data, n_bits, lengths, n, pad=-1)[0] == kern.ERR_ARGS
    incomplete = LENGTH_SETS["incomplete"]  # codes 0, 100, 1010, 101100; 1011 01.. and 11 are none
    assert decode_raw(b"\xff" * 40, 320, incomplete, 10)[0] == kern.ERR_INVALID
    assert decode_raw(b"\x00" * 40 + b"\xff", 328, incomplete, 321)[0] == kern.ERR_INVALID
    assert decode_raw(b"\xb4", 8, incomplete, 2)[0] == kern.ERR_INVALID  # 1011 01..
    assert decode_raw(b"\xb0", 6, incomplete, 1)[0] == kern.OK  # 101100
    assert decode_raw(b"\xb0", 5, incomplete, 1)[0] == kern.ERR_TRUNCATED


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.integers(0, 700))
def test_random_bytes_never_crash(data, count):
    for lengths in (LENGTH_SETS["fibonacci"], LENGTH_SETS["incomplete"]):
        status, out = decode_raw(data, 8 * len(data), lengths, count)
        assert status in (kern.OK, kern.ERR_TRUNCATED, kern.ERR_INVALID, kern.ERR_TRAILING)
        if status == kern.OK:
            assert np.all(lengths[out[:count]] > 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 32), st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_fixed_packers(width, raw):
    values = np.array([v % (1 << width) for v in raw], np.uint64)
    out = np.zeros((values.size * width + 7) // 8, np.uint8)
    assert kern.pack_fixed_bits(values, width, out) == values.size * width
    bits = "".join(format(int(v), f"0{width}b") for v in values)
    assert "".join(format(b, "08b") for b in out)[:len(bits)] == bits
    back = np.zeros(values.size, np.uint64)
    assert kern.unpack_fixed_bits(out, width, values.size, back) == kern.OK
    assert back.tolist() == values.tolist()
    if values.size and width * values.size > 8:
        assert kern.unpack_fixed_bits(out[:-1], width, values.size, back) == kern.ERR_TRUNCATED


def test_packer_refusals():
    out = np.zeros(8, np.uint8)
    assert kern.pack_fixed_bits(np.array([8], np.int64), 3, out) == kern.ERR_SYMBOL
    assert kern.pack_fixed_bits(np.array([-1], np.int64), 3, out) == kern.ERR_SYMBOL
    assert kern.pack_fixed_bits(np.arange(20, dtype=np.int64), 5, out) == kern.ERR_ARGS
    codes, lengths = np.array([0, 1], np.uint32), np.array([1, 1], np.uint8)
    assert kern.pack_codes(np.array([0, 2], np.int64), codes, lengths, out) == kern.ERR_SYMBOL
    assert kern.pack_codes(np.array([0, 1], np.int64), codes, np.array([1, 0], np.uint8),
                           out) == kern.ERR_SYMBOL
    assert kern.pack_codes(np.ones(100, np.int64), codes, lengths, out) == kern.ERR_ARGS
    assert kern.pack_codes(np.array([1, 0, 1], np.int64), codes, lengths, out) == 3
    assert out[0] == 0b10100000


def test_every_kernel_is_cached():
    jitted = [f for f in vars(kern).values() if isinstance(f, numba.core.registry.CPUDispatcher)]
    assert len(jitted) >= 8
    for f in jitted:
        assert type(f._cache).__name__ == "FunctionCache", f.__name__


BOUNDS_SCRIPT = r'''
import numba, numpy as np
from npdc.codec.huffman import canonical_codes, code_lengths, encode
from npdc.kernels import huffman as kern

@numba.njit
def probe(a):
    return a[a.shape[0]]
try:
    probe(np.zeros(3))
    raise SystemExit("bounds checking is off")
except IndexError:
    pass

rng = np.random.default_rng(5)
fib = [1, 1]
while len(fib) < 24:
    fib.append(fib[-1] + fib[-2])
sets = [code_lengths(fib[::-1]), np.array([1, 3, 0, 4, 6], np.uint8),
        code_lengths(rng.integers(1, 100, 300))]
for lengths in sets:
    table, limit, base, order, longest = kern.build_decoder(canonical_codes(lengths), lengths,
                                                            lengths.size <= 256)
    symbols = rng.choice(np.flatnonzero(lengths), 3000)
    stream = np.frombuffer(encode(symbols, lengths)[0], np.uint8)
    for trial in range(300):
        n = int(rng.integers(0, 200)) if trial % 2 else stream.size
        data = stream[:n].copy() if trial % 3 else rng.integers(0, 256, n).astype(np.uint8)
        if n:
            data[rng.integers(0, n, 3)] ^= np.uint8(1 << int(rng.integers(0, 8)))
        count = int(rng.integers(0, 4000))
        out = np.empty(count, np.uint8 if lengths.size <= 256 else np.uint16)
        kern.decode_symbols(data, 8 * n, count, table, limit, base, order, longest, out)
        kern.decode_symbols(data, max(8 * n - 5, 0), count, table, limit, base, order, longest, out)
print("ok")
'''


def test_no_out_of_bounds_access(tmp_path):
    """Corrupt, truncated and random streams under Numba's bounds checking (a fresh cache)."""
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", BOUNDS_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
