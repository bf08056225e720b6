"""Relative indexing of a pruned, quantized layer (Han, Mao & Dally 2016, "Deep Compression",
section 2 and its figure of sparse storage with a filler zero).

Input: the layer's flattened value indices, one per position: 0 = pruned weight, 1..k = codebook
entry. Output: two equally long arrays of entries (gap, value), read in order:

    each entry skips `gap` zero positions, then occupies the next position with `value`.

So an entry stands for gap + 1 positions. A normal entry has value >= 1. When the zeros before a
non-zero number 2**b or more (b = gap_bits), filler entries (gap = 2**b - 1, value = 0) are
emitted first; a filler occupies a position, as the paper's filler zero is a stored zero weight,
so one filler covers 2**b zero positions. A run of z zeros before a non-zero therefore takes
z >> b fillers and ends with the entry (z & (2**b - 1), value). Zeros after the last non-zero are
not stored: the decoder gets the layer length and fills them in. Leading zeros count from
position 0 as if a stored entry sat at position -1.

Departures from the paper: the paper's figure counts the difference of positions (gap + 1); here
the stored number is the zeros skipped, so 2**b different gaps fit b bits. The decoder accepts any
entry with value 0 as a stored zero, filler or not.

A wider b needs fewer fillers but more bits per gap; npdc.codec.payload.choose_gap_bits picks
the b whose Huffman-coded layer is smallest.
"""

import numpy as np

MAX_GAP_BITS = 16


def _check_gap_bits(gap_bits):
    if int(gap_bits) != gap_bits or not 1 <= int(gap_bits) <= MAX_GAP_BITS:
        raise ValueError(f"gap_bits must be an integer in 1..{MAX_GAP_BITS}, got {gap_bits}")
    return int(gap_bits)


def _as_indices(indices):
    indices = np.asarray(indices)
    if indices.ndim != 1:
        raise ValueError("indices must be a 1-D array (flatten the layer first)")
    if indices.size and indices.dtype.kind not in "iu":
        raise ValueError("indices must be integers")
    if indices.size and indices.min() < 0:
        raise ValueError("indices must be non-negative (0 = pruned)")
    return indices


def zero_runs(indices):
    """Number of zeros before each non-zero, counted from the previous non-zero (int64)."""
    nz = np.flatnonzero(_as_indices(indices))
    return np.diff(nz, prepend=-1) - 1


def _value_dtype(top):
    return np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.uint32


def encode_relative(indices, gap_bits):
    """(gaps, values) for a layer's value indices, fillers included (see the module docstring).

    gaps are uint8 (uint16 when gap_bits > 8); values use the smallest unsigned dtype holding
    max(indices)."""
    gap_bits = _check_gap_bits(gap_bits)
    indices = _as_indices(indices)
    nz = np.flatnonzero(indices)
    runs = np.diff(nz, prepend=-1) - 1
    fillers = runs >> gap_bits
    n_entries = nz.size + int(fillers.sum())
    gaps = np.full(n_entries, (1 << gap_bits) - 1, np.uint8 if gap_bits <= 8 else np.uint16)
    values = np.zeros(n_entries, _value_dtype(int(indices.max()) if indices.size else 0))
    slot = np.arange(nz.size) + np.cumsum(fillers)  # each non-zero comes after its fillers
    gaps[slot] = runs & ((1 << gap_bits) - 1)
    values[slot] = indices[nz]
    return gaps, values


def decode_relative(gaps, values, length, gap_bits):
    """The value indices (`length` positions, dtype of values) that (gaps, values) stand for.

    Raises ValueError if the arrays differ in length, a gap needs more than gap_bits bits, or the
    entries run past `length`."""
    gap_bits = _check_gap_bits(gap_bits)
    gaps, values = np.asarray(gaps), np.asarray(values)
    length = int(length)
    if gaps.ndim != 1 or values.ndim != 1 or gaps.shape != values.shape:
        raise ValueError("gaps and values must be 1-D arrays of equal length")
    if length < 0:
        raise ValueError("length must be non-negative")
    if gaps.size == 0:
        return np.zeros(length, values.dtype if values.dtype.kind in "iu" else np.uint8)
    if gaps.dtype.kind not in "iu" or values.dtype.kind not in "iu":
        raise ValueError("gaps and values must be integers")
    if gaps.min() < 0 or gaps.max() >= 1 << gap_bits:
        raise ValueError(f"gaps must be in 0..{(1 << gap_bits) - 1} for {gap_bits} gap bits")
    if values.min() < 0:
        raise ValueError("values must be non-negative")
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if positions[-1] >= length:
        raise ValueError(f"relative index entries reach position {positions[-1]}, "
                         f"past the layer length {length}")
    out = np.zeros(length, values.dtype)
    out[positions] = values
    return out
