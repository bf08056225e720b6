"""Tests for softmax cross-entropy: value against the direct formula, gradient against finite
differences, numerical stability for large logits."""

import numpy as np
import pytest

from npdc.engine.gradcheck import compare
from npdc.engine.losses import cross_entropy, log_softmax


def _direct(logits, labels):
    """mean over n of -log(exp(z[n, y_n]) / sum_k exp(z[n, k])), without any shift."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(z)), labels])))


def test_value_matches_direct_formula():
    """The loss equals the textbook softmax cross-entropy for moderate logits."""
    r = np.random.default_rng(0)
    z = r.standard_normal((6, 4)) * 3
    y = r.integers(0, 4, 6)
    loss, d = cross_entropy(z, y)
    assert loss == pytest.approx(_direct(z, y), rel=1e-12)
    assert d.shape == z.shape


def test_known_values():
    """Uniform logits cost log K; a confident right answer costs ~0."""
    assert cross_entropy(np.zeros((3, 5)), np.array([0, 2, 4]))[0] == pytest.approx(np.log(5))
    assert cross_entropy(np.array([[50.0, 0.0]]), np.array([0]))[0] == pytest.approx(0, abs=1e-12)


def test_gradient_is_softmax_minus_onehot_over_n():
    """dlogits = (softmax - onehot) / N, and finite differences agree."""
    r = np.random.default_rng(1)
    z = r.standard_normal((5, 3))
    y = r.integers(0, 3, 5)
    _, d = cross_entropy(z, y)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(d, (p - onehot) / 5, rtol=1e-12, atol=1e-15)
    err, _ = compare(lambda: cross_entropy(z, y)[0], z, d)
    assert err < 1e-5
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-15)


def test_large_logits_are_stable():
    """Logits of +-1000 give a finite loss and gradient (the max shift works)."""
    z = np.array([[1000.0, -1000.0, 0.0], [-800.0, 900.0, 899.0]])
    y = np.array([1, 2])
    loss, d = cross_entropy(z, y)
    assert np.isfinite(loss) and np.isfinite(d).all()
    # row 0: the label is 2000 below the max; row 1: the label is 1 below the max, and the
    # normaliser is log(1 + e^-1) (the third logit underflows harmlessly)
    assert loss == pytest.approx((2000.0 + 1.0 + np.log1p(np.exp(-1.0))) / 2, rel=1e-12)
    np.testing.assert_allclose(d[0], [0.5, -0.5, 0.0], atol=1e-12)


def test_float32_logits_and_input_not_modified():
    """float32 logits stay float32 in the gradient and the caller's array is untouched."""
    z = np.array([[1.0, 2.0, 3.0]], np.float32)
    before = z.copy()
    loss, d = cross_entropy(z, np.array([2]))
    assert d.dtype == np.float32
    np.testing.assert_array_equal(z, before)
    assert loss == pytest.approx(_direct(z, np.array([2])), rel=1e-6)


def test_log_softmax_rows_normalise():
    """exp(log_softmax) sums to 1 on every row and is shift-invariant."""
    z = np.random.default_rng(2).standard_normal((4, 6)) * 10
    ls = log_softmax(z)
    np.testing.assert_allclose(np.exp(ls).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(log_softmax(z + 500.0), ls, atol=1e-10)
