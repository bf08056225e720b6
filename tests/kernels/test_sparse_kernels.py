"""Sparse kernels refuse columns and codebook indices that point outside their arrays; columns are
one-byte steps, with filler entries across gaps wider than a byte."""

import numpy as np
import pytest

from npdc.kernels.sparse import MAX_STEP, check_csr, csr_entries, csr_from_indices, linear_sparse
from npdc.kernels.sparse_passes import decode_floats
from npdc.kernels.sparse_s1 import band_floats, conv_sparse_s1


def _csr(indices, rows):
    n = csr_entries(indices, rows)
    rowptr, cols, vidx = np.zeros(rows + 1, np.int32), np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    assert csr_from_indices(indices, rows, rowptr, cols, vidx) == n
    return rowptr, cols, vidx


def test_csr_from_indices_keeps_rows_columns_and_values():
    indices = np.array([0, 2, 0, 1, 0, 0, 3, 0], np.uint8)
    rowptr, cols, vidx = _csr(indices, 2)
    assert rowptr.tolist() == [0, 2, 3] and cols.tolist() == [1, 2, 2] and vidx.tolist() == [2, 1, 3]
    with pytest.raises(ValueError, match="buffer"):
        csr_from_indices(indices, 2, rowptr, cols[:2], vidx[:2])


@pytest.mark.parametrize("field,value,match", [("cols", 4, "column"), ("vidx", 9, "codebook"),
                                               ("rowptr", 5, "row pointers")])
def test_linear_sparse_refuses_out_of_range_entries(field, value, match):
    parts = dict(zip(("rowptr", "cols", "vidx"), _csr(np.array([1, 0, 2, 0, 0, 3, 0, 1], np.uint8), 2)))
    table = np.array([0, 0.5, -1, 2], np.float32)
    x, y = np.ones((1, 4), np.float32), np.zeros((1, 2), np.float32)
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    linear_sparse(x, parts["rowptr"], parts["cols"], parts["vidx"], table, ones, zeros, False, zeros, y)
    np.testing.assert_allclose(y, [[-0.5, 2.5]])
    parts[field][-1] = value
    with pytest.raises(ValueError, match=match):
        linear_sparse(x, parts["rowptr"], parts["cols"], parts["vidx"], table, ones, zeros, False, zeros, y)


def test_conv_sparse_refuses_a_column_past_the_kernel():
    rowptr, cols, vidx = _csr(np.array([1] * 9, np.uint8), 1)
    cols[3] = 9  # one past C*kh*kw = 9
    xp = np.zeros((1, 1, 5, 5), np.float32)
    y = np.zeros((1, 1, 3, 3), np.float32)
    one = np.ones(1, np.float32)
    with pytest.raises(ValueError, match="column"):
        conv_sparse_s1(xp, 0, 1, xp, rowptr, cols, vidx, np.array([0, 1], np.float32), 3, 3, one, one * 0,
                       False, one * 0, np.zeros((1, 1, 1, 1), np.float32), 0, 0, 1, y,
                       np.zeros((2, 16), np.float32), np.zeros((2, 0), np.float32))


def test_check_csr_accepts_an_empty_layer():
    check_csr(np.zeros(3, np.int32), np.zeros(0, np.uint16), np.zeros(0, np.uint8), 2, 5, 1)


def test_gaps_wider_than_a_step_are_crossed_by_fillers_that_add_nothing():
    n_cols = 3 * MAX_STEP + 40
    rng = np.random.default_rng(0)
    indices = np.zeros((2, n_cols), np.uint8)
    indices[0, [0, MAX_STEP, MAX_STEP + 1, 3 * MAX_STEP + 7]] = [1, 2, 3, 1]  # gaps 255, 1, 766
    indices[1, [2 * MAX_STEP + 3, n_cols - 1]] = [3, 2]
    rowptr, cols, vidx = _csr(indices.reshape(-1), 2)
    assert rowptr.tolist() == [0, 6, 11]  # row 0: 4 non-zeros, its step of 516 two fillers; row 1: 2 and 3
    assert cols.max() <= MAX_STEP and np.count_nonzero(vidx == 0) == 5
    table = np.array([0, 0.5, -1, 2], np.float32)
    x = rng.standard_normal((3, n_cols)).astype(np.float32)
    y = np.zeros((3, 2), np.float32)
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    linear_sparse(x, rowptr, cols, vidx, table, ones, zeros, False, zeros, y)
    np.testing.assert_allclose(y, x @ table[indices].T, rtol=1e-6)
    cols[-1] = MAX_STEP  # the last step of row 1 now lands past its row
    with pytest.raises(ValueError, match="column"):
        check_csr(rowptr, cols, vidx, 2, n_cols, table.size)


