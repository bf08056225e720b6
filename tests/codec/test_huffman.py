"""Tests for npdc.codec.huffman: optimality against a heap-built Huffman code and a brute-force
length-limited optimum, canonical assignment, bit layout against a bit-string reference, round
trips, and refusal of corrupt or truncated streams."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import optimal_huffman_bits
from npdc.codec.huffman import (MAX_SYMBOLS, canonical_codes, check_lengths, code_lengths, decode,
                                encode)

HYPO = settings(max_examples=40, deadline=None)
FIB = [1, 1]
while len(FIB) < 30:
    FIB.append(FIB[-1] + FIB[-2])


def limited_optimum(counts, max_len):
    """Cheapest lengths in 1..max_len for the used symbols with Kraft sum <= 1, by enumeration."""
    used = [c for c in counts if c > 0]
    best = None
    for ls in itertools.product(range(1, max_len + 1), repeat=len(used)):
        if sum(2.0**-l for l in ls) <= 1:
            cost = sum(c * l for c, l in zip(used, ls))
            best = cost if best is None else min(best, cost)
    return best


def kraft(lengths):
    return sum(2.0**-int(l) for l in lengths if l > 0)


def code_strings(lengths):
    codes = canonical_codes(lengths)
    return {s: format(int(codes[s]), f"0{int(l)}b") for s, l in enumerate(lengths) if l > 0}


def reference_encode(symbols, lengths):
    """The codes as '0'/'1' strings, joined, padded with zeros to whole bytes."""
    table = code_strings(lengths)
    bits = "".join(table[int(s)] for s in symbols)
    n_bits = len(bits)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)), n_bits


def round_trip(symbols, lengths, max_len=16):
    data, n_bits = encode(symbols, lengths, max_len)
    assert n_bits == sum(int(lengths[s]) for s in np.ravel(symbols))
    out = decode(data, n_bits, lengths, np.size(symbols), max_len)
    assert out.tolist() == np.ravel(symbols).tolist()
    return data, n_bits


counts_lists = st.lists(st.integers(0, 10_000), min_size=1, max_size=40)


@HYPO
@given(counts_lists)
def test_lengths_are_optimal_when_the_limit_does_not_bind(counts):
    lengths = code_lengths(counts, max_len=32)
    assert [int(l) == 0 for l in lengths] == [c == 0 for c in counts]
    if any(counts):
        assert int(np.dot(counts, lengths)) == optimal_huffman_bits(counts)
        assert kraft(lengths) <= 1
    if int(lengths.max()) <= 16:
        assert code_lengths(counts).tolist() == lengths.tolist()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=6), st.integers(2, 4))
def test_lengths_match_brute_force_under_a_binding_limit(counts, max_len):
    used = sum(c > 0 for c in counts)
    if used > 2**max_len:
        with pytest.raises(ValueError):
            code_lengths(counts, max_len)
        return
    lengths = code_lengths(counts, max_len)
    assert int(lengths.max()) <= max_len and kraft(lengths) <= 1
    if used >= 2:
        assert int(np.dot(counts, lengths)) == limited_optimum(counts, max_len)


def test_fibonacci_counts_force_the_limit():
    unlimited = code_lengths(FIB, max_len=32)
    assert int(unlimited.max()) == 29  # a chain: the limit of 16 must bind
    lengths = code_lengths(FIB)
    assert int(lengths.max()) == 16 and lengths.min() >= 1
    assert kraft(lengths) == 1.0
    assert np.dot(FIB, lengths) > optimal_huffman_bits(FIB)
    assert all(a >= b for a, b in zip(lengths[:-1], lengths[1:]))  # rarer symbols, longer codes


def test_special_counts():
    assert code_lengths([0, 0, 5, 0]).tolist() == [0, 0, 1, 0]  # lone symbol: one bit
    assert code_lengths([0, 0]).tolist() == [0, 0]
    assert code_lengths([]).size == 0
    assert code_lengths([3, 3, 3, 3]).tolist() == [2, 2, 2, 2]
    assert code_lengths([1] * 256, max_len=8).tolist() == [8] * 256
    with pytest.raises(ValueError):
        code_lengths([1] * 257, max_len=8)
    with pytest.raises(ValueError):
        code_lengths([1, -1])
    with pytest.raises(ValueError):
        code_lengths([1.5, 2])
    with pytest.raises(ValueError):
        code_lengths([1, 2], max_len=0)


def test_canonical_codes_known_example():
    assert canonical_codes([2, 1, 3, 3]).tolist() == [0b10, 0b0, 0b110, 0b111]
    assert canonical_codes([3, 0, 2, 3, 2, 3]).tolist() == [0b100, 0, 0b00, 0b101, 0b01, 0b110]


@HYPO
@given(counts_lists)
def test_canonical_property(counts):
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    strings = code_strings(lengths)
    for l in set(int(v) for v in lengths if v > 0):
        group = [int(codes[s]) for s in range(len(lengths)) if lengths[s] == l]  # symbol order
        assert group == list(range(group[0], group[0] + len(group)))
    # prefix-free, and ordered by (length, symbol) as left-aligned binary fractions
    ordered = sorted(strings, key=lambda s: (int(lengths[s]), s))
    fractions = [int(strings[s], 2) / 2**len(strings[s]) for s in ordered]
    assert fractions == sorted(fractions)
    for a, b in itertools.permutations(strings.values(), 2):
        assert not b.startswith(a)


@HYPO
@given(st.lists(st.integers(0, 12), max_size=200), st.integers(0, 2**31))
def test_stream_matches_reference_bits(symbols, seed):
    counts = np.bincount(symbols, minlength=13) + np.random.default_rng(seed).integers(0, 3, 13)
    lengths = code_lengths(counts)
    data, n_bits = round_trip(np.array(symbols, np.int64), lengths)
    assert (data, n_bits) == reference_encode(symbols, lengths)


@pytest.mark.parametrize("case", ["empty", "one symbol repeated", "all distinct", "fibonacci",
                                  "skewed 5-bit", "uniform 8-bit", "wide alphabet", "long codes"])
def test_round_trip_adversarial(case):
    rng = np.random.default_rng(7)
    if case == "empty":
        lengths = code_lengths([3, 1])
        assert encode(np.zeros(0, np.int64), lengths) == (b"", 0)
        assert decode(b"", 0, lengths, 0).size == 0
        return
    if case == "one symbol repeated":
        symbols = np.full(5000, 9, np.uint8)
        lengths = code_lengths(np.bincount(symbols, minlength=32))
        data, n_bits = round_trip(symbols, lengths)
        assert n_bits == 5000 and data == b"\x00" * 625
        return
    if case == "all distinct":
        symbols = rng.permutation(256).astype(np.uint8)
        lengths = code_lengths(np.ones(256, np.int64))
    elif case == "fibonacci":
        symbols = rng.permutation(np.repeat(np.arange(25), FIB[:25]))  # ~196 k symbols
        lengths = code_lengths(np.bincount(symbols, minlength=25))
        assert int(lengths.max()) == 16 and int(code_lengths(FIB[:25], 32).max()) == 24
    elif case == "skewed 5-bit":
        p = np.exp(-np.abs(np.arange(32) - 15.5) / 2.5)
        symbols = rng.choice(32, 100_003, p=p / p.sum()).astype(np.uint8)
        lengths = code_lengths(np.bincount(symbols, minlength=32))
    elif case == "uniform 8-bit":
        symbols = rng.integers(0, 256, 10_000).astype(np.uint8)
        lengths = code_lengths(np.bincount(symbols, minlength=256))
    elif case == "wide alphabet":
        symbols = rng.integers(0, 3000, 20_000) ** 2 // 3000
        lengths = code_lengths(np.bincount(symbols, minlength=3000))
        assert decode(*encode(symbols, lengths), lengths, symbols.size).dtype == np.uint16
    else:  # codes up to 30 bits, above the table width, with max_len raised
        counts = np.array(FIB) * 3
        lengths = code_lengths(counts, max_len=32)
        symbols = np.repeat(np.arange(30), 2)[rng.permutation(60)]
        round_trip(symbols, lengths, max_len=32)
        return
    round_trip(symbols, lengths)


def long_code_stream(seed=3):
    """A stream with codes of 1 to 16 bits (the decoder's table covers 12) in random order."""
    counts = np.array(FIB[:22][::-1])
    symbols = np.random.default_rng(seed).permutation(np.repeat(np.arange(22), counts))
    lengths = code_lengths(counts)
    assert int(lengths.max()) == 16
    data, n_bits = encode(symbols, lengths)
    return symbols, lengths, data, n_bits


STREAM = long_code_stream()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 8 * len(STREAM[2]) - 1), min_size=1, max_size=8))
def test_flipped_bits_fail_cleanly(positions):
    symbols, lengths, data, n_bits = STREAM
    buf = bytearray(data)
    for k in positions:
        buf[k // 8] ^= 0x80 >> (k % 8)
    try:
        out = decode(bytes(buf), n_bits, lengths, symbols.size)
    except ValueError:
        return
    # an undetected flip must still give count symbols, each with a code
    assert out.size == symbols.size and np.all(lengths[out] > 0)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_truncated_streams_raise(data):
    symbols, lengths, stream, n_bits = STREAM
    cut = data.draw(st.integers(0, len(stream) - 1))
    with pytest.raises(ValueError, match="truncated"):
        decode(stream[:cut], n_bits, lengths, symbols.size)
    short_bits = data.draw(st.integers(0, n_bits - 1))
    with pytest.raises(ValueError):
        decode(stream[:(short_bits + 7) // 8], short_bits, lengths, symbols.size)


def test_wrong_counts_raise():
    symbols, lengths, data, n_bits = STREAM
    with pytest.raises(ValueError, match="truncated"):
        decode(data, n_bits, lengths, symbols.size + 1)
    with pytest.raises(ValueError, match="left over"):
        decode(data, n_bits, lengths, symbols.size - 1)
    with pytest.raises(ValueError, match="left over"):
        decode(data, n_bits, lengths, 0)
    with pytest.raises(ValueError):
        decode(data, n_bits, np.zeros(24, np.uint8), 5)
    with pytest.raises(ValueError):
        decode(data, -1, lengths, 5)


def test_invalid_codes_of_an_incomplete_code():
    lengths = [1, 2, 0]  # codes 0 and 10; 11 is no code
    data, n_bits = encode([0, 1, 0], lengths)
    assert decode(data, n_bits, lengths, 3).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="not a code"):
        decode(b"\xc0", 2, lengths, 1)
    with pytest.raises(ValueError, match="not a code"):
        decode(b"\xff" * 64, 512, [1], 512)  # lone symbol: its code is 0
    assert decode(b"\x00" * 64, 512, [1], 512).tolist() == [0] * 512


@pytest.mark.parametrize("lengths", [[1, 1, 1], [1, 2, 2, 2], [17, 1], [-1, 1], [0.5, 1],
                                     np.ones((2, 2), np.int64)])
def test_bad_lengths_are_refused(lengths):
    with pytest.raises(ValueError):
        check_lengths(lengths)
    with pytest.raises(ValueError):
        encode([0], lengths)
    with pytest.raises(ValueError):
        decode(b"\x00", 1, lengths, 1)


def test_bad_symbols_and_arguments():
    with pytest.raises(ValueError, match="no code"):
        encode([0, 2], [1, 1, 0])
    with pytest.raises(ValueError):
        encode([3], [1, 1, 0])
    with pytest.raises(ValueError):
        encode([-1], [1, 1])
    with pytest.raises(ValueError):
        check_lengths(np.ones(MAX_SYMBOLS + 1, np.int64))
    with pytest.raises(ValueError):
        decode(np.zeros(4, np.int16), 1, [1, 1], 1)
    assert check_lengths([17, 1], max_len=17).tolist() == [17, 1]
