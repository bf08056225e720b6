"""The matrix product on Numba's threads against NumPy's: every layout the callers pass, row
counts below, at and above the thread count, mixed types promoted, and no thread-count effect."""

import numba
import numpy as np
import pytest

from npdc.kernels.matmul import matmul, transposed
from npdc.threads import set_threads


@pytest.mark.parametrize("m", [1, 2, 3, 17])
@pytest.mark.parametrize("b_order", ["C", "F", "strided"])
def test_matches_numpy(m, b_order):
    r = np.random.default_rng(m)
    a = r.standard_normal((m, 9))
    b = r.standard_normal((9, 5))
    b = {"C": b, "F": np.asfortranarray(b), "strided": r.standard_normal((9, 10))[:, ::2]}[b_order]
    got = matmul(a, b)
    assert got.shape == (m, 5) and got.dtype == np.float64
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(matmul(a.T.copy().T, b), a @ b, rtol=1e-12, atol=1e-12)


def test_promotes_mixed_types_and_keeps_float32():
    r = np.random.default_rng(0)
    a32, b32 = r.standard_normal((4, 6)).astype(np.float32), r.standard_normal((6, 3)).astype(np.float32)
    assert matmul(a32, b32).dtype == np.float32
    mixed = matmul(a32, b32.astype(np.float64))
    assert mixed.dtype == np.float64
    np.testing.assert_allclose(mixed, a32.astype(np.float64) @ b32, rtol=1e-12)


@pytest.mark.parametrize("m", [1, 8, 16, 60])
def test_same_bits_on_one_or_two_threads(m):
    """The row blocks are fixed, so the thread count changes no sum (a Dask worker with one
    thread must compute the client's bits)."""
    r = np.random.default_rng(1)
    a = r.standard_normal((m, 300)).astype(np.float32)
    b = r.standard_normal((1000, 300)).astype(np.float32).T
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            set_threads(threads)
            runs.append(matmul(a, b))
    finally:
        set_threads(before)
    np.testing.assert_array_equal(*runs)


@pytest.mark.parametrize("shape", [(1, 1), (1, 130), (130, 1), (64, 64), (65, 200), (300, 77)])
def test_transposed_copies_every_tile_edge(shape):
    a = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    got = transposed(a)
    assert got.flags.c_contiguous and got.shape == shape[::-1]
    np.testing.assert_array_equal(got, a.T)
    np.testing.assert_array_equal(transposed(a[:, ::-1]), a[:, ::-1].T)  # a strided source too


def test_a_transposed_left_factor_gives_the_contiguous_ones_bits():
    """A data gradient's W^T is tiled into a copy before the product: the same bits as a product
    with the contiguous matrix."""
    r = np.random.default_rng(3)
    w = r.standard_normal((70, 130)).astype(np.float32)
    b = r.standard_normal((70, 33)).astype(np.float32)
    np.testing.assert_array_equal(matmul(w.T, b), matmul(np.ascontiguousarray(w.T), b))


def test_writes_into_a_given_array_of_its_type_or_another():
    """`out` receives the product: straight from BLAS in the product's type, copied in another."""
    r = np.random.default_rng(2)
    a, b = r.standard_normal((5, 7)).astype(np.float32), r.standard_normal((7, 3)).astype(np.float32)
    want = matmul(a, b)
    for out in (np.full((5, 3), np.nan, np.float32), np.full((5, 3), np.nan)):
        assert matmul(a, b.T.copy().T, out) is out
        np.testing.assert_array_equal(out, want)
