"""Tests for npdc.codec.relindex against a position-by-position reference of the filler scheme."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.codec.relindex import decode_relative, encode_relative, zero_runs

HYPO = settings(max_examples=60, deadline=None)


def reference_encode(indices, b):
    """Walk the positions; a filler covers 2**b zero positions (2**b - 1 skipped + itself)."""
    entries, run = [], 0
    for v in indices:
        if v == 0:
            run += 1
            continue
        while run >= 2**b:
            entries.append((2**b - 1, 0))
            run -= 2**b
        entries.append((run, int(v)))
        run = 0
    return [g for g, _ in entries], [v for _, v in entries]


def reference_decode(gaps, values, length):
    out, pos = [0] * length, 0
    for g, v in zip(gaps, values):
        pos += g
        out[pos] = v
        pos += 1
    return out


@st.composite
def layers(draw):
    n = draw(st.integers(0, 300))
    density = draw(st.sampled_from([0.0, 0.01, 0.05, 0.3, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 32, n) * (rng.random(n) < density)
    return x, draw(st.integers(1, 8))


def check(x, b):
    x = np.asarray(x, np.int64)
    gaps, values = encode_relative(x, b)
    ref_g, ref_v = reference_encode(x.tolist(), b)
    assert gaps.tolist() == ref_g and values.tolist() == ref_v
    assert gaps.size == 0 or int(gaps.max()) < 2**b
    back = decode_relative(gaps, values, x.size, b)
    assert back.tolist() == x.tolist() == reference_decode(ref_g, ref_v, x.size)
    return gaps.tolist(), values.tolist()


@HYPO
@given(layers())
def test_round_trip(case):
    check(*case)


@pytest.mark.parametrize("b", [1, 3, 4, 5, 8])
def test_gap_at_and_beyond_the_limit(b):
    m = 2**b
    assert check([0] * (m - 1) + [7], b) == ([m - 1], [7])  # fits exactly: no filler
    assert check([0] * m + [7], b) == ([m - 1, 0], [0, 7])  # one filler, then gap 0
    assert check([0] * (m + 1) + [7], b) == ([m - 1, 1], [0, 7])
    assert check([0] * (2 * m - 1) + [7], b) == ([m - 1, m - 1], [0, 7])
    assert check([0] * (5 * m) + [7], b) == ([m - 1] * 5 + [0], [0] * 5 + [7])  # fillers in a row
    assert check([4] + [0] * (3 * m + 1) + [9], b) == ([0] + [m - 1] * 3 + [1], [4, 0, 0, 0, 9])


def test_leading_and_trailing_zeros():
    assert check([0, 0, 0, 5, 0, 0], 3) == ([3], [5])
    assert check([0, 0, 0, 5, 0, 0] + [0] * 40, 2) == ([3], [5])  # trailing zeros cost nothing


def test_all_zero_all_nonzero_and_empty():
    assert check([0] * 100, 4) == ([], [])
    assert check([], 4) == ([], [])
    x = np.arange(1, 50)
    assert check(x, 1) == ([0] * 49, list(range(1, 50)))


def test_wide_gaps_and_values():
    x = np.zeros(200_000, np.int64)
    x[[0, 70_000, 199_999]] = [300, 70_000, 1]
    g, v = encode_relative(x, 16)
    assert g.dtype == np.uint16 and v.dtype == np.uint32
    assert decode_relative(g, v, x.size, 16).tolist() == x.tolist()


def test_decode_refuses_overrun_and_bad_entries():
    g, v = encode_relative([0, 0, 3, 0, 1], 2)
    assert decode_relative(g, v, 5, 2).tolist() == [0, 0, 3, 0, 1]
    with pytest.raises(ValueError, match="past the layer length"):
        decode_relative(g, v, 4, 2)
    with pytest.raises(ValueError):
        decode_relative([4], [1], 10, 2)  # a gap that does not fit 2 bits
    with pytest.raises(ValueError):
        decode_relative([1, 0], [1], 10, 2)
    with pytest.raises(ValueError):
        decode_relative([0], [1], 10, 0)
    with pytest.raises(ValueError):
        decode_relative([0], [1], -1, 2)
    with pytest.raises(ValueError):
        decode_relative([3], [0], 3, 2)  # a trailing filler that reaches past the end


def test_bad_inputs():
    with pytest.raises(ValueError):
        encode_relative(np.zeros((2, 2), np.int64), 4)
    with pytest.raises(ValueError):
        encode_relative([0, -1], 4)
    with pytest.raises(ValueError):
        encode_relative([0.5], 4)
    with pytest.raises(ValueError):
        encode_relative([1], 17)


def test_zero_runs_count_the_zeros_before_each_non_zero():
    sparse = np.zeros(1000, np.int64)
    sparse[::100] = 1
    assert zero_runs(sparse).tolist() == [0] + [99] * 9