def _sparse_conv_case(c, o, h, n, density, rng):
    """A random stride-1 3x3 sparse layer (pad 1) and its float64 reference output."""
    table = np.concatenate([[0], rng.standard_normal(15)]).astype(np.float32)
    indices = (rng.integers(1, 16, (o, c * 9)) * (rng.random((o, c * 9)) < density)).astype(np.uint8)
    rowptr, cols, vidx = _csr(indices.reshape(-1), o)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = table[indices].reshape(o, c, 3, 3).astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = sum(np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i:i + h, j:j + h])
              for i in range(3) for j in range(3))
    return x, (rowptr, cols, vidx, table), ref


def _run_sparse_s1(x, csr, o, threads, workspace_threads=None):
    """The layer on `threads` threads, its workspaces with a row for each of `workspace_threads`
    (default: as many): one image runs in as many bands of output rows (at least 4 rows each)."""
    import numba

    n, c, h = x.shape[0], x.shape[1], x.shape[2]
    rows = workspace_threads or threads
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        y = np.full((n, o, h, h), np.nan, np.float32)
        one, zero = np.ones(o, np.float32), np.zeros(o, np.float32)
        acc = np.zeros((rows, max((h - 1) * (h + 2) + h, 128)), np.float32)
        decode = np.zeros((rows, band_floats(c, h, 3, 3, 1, h + 2, rows)
                           + decode_floats(int(np.diff(csr[0]).max()))), np.float32)
        conv_sparse_s1(x, 1, 1, np.zeros((n, c, h + 2, h + 2), np.float32), *csr, 3, 3, one, zero,
                       False, zero, np.zeros((1, 1, 1, 1), np.float32), 0, 0, 1, y, acc, decode)
    finally:
        numba.set_num_threads(old)
    return y


# planes whose span (rows at the padded pitch) is under one 16-lane chunk, a few chunks (several
# images per task; one image: four or two rows per pass, a row count they do not divide), eight
# chunks and more (the last chunk overlapping its neighbour); the last case is a batch large
# enough to be split into runs of images (TASK_VALUES), each padded by its task. One image of a
# plane of five chunks or more runs in bands of output rows (13 rows: bands of 7 and 6)
@pytest.mark.parametrize("c,o,h,n,density", [(3, 5, 2, 3, 0.5), (8, 8, 4, 5, 0.4), (5, 7, 6, 2, 0.9),
                                             (9, 11, 4, 1, 0.5), (13, 7, 7, 1, 0.35),
                                             (4, 6, 11, 2, 0.3), (16, 3, 13, 1, 0.2),
                                             (16, 4, 30, 32, 0.3)])
def test_stride1_sparse_conv_sums_its_rows_in_registers_as_the_dense_reference(c, o, h, n, density):
    x, csr, ref = _sparse_conv_case(c, o, h, n, density, np.random.default_rng(h))
    y = _run_sparse_s1(x, csr, o, 2)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert np.array_equal(y, _run_sparse_s1(x, csr, o, 1))  # the same bits on one thread
    assert np.array_equal(y, _run_sparse_s1(x, csr, o, 1, 2))  # two bands on one thread
    # an image's outputs do not depend on which images share its task
    assert np.array_equal(y[-1:], _run_sparse_s1(x[-1:], csr, o, 2))


