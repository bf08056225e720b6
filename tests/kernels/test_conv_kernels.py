"""Tests for npdc.kernels.conv: forward, backward-data and backward-weights of a grouped, strided,
padded 2-D convolution against a naive float64 loop (tests.conftest), plus shape validation."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npdc.engine.gradcheck import check_module, compare
from npdc.kernels.conv import conv2d_backward, conv2d_forward
from tests.conftest import naive_conv2d, naive_conv2d_backward, out_len, rel_err

TOL = 1e-4  # float32 kernels against the float64 reference, relative to the largest entry
HYPO = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def conv_cases(draw):
    """A legal convolution: (x_shape, W_shape, stride, pad, groups), including depthwise, 1x1,
    rectangular kernels and padding as large as the kernel."""
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "pointwise"]))
    if kind == "depthwise":
        groups, cg = draw(st.integers(2, 6)), 1
    elif kind == "grouped":
        groups, cg = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    else:
        groups, cg = 1, draw(st.integers(1, 4))
    og = draw(st.integers(1, 3))
    if kind == "pointwise":
        kh = kw = 1
        stride, pad = 1, 0
    else:
        kh, kw = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3, 5]))
        stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * pad), 9))
    w = draw(st.integers(max(1, kw - 2 * pad), 9))
    n = draw(st.integers(1, 3))
    return (n, groups * cg, h, w), (groups * og, cg, kh, kw), stride, pad, groups


def _arrays(case, seed):
    x_shape, W_shape, stride, pad, groups = case
    r = np.random.default_rng(seed)
    x = r.standard_normal(x_shape).astype(np.float32)
    W = r.standard_normal(W_shape).astype(np.float32)
    ho = out_len(x_shape[2], W_shape[2], stride, pad)
    wo = out_len(x_shape[3], W_shape[3], stride, pad)
    dy = r.standard_normal((x_shape[0], W_shape[0], ho, wo)).astype(np.float32)
    return x, W, dy


@HYPO
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_forward_matches_naive_loop(case, seed):
    """The forward kernel computes the textbook grouped convolution, shape and values."""
    _, _, stride, pad, groups = case
    x, W, dy = _arrays(case, seed)
    y = conv2d_forward(x, W, stride, pad, groups)
    assert y.shape == dy.shape
    assert y.dtype == np.float32
    assert rel_err(y, naive_conv2d(x, W, stride, pad, groups)) < TOL


@HYPO
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_backward_matches_transposed_conv(case, seed):
    """dx is the transposed convolution of dy and dW the correlation of dy with x."""
    _, _, stride, pad, groups = case
    x, W, dy = _arrays(case, seed)
    dx, dW = conv2d_backward(x, W, dy, stride, pad, groups, need_dx=True)
    dx_ref, dW_ref = naive_conv2d_backward(x, W, dy, stride, pad, groups)
    assert dx.shape == x.shape and dW.shape == W.shape
    assert rel_err(dx, dx_ref) < TOL
    assert rel_err(dW, dW_ref) < TOL


@HYPO
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_backward_without_dx_gives_same_dW(case, seed):
    """need_dx=False skips the data gradient but must not change the weight gradient."""
    _, _, stride, pad, groups = case
    x, W, dy = _arrays(case, seed)
    none, dW = conv2d_backward(x, W, dy, stride, pad, groups, need_dx=False)
    assert none is None
    _, dW_ref = naive_conv2d_backward(x, W, dy, stride, pad, groups)
    assert rel_err(dW, dW_ref) < TOL


def test_naive_reference_backward_agrees_with_finite_differences():
    """The reference used above is itself right: its (dx, dW) pass the shared gradcheck."""
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 4, 5, 4))
    W = r.standard_normal((6, 2, 3, 2))
    dy_shape = naive_conv2d(x, W, 2, 1, 2).shape
    dy = r.standard_normal(dy_shape)
    dx, dW = naive_conv2d_backward(x, W, dy, 2, 1, 2)
    # The loss <conv(x, W), dy> has gradient dx in x and dW in W.
    err_x, _ = compare(lambda: float(np.sum(naive_conv2d(x, W, 2, 1, 2) * dy)), x, dx)
    err_W, _ = compare(lambda: float(np.sum(naive_conv2d(x, W, 2, 1, 2) * dy)), W, dW)
    assert err_x < 1e-6 and err_W < 1e-6


@pytest.mark.parametrize("x_shape, W_shape, stride, pad, groups", [
    ((2, 4, 5, 5), (6, 2, 3, 3), 1, 1, 2),     # grouped, same padding
    ((2, 3, 7, 6), (3, 1, 3, 3), 2, 1, 3),     # depthwise, strided
    ((3, 5, 4, 4), (2, 5, 1, 1), 1, 0, 1),     # pointwise (GEMM path)
    ((1, 2, 6, 6), (4, 2, 1, 1), 2, 0, 1),     # strided 1x1 (projection shortcut)
    ((2, 2, 3, 3), (2, 2, 3, 3), 1, 3, 1),     # padding larger than the kernel overhang
])
def test_kernels_pass_gradcheck_in_float64(x_shape, W_shape, stride, pad, groups):
    """Forward and backward kernels are a consistent pair in float64 (finite differences)."""
    r = np.random.default_rng(7)
    x = r.standard_normal(x_shape)
    W = r.standard_normal(W_shape)
    dW = np.zeros_like(W)
    seen = {}

    def forward(a):
        seen["x"] = a
        return conv2d_forward(a, W, stride, pad, groups)

    def backward(dy):
        dx, g = conv2d_backward(seen["x"], W, dy, stride, pad, groups)
        dW[...] += g
        return dx

    errors, _ = check_module(forward, backward, x, {"W": (W, dW)})
    assert max(errors.values()) < 1e-5, errors


def test_float64_in_float64_out():
    """Gradient checks rely on the kernels keeping float64 precision."""
    r = np.random.default_rng(0)
    x, W = r.standard_normal((1, 2, 5, 5)), r.standard_normal((3, 2, 3, 3))
    y = conv2d_forward(x, W, 1, 1, 1)
    assert y.dtype == np.float64
    assert np.abs(y - naive_conv2d(x, W, 1, 1, 1)).max() < 1e-12


def test_non_contiguous_input_gives_same_result():
    """A strided view (e.g. a channel slice) is convolved like its contiguous copy."""
    r = np.random.default_rng(1)
    big = r.standard_normal((2, 6, 7, 7)).astype(np.float32)
    view = big[:, ::2, :, ::-1]
    W = r.standard_normal((4, 3, 3, 3)).astype(np.float32)
    assert not view.flags.c_contiguous
    y = conv2d_forward(view, W, 1, 1, 1)
    np.testing.assert_array_equal(y, conv2d_forward(np.ascontiguousarray(view), W, 1, 1, 1))
    assert rel_err(y, naive_conv2d(view, W, 1, 1, 1)) < TOL
    dy = r.standard_normal(y.shape).astype(np.float32)
    dx, dW = conv2d_backward(view, W, dy, 1, 1, 1)
    dx_ref, dW_ref = naive_conv2d_backward(view, W, dy, 1, 1, 1)
    assert rel_err(dx, dx_ref) < TOL and rel_err(dW, dW_ref) < TOL


def test_backward_is_deterministic():
    """Two identical backward calls give bit-identical gradients (seeded training relies on it)."""
    r = np.random.default_rng(2)
    x = r.standard_normal((5, 4, 6, 6)).astype(np.float32)
    W = r.standard_normal((4, 4, 3, 3)).astype(np.float32)
    dy = r.standard_normal((5, 4, 6, 6)).astype(np.float32)
    a = conv2d_backward(x, W, dy, 1, 1, 1)
    b = conv2d_backward(x, W, dy, 1, 1, 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# -- illegal shapes ------------------------------------------------------------------------------
def _is_legal(x_shape, W_shape, stride, pad, groups):
    n, c, h, w = x_shape
    o, cg, kh, kw = W_shape
    if groups < 1 or c % groups or o % groups or cg != c // groups:
        return False
    if stride < 1 or pad < 0:
        return False
    return out_len(h, kh, stride, pad) >= 1 and out_len(w, kw, stride, pad) >= 1


@HYPO
@given(n=st.integers(1, 2), c=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6),
       o=st.integers(1, 6), cg=st.integers(1, 6), k=st.integers(1, 5), stride=st.integers(-1, 3),
       pad=st.integers(-1, 3), groups=st.integers(0, 4))
def test_forward_raises_value_error_exactly_for_illegal_shapes(n, c, h, w, o, cg, k, stride, pad,
                                                               groups):
    """Channel counts that groups does not divide, a weight with the wrong C/groups, stride < 1,
    pad < 0 or a kernel larger than the padded input raise ValueError; legal ones run."""
    x = np.zeros((n, c, h, w), np.float32)
    W = np.zeros((o, cg, k, k), np.float32)
    if _is_legal(x.shape, W.shape, stride, pad, groups):
        y = conv2d_forward(x, W, stride, pad, groups)
        assert y.shape == (n, o, out_len(h, k, stride, pad), out_len(w, k, stride, pad))
    else:
        with pytest.raises(ValueError):
            conv2d_forward(x, W, stride, pad, groups)


@pytest.mark.parametrize("x_shape, W_shape, stride, pad, groups", [
    ((1, 4, 5, 5), (6, 3, 3, 3), 1, 1, 2),    # W has C/groups wrong
    ((1, 4, 5, 5), (5, 2, 3, 3), 1, 1, 2),    # O not divisible by groups
    ((1, 3, 5, 5), (6, 1, 3, 3), 1, 1, 2),    # C not divisible by groups
    ((1, 2, 2, 2), (2, 2, 5, 5), 1, 0, 1),    # kernel larger than the input
    ((1, 2, 5, 5), (2, 2, 3, 3), 0, 1, 1),    # zero stride
    ((1, 2, 5, 5), (2, 2, 3, 3), 1, -1, 1),   # negative padding
    ((2, 5, 5), (2, 2, 3, 3), 1, 1, 1),       # x is not 4-D
])
def test_forward_illegal_examples(x_shape, W_shape, stride, pad, groups):
    """Hand-picked illegal convolutions raise ValueError before any kernel runs."""
    with pytest.raises(ValueError):
        conv2d_forward(np.zeros(x_shape, np.float32), np.zeros(W_shape, np.float32),
                       stride, pad, groups)


def test_backward_rejects_illegal_shapes_with_value_error():
    """conv2d_backward must refuse a weight that does not fit x and a dy whose shape is not the
    forward output's, with ValueError, instead of letting the compiled (unchecked) loops read
    or write out of bounds. Run in a child process so a memory fault fails only this test."""
    code = textwrap.dedent("""
        import numpy as np
        from npdc.kernels.conv import conv2d_backward
        x = np.ones((2, 4, 5, 5), np.float32)
        W = np.ones((6, 2, 3, 3), np.float32)
        W_bad = np.ones((6, 3, 3, 3), np.float32)
        cases = {
            "W does not fit x": (x, W_bad, np.ones((2, 6, 5, 5), np.float32)),
            "dy too small": (x, W, np.ones((2, 6, 3, 3), np.float32)),
            "dy too large": (x, W, np.ones((2, 6, 9, 9), np.float32)),
            "dy wrong channels": (x, W, np.ones((2, 4, 5, 5), np.float32)),
            "dy wrong batch": (x, W, np.ones((3, 6, 5, 5), np.float32)),
        }
        for name, (a, b, d) in cases.items():
            try:
                conv2d_backward(a, b, d, 1, 1, 2)
                print(name, "-> no error", flush=True)
            except ValueError:
                print(name, "-> ValueError", flush=True)
            except Exception as e:
                print(name, "->", type(e).__name__, flush=True)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0, f"child crashed (code {run.returncode}) after: {lines}"
    assert len(lines) == 5 and all(line.endswith("-> ValueError") for line in lines), lines
