"""conv2d_backward's `dW_out` (a layer's gradient that reads as zero): every primitive's dW lands
in it with the bits it returns without, on both of kn2row's and winograd4's paths."""

import numpy as np
import pytest

from npdc.kernels import conv_winograd4
from npdc.kernels.conv import PRIMITIVES, conv2d_backward


@pytest.mark.parametrize("name, c, o, k, stride, pad, side", [
    ("gemm", 6, 5, 3, 1, 1, 5), ("gemm", 6, 5, 1, 1, 0, 4), ("kn2row", 6, 5, 1, 1, 0, 4),
    ("kn2row", 4, 3, 3, 2, 1, 7), ("winograd4", 6, 5, 3, 1, 1, 9), ("winograd4", 3, 17, 3, 1, 0, 6),
    ("im2col", 4, 6, 3, 2, 1, 7), ("polyphase", 4, 6, 3, 2, 1, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dw_written_into_the_given_array_with_the_same_bits(name, c, o, k, stride, pad, side, dtype):
    r = np.random.default_rng(c * o + k)
    x = r.standard_normal((3, c, side, side)).astype(dtype)
    W = r.standard_normal((o, c, k, k)).astype(dtype)
    ho = (side + 2 * pad - k) // stride + 1
    dy = r.standard_normal((3, o, ho, ho)).astype(dtype)
    dx, dW = conv2d_backward(x, W, dy, stride, pad, primitive=name)
    out = np.full(W.shape, np.nan, dtype)
    dx2, dW2 = conv2d_backward(x, W, dy, stride, pad, primitive=name, dW_out=out)
    assert np.shares_memory(dW2, out) and out.tobytes() == dW.tobytes()
    np.testing.assert_array_equal(dx2, dx)
    assert PRIMITIVES[name].writes_dW == (name in ("gemm", "kn2row", "winograd4"))


def test_winograd4_wide_layer_on_a_small_map_takes_im2col_into_the_array(monkeypatch):
    """Past GRAD_MAX_PAIRS channel pairs on a map below WIDE_PIXELS the weight gradient is
    im2col's, copied into the given array."""
    monkeypatch.setattr(conv_winograd4, "GRAD_MAX_PAIRS", 16 * 16)
    r = np.random.default_rng(3)
    x, dy = r.standard_normal((2, 16, 5, 5)).astype(np.float32), r.standard_normal((2, 16, 5, 5)).astype(np.float32)
    want = conv_winograd4.weight_gradient(x, dy, 1)
    out = np.full((16, 16, 3, 3), np.nan, np.float32)
    assert conv_winograd4.weight_gradient(x, dy, 1, out) is out
    assert out.tobytes() == want.tobytes()