@pytest.mark.parametrize("field,match", [("cols", "column"), ("vidx", "codebook")])
@pytest.mark.parametrize("h,n,threads", [(30, 1, 2), (30, 1, 1), (30, 2, 2), (30, 32, 2), (4, 1, 2)])
def test_stride1_sparse_conv_refuses_a_bad_entry_in_any_row(field, match, h, n, threads):
    """On every split: bands of output rows, one band, rows, runs of images, row groups."""
    x, csr, _ = _sparse_conv_case(16, 4, h, n, 0.3, np.random.default_rng(1))
    rowptr, cols, vidx, table = csr
    e = rowptr[2] + 1  # an entry of row 2 of 4
    if field == "cols":
        cols[e] = 255  # steps past C * 9 = 144
    else:
        vidx[e] = table.size
    with pytest.raises(ValueError, match=match):
        _run_sparse_s1(x, csr, 4, threads)


@pytest.mark.parametrize("n,stride", [(1, 2), (120, 2), (1, 1)])  # bands, runs of images; stride 1
def test_a_1x1_sparse_conv_runs_on_its_subsampled_input_or_on_the_input_itself(n, stride):
    rng = np.random.default_rng(2)
    c, o, h = 24, 8, 27
    ho = (h - 1) // stride + 1
    table = np.concatenate([[0], rng.standard_normal(7)]).astype(np.float32)
    indices = (rng.integers(1, 8, (o, c)) * (rng.random((o, c)) < 0.6)).astype(np.uint8)
    rowptr, cols, vidx = _csr(indices.reshape(-1), o)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    ref = np.einsum("oc,nchw->nohw", table[indices].astype(np.float64), x[:, :, ::stride, ::stride])
    y = np.full((n, o, ho, ho), np.nan, np.float32)
    one, zero = np.ones(o, np.float32), np.zeros(o, np.float32)
    xp = x if stride == 1 else np.zeros((n, c, ho, ho), np.float32)
    conv_sparse_s1(x, 0, stride, xp, rowptr, cols, vidx, table, 1, 1, one, zero, False, zero,
                   np.zeros((1, 1, 1, 1), np.float32), 0, 0, 1, y, np.zeros((2, 512), np.float32),
                   np.zeros((2, 0), np.float32))  # one image: bands, their decode_ws allocated
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("h,w,pad", [(16, 16, 1), (17, 13, 1), (12, 9, 2)])
def test_a_strided_sparse_conv_of_one_image_runs_in_bands_of_its_phases(h, w, pad):
    """A 3x3 stride-2 layer: each tap reads one of the four phases of its band; odd sizes leave a
    phase a row or column short."""
    rng = np.random.default_rng(h + w)
    c, o, k, stride = 5, 6, 3, 2
    table = np.concatenate([[0], rng.standard_normal(15)]).astype(np.float32)
    indices = (rng.integers(1, 16, (o, c * 9)) * (rng.random((o, c * 9)) < 0.4)).astype(np.uint8)
    rowptr, cols, vidx = _csr(indices.reshape(-1), o)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    wk = table[indices].reshape(o, c, k, k).astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ref = sum(np.einsum("oc,nchw->nohw", wk[:, :, i, j],
                        xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride])
              for i in range(k) for j in range(k))
    one, zero = np.ones(o, np.float32), np.zeros(o, np.float32)
    for threads in (1, 2):
        y = np.full((1, o, ho, wo), np.nan, np.float32)
        conv_sparse_s1(x, pad, stride, x, rowptr, cols, vidx, table, k, k, one, zero, False, zero,
                       np.zeros((1, 1, 1, 1), np.float32), 0, 0, 1, y, np.zeros((threads, 256), np.float32),
                       np.zeros((threads, 0), np.float32))
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        if threads == 1:
            first = y.copy()
    assert np.array_equal(first, y)  # one band or two, the same bits
    with pytest.raises(ValueError, match="bands"):  # a batch of two does not run in bands
        conv_sparse_s1(np.concatenate([x, x]), pad, stride, x, rowptr, cols, vidx, table, k, k, one,
                       zero, False, zero, np.zeros((1, 1, 1, 1), np.float32), 0, 0, 1,
                       np.zeros((2, o, ho, wo), np.float32), np.zeros((2, 256), np.float32),
                       np.zeros((2, 0), np.float32))
