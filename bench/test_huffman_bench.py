"""Huffman coding speed on a realistic weight stream: 4 M 5-bit quantized weights drawn from a
Laplacian-like distribution over 32 codebook entries (entropy 3.76 bits), one byte per symbol.

The decoder is single-threaded; it is compared with zlib's inflate of the same symbol bytes
(deflated at level 9) timed in the same run, as output symbols per second over output bytes per
second. Both run on one core; Numba's pool is set to one thread for the measurement.
"""

import zlib

import numba
import numpy as np
import pytest

from bench.conftest import best_seconds, gate
from npdc.codec.huffman import code_lengths, decode, encode

N = 4_000_000
DECODE_FLOOR = 3.0  # npdc symbols/s over zlib inflate bytes/s, same run (measured 4.5)


@pytest.fixture(scope="module")
def stream():
    rng = np.random.default_rng(0)
    p = np.exp(-np.abs(np.arange(32) - 15.5) / 2.5)
    symbols = rng.choice(32, N, p=p / p.sum()).astype(np.uint8)
    lengths = code_lengths(np.bincount(symbols, minlength=32))
    data, n_bits = encode(symbols, lengths)
    return symbols, lengths, data, n_bits, zlib.compress(symbols.tobytes(), 9)


@pytest.fixture
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.mark.gate
def test_huffman_decode(benchmark, stream, one_thread):
    symbols, lengths, data, n_bits, deflated = stream
    assert np.array_equal(decode(data, n_bits, lengths, N), symbols)  # also compiles
    zlib_seconds = best_seconds(lambda: zlib.decompress(deflated), repeats=7)
    benchmark(decode, data, n_bits, lengths, N)
    msym = N / benchmark.stats.stats.min / 1e6
    zlib_msym = N / zlib_seconds / 1e6
    benchmark.extra_info["msym_per_s"] = round(msym, 1)
    benchmark.extra_info["zlib_msym_per_s"] = round(zlib_msym, 1)
    benchmark.extra_info["bits_per_symbol"] = round(n_bits / N, 3)
    benchmark.extra_info["zlib_bits_per_symbol"] = round(8 * len(deflated) / N, 3)
    gate(benchmark, "vs_zlib", msym / zlib_msym, DECODE_FLOOR)


def test_huffman_encode(benchmark, stream, one_thread):
    """Encoding speed, for the record (no floor): counts, code table and bit packing."""
    symbols, lengths, data, n_bits, _ = stream
    assert encode(symbols, lengths) == (data, n_bits)
    benchmark(encode, symbols, lengths)
    benchmark.extra_info["msym_per_s"] = round(N / benchmark.stats.stats.min / 1e6, 1)
