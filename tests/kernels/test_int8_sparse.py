"""The int8 GEMM over non-zero weight words (npdc.kernels.int8_sparse) against exact integer sums
in NumPy, on both paths: every count of 16-position runs from one to past two passes, rows of
no entries, a layer of no entries, offsets that overlap as a conv's taps do; the sparse linear
layer gives linear_u8's bits."""

import numba
import numpy as np
import pytest

from npdc.kernels.int8 import gemm_tile, linear_u8
from npdc.kernels.int8_sparse import gemm_tile_sparse, linear_entries, linear_sparse_u8, sparse_entries, word_density
from npdc.kernels.vnni import cpu_has_vnni
from npdc.runtime.int8_params import fixed_multipliers

needs_vnni = pytest.mark.skipif(not cpu_has_vnni(), reason="the CPU has no AVX-512 VNNI")


def _reference(wb, offs, cols, pitch):
    """acc[o, p] = sum over k and l < 4 of wb[o, k, l] * cols[offs[k] + 4 p + l], in int64."""
    o4, k4, _ = wb.shape
    at = offs[:, None, None] + 4 * np.arange(pitch)[None, :, None] + np.arange(4)[None, None, :]
    x = cols[at].astype(np.int64)  # (k4, pitch, 4)
    return np.einsum("okl,kpl->op", wb.astype(np.int64), x)


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
def test_sparse_tile_gemm_gives_the_exact_sums(vnni):
    rng = np.random.default_rng(3)
    o4, k4 = 8, 13
    for n_vec in (1, 2, 5, 8, 9, 14, 17):
        pitch = 16 * n_vec
        wb = (rng.integers(-127, 128, (o4, k4, 4)) * (rng.random((o4, k4, 1)) < 0.3)).astype(np.int8)
        wb[2] = 0  # a row of no entries: its sums are 0
        wb[5, :, :] = np.where(rng.random((k4, 4)) < 0.5, -127, 127)  # the largest magnitudes, every word
        w = wb.reshape(o4, -1).view(np.int32).reshape(-1)
        offs = np.sort(rng.choice(np.arange(0, 4 * 40, 4), k4, replace=False)).astype(np.int64)
        cols = rng.integers(0, 256, int(offs.max()) + 4 * pitch + 64).astype(np.uint8)
        cols[::7] = 255
        acc = np.full(o4 * pitch, -1, np.int32)
        gemm_tile_sparse(*sparse_entries(w, k4, offs), cols, pitch, acc, vnni)
        assert np.array_equal(acc.reshape(o4, pitch), _reference(wb, offs, cols, pitch)), n_vec
        dense = np.full(o4 * pitch, -1, np.int32)
        gemm_tile(w, k4, cols, pitch, offs, dense, vnni)
        assert np.array_equal(acc, dense)


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
def test_sparse_tile_gemm_of_no_entries_writes_zeros(vnni):
    w = np.zeros(4 * 3, np.int32)
    rowptr, e_off, ew = sparse_entries(w, 3, np.arange(3, dtype=np.int64) * 64)
    assert rowptr.tolist() == [0] * 5 and e_off.size == ew.size == 0 and word_density(w) == 0.0
    acc = np.full(4 * 32, 9, np.int32)
    gemm_tile_sparse(rowptr, e_off, ew, np.zeros(64 * 4, np.uint8), 32, acc, vnni)
    assert not acc.any()


def test_entries_list_each_rows_non_zero_words_in_order():
    w = np.array([[0, 5, 0, -7], [0, 0, 0, 0], [1, 0, 0, 0]], np.int32).reshape(-1)
    rowptr, e_off, ew = sparse_entries(w, 4, np.array([0, 10, 20, 30]))
    assert rowptr.tolist() == [0, 2, 2, 3]
    assert e_off.tolist() == [10, 30, 0] and ew.tolist() == [5, -7, 1]
    assert e_off.dtype == np.int64 and ew.dtype == np.int32 and word_density(w) == 0.25


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=pytest.mark.skipif(not cpu_has_vnni(),
                                                                                    reason="no AVX-512 VNNI"))])
@pytest.mark.parametrize("n, logits", [(13, False), (20, True), (3, False)])
def test_the_sparse_linear_gives_the_bits_of_linear_u8(vnni, n, logits):
    """A third of the words non-zero and one output row all zeros; batches of 20 and fewer images
    than the entries were built for (13, 3: positions past them packed as zeros)."""
    rng = np.random.default_rng(9)
    f, o, batch = 48, 24, 20
    x = rng.integers(0, 256, (n, f)).astype(np.uint8)
    wb = (rng.integers(-127, 128, (o, f)) * (rng.random((o, f // 4, 1)) < 0.35).repeat(4, axis=2).reshape(o, f))
    wb[5] = 0
    w = wb.astype(np.int8).view(np.int32).reshape(-1)
    m0, shift = fixed_multipliers(np.linspace(0.001, 0.004, o))
    bias = np.arange(o, dtype=np.int64) * 41 - 500
    meta = np.array([3, 5, 5, 0, 0, 1, 0, 0, 0], np.int64)
    deq = np.linspace(0.001, 0.01, o) if logits else np.zeros(0)
    outs, threads = [], numba.config.NUMBA_NUM_THREADS
    for sparse in (False, True):
        y, y_float = np.zeros((n, o), np.uint8), np.zeros((n, o), np.float32)
        cols = np.full(1 << 14, 0xAB, np.uint8)
        if sparse:
            linear_sparse_u8(x, *linear_entries(w, f // 4, batch), batch, bias, m0, shift, meta, y, y_float, deq, cols,
                             threads, vnni)
        else:
            linear_u8(x, w, f // 4, bias, m0, shift, meta, y, y_float, deq, cols, np.zeros(o * 32, np.int32), vnni)
        outs.append(y_float if logits else y)
    assert len(np.unique(outs[0])) > 10
    assert np.array_equal(outs[0], outs[1])
