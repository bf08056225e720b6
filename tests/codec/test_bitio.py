"""Tests for npdc.codec.bitio: fixed-width fields against a bit-string reference, MSB first."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.codec.bitio import field_dtype, pack_fixed, packed_size, unpack_fixed

HYPO = settings(max_examples=30, deadline=None)


def reference_pack(values, width):
    """Each value as a `width`-character binary string, joined, zero-padded to whole bytes."""
    bits = "".join(format(int(v), f"0{width}b") for v in values)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


@st.composite
def fields(draw, width=None):
    width = draw(st.integers(1, 32)) if width is None else width
    values = draw(st.lists(st.integers(0, (1 << width) - 1), max_size=60))
    return width, values


def test_known_bytes():
    assert pack_fixed([5, 1, 7], 3) == bytes([0b10100111, 0b10000000])
    assert pack_fixed([1], 1) == b"\x80"  # first field in the most significant bit
    assert pack_fixed([0xABC], 12) == b"\xab\xc0"


@pytest.mark.parametrize("width", range(1, 33))
def test_round_trip_every_width(width):
    rng = np.random.default_rng(width)
    top = (1 << width) - 1
    values = np.concatenate([[0, top, top, 0, 1], rng.integers(0, top, 200, endpoint=True)])
    data = pack_fixed(values, width)
    assert data == reference_pack(values, width)
    assert len(data) == packed_size(values.size, width) == (values.size * width + 7) // 8
    back = unpack_fixed(data, width, values.size)
    assert back.dtype == field_dtype(width)
    np.testing.assert_array_equal(back.astype(np.int64), values)


@HYPO
@given(fields())
def test_round_trip_hypothesis(case):
    width, values = case
    data = pack_fixed(np.array(values, np.uint64), width)
    assert data == reference_pack(values, width)
    assert unpack_fixed(data, width, len(values)).tolist() == values


@HYPO
@given(fields(), st.data())
def test_truncated_input_is_refused(case, data):
    width, values = case
    packed = pack_fixed(values, width)
    if not packed:
        return
    cut = data.draw(st.integers(0, len(packed) - 1))
    with pytest.raises(ValueError, match="truncated"):
        unpack_fixed(packed[:cut], width, len(values))


def test_trailing_bytes_are_ignored():
    data = pack_fixed([3, 2, 1], 5) + b"\xff\xff"
    assert unpack_fixed(data, 5, 3).tolist() == [3, 2, 1]
    assert unpack_fixed(data, 5, 0).tolist() == []


def test_empty():
    assert pack_fixed([], 7) == b""
    assert unpack_fixed(b"", 7, 0).size == 0


@pytest.mark.parametrize("values, width", [([8], 3), ([-1], 4), ([1 << 32], 32), ([1.0], 4)])
def test_values_that_do_not_fit(values, width):
    with pytest.raises(ValueError):
        pack_fixed(values, width)


@pytest.mark.parametrize("width", [0, 33, -1, 2.5])
def test_bad_widths(width):
    with pytest.raises(ValueError):
        pack_fixed([0], width)
    with pytest.raises(ValueError):
        unpack_fixed(b"\x00", width, 1)


def test_bad_arguments():
    with pytest.raises(ValueError):
        unpack_fixed(b"\x00", 4, -1)
    with pytest.raises(ValueError):
        unpack_fixed(np.zeros(2, np.int32), 4, 1)
