"""Tests for the shared finite-difference checker itself: every gradient test in the suite is
only as good as its verdicts (it must flag wrong gradients, pass right ones, skip kinks, and refuse
when kinks leave too little checked)."""

import numpy as np
import pytest

from npdc.engine.gradcheck import TooManyKinks, check_module, compare, numeric_grad
from npdc.engine.layers import BatchNorm2d


def test_numeric_grad_of_a_cubic_and_restores_the_array():
    """Central differences of sum(x^3) give 3x^2, and the array is left as it was."""
    x = np.array([0.5, -1.0, 2.0])
    before = x.copy()
    g = numeric_grad(lambda: float(np.sum(x ** 3)), x, 1e-6, np.arange(3))
    np.testing.assert_allclose(g, 3 * before ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, before)


def test_compare_passes_a_right_gradient_and_flags_a_wrong_one():
    """A correct gradient scores ~0; one off by 1 % scores ~5e-3."""
    x = np.random.default_rng(0).standard_normal(6)
    loss = lambda: float(np.sum(np.sin(x)))   # noqa: E731
    assert compare(loss, x, np.cos(x))[0] < 1e-8
    assert compare(loss, x, 1.01 * np.cos(x))[0] > 1e-3


def test_kinks_are_skipped_only_with_kinks_true():
    """max(x, 0) just beside its kink (x = 3e-7 < eps) has straddling differences; kinks=True
    skips that entry and reports it (1 of 10: at the default bound), kinks=False scores it as an
    error."""
    x = np.array([3e-7, 1.5, -2.0, 0.5, -0.7, 1.1, 2.2, -0.3, 0.9, -1.4])
    loss = lambda: float(np.sum(np.maximum(x, 0)))   # noqa: E731
    analytic = (x > 0).astype(np.float64)
    err, skipped = compare(loss, x, analytic, kinks=True)
    assert skipped == 1 and err < 1e-8
    err, skipped = compare(loss, x, analytic, kinks=False)
    assert skipped == 0 and err > 0.1


def test_more_kinks_than_the_bound_are_refused():
    """Two kinks in ten entries is more than the default 10 %: refused, not passed on the rest;
    a larger max_skipped lets the same check through."""
    x = np.array([3e-7, -2e-7, -2.0, 0.5, -0.7, 1.1, 2.2, -0.3, 0.9, -1.4])
    loss = lambda: float(np.sum(np.maximum(x, 0)))   # noqa: E731
    analytic = (x > 0).astype(np.float64)
    with pytest.raises(TooManyKinks, match="2 of 10"):
        compare(loss, x, analytic, kinks=True)
    err, skipped = compare(loss, x, analytic, kinks=True, max_skipped=0.2)
    assert skipped == 2 and err < 1e-8


def test_a_function_non_smooth_almost_everywhere_is_refused():
    """|sin(1e8 x)| has a kink every 3e-8, far inside eps = 1e-6: both central differences are
    noise and disagree at every entry. Skipping them all used to pass with error 0 whatever the
    gradient; the checker now refuses, through compare and through check_module."""
    x = np.random.default_rng(2).standard_normal(20)
    loss = lambda: float(np.sum(np.abs(np.sin(1e8 * x))))   # noqa: E731
    analytic = 1e8 * np.cos(1e8 * x) * np.sign(np.sin(1e8 * x))  # right wherever it exists
    with pytest.raises(TooManyKinks):
        compare(loss, x, analytic, kinks=True)
    with pytest.raises(TooManyKinks):
        compare(loss, x, np.zeros_like(x), kinks=True)

    def forward(a):
        forward.a = a
        return np.abs(np.sin(1e8 * a))

    def backward(dy):
        return dy * 1e8 * np.cos(1e8 * forward.a) * np.sign(np.sin(1e8 * forward.a))

    with pytest.raises(TooManyKinks):
        check_module(forward, backward, x.reshape(4, 5), {}, kinks=True)


def test_max_entries_samples_that_many():
    """With max_entries only that many entries are perturbed (two loss calls each)."""
    x = np.zeros(50)
    calls = []

    def loss():
        calls.append(1)
        return float(np.sum(x))

    compare(loss, x, np.ones(50), max_entries=7)
    assert len(calls) == 14


def test_check_module_reports_every_parameter():
    """check_module returns an error for x and for each named parameter."""
    r = np.random.default_rng(1)
    W, dW = r.standard_normal((3, 4)), np.zeros((3, 4))

    def forward(x):
        forward.x = x
        return x @ W.T

    def backward(dy):
        dW[...] += dy.T @ forward.x
        return dy @ W

    errors, skipped = check_module(forward, backward, r.standard_normal((2, 4)), {"W": (W, dW)})
    assert set(errors) == {"x", "W"} and skipped == 0
    assert max(errors.values()) < 1e-8


def test_a_gradient_that_is_exactly_zero_is_accepted():
    """A bias added right before a train-mode BatchNorm has zero gradient (the batch mean
    absorbs it). The analytic gradient is round-off (~1e-16) and so is the finite difference;
    a correct zero gradient must not score as an error."""
    bn = BatchNorm2d()
    bn.build((3,), None)
    bn.astype(np.float64)
    r = np.random.default_rng(0)
    x, b, w = r.standard_normal((5, 3)), r.standard_normal(3), r.standard_normal((5, 3))
    bn.forward(x + b, True)
    db = bn.backward(w).sum(axis=0)
    assert np.abs(db).max() < 1e-12
    err, _ = compare(lambda: float(np.sum(bn.forward(x + b, True) * w)), b, db)
    assert err < 1e-5
