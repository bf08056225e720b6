"""Every registered convolution primitive against the float64 reference (tests.conftest): forward,
backward-data and backward-weights on random legal shapes, refusals with a reason, float64 finite
differences and determinism."""

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npdc.engine.gradcheck import check_module
from npdc.kernels import conv_flat, conv_im2col, conv_polyphase, conv_stem, conv_winograd4, simd
from npdc.kernels.conv_winograd import matrices
from npdc.kernels.conv import (PRIMITIVES, conv2d_backward, conv2d_forward, default_primitive,
                               force_primitive, choose_primitive, legal_primitives)
from npdc.threads import set_threads
from tests.conftest import naive_conv2d, naive_conv2d_backward, out_len, rel_err
from tests.kernels.test_conv_kernels import conv_cases

TOL = 1e-4
FEW = settings(max_examples=12, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def winograd_cases(draw):
    """3x3 stride-1 dense convolutions with odd sizes and any padding, the Winograd domain."""
    c, o, n = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    pad = draw(st.integers(0, 3))
    h, w = draw(st.integers(max(1, 3 - 2 * pad), 11)), draw(st.integers(max(1, 3 - 2 * pad), 11))
    return (n, c, h, w), (o, c, 3, 3), 1, pad, 1


@st.composite
def stride2_cases(draw):
    """3x3 stride-2 dense convolutions, odd and even sizes, padding 0 or 1 (polyphase's domain)."""
    c, o, n = draw(st.integers(1, 5)), draw(st.integers(1, 12)), draw(st.integers(1, 3))
    pad = draw(st.integers(0, 1))
    h, w = draw(st.integers(3 - 2 * pad, 12)), draw(st.integers(3 - 2 * pad, 12))
    return (n, c, h, w), (o, c, 3, 3), 2, pad, 1


@st.composite
def depthwise_cases(draw):
    """Depthwise convolutions (groups = channels = outputs) of any kernel, stride and padding,
    MobileNet's 3x3 among them, with rectangular kernels the layer never builds."""
    c, n = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h, w = draw(st.integers(max(1, kh - 2 * pad), 13)), draw(st.integers(max(1, kw - 2 * pad), 13))
    return (n, c, h, w), (c, 1, kh, kw), stride, pad, c


def _arrays(case, seed):
    x_shape, W_shape, stride, pad, _ = case
    r = np.random.default_rng(seed)
    x = r.standard_normal(x_shape).astype(np.float32)
    W = r.standard_normal(W_shape).astype(np.float32)
    dy_shape = (x_shape[0], W_shape[0], out_len(x_shape[2], W_shape[2], stride, pad),
                out_len(x_shape[3], W_shape[3], stride, pad))
    return x, W, r.standard_normal(dy_shape).astype(np.float32)


def _err(a, ref, *factors):
    """rel_err, except that an output that is (nearly) all zero, e.g. a window over padding only,
    is judged against the size of one product of its factors: an FFT's rounding scales with its
    inputs, not with a result that happens to cancel."""
    scale = np.prod([np.abs(f).max(initial=0.0) for f in factors])
    return rel_err(a, ref) * max(np.abs(ref).max(initial=0.0), 1e-12) / max(np.abs(ref).max(initial=0.0), scale, 1e-12)


def _check_all_three(name, case, seed):
    x_shape, W_shape, stride, pad, groups = case
    if PRIMITIVES[name].refuse(x_shape, W_shape, stride, pad, groups):
        with pytest.raises(ValueError, match=name):
            conv2d_forward(*_arrays(case, seed)[:2], stride, pad, groups, primitive=name)
        return
    x, W, dy = _arrays(case, seed)
    y = conv2d_forward(x, W, stride, pad, groups, primitive=name)
    assert y.dtype == np.float32 and y.shape == dy.shape
    assert _err(y, naive_conv2d(x, W, stride, pad, groups), x, W) < TOL
    dx, dW = conv2d_backward(x, W, dy, stride, pad, groups, primitive=name)
    dx_ref, dW_ref = naive_conv2d_backward(x, W, dy, stride, pad, groups)
    assert dx.shape == x.shape and dW.shape == W.shape
    assert _err(dx, dx_ref, dy, W) < TOL and _err(dW, dW_ref, dy, x) < TOL
    none, dW2 = conv2d_backward(x, W, dy, stride, pad, groups, need_dx=False, primitive=name)
    assert none is None and _err(dW2, dW_ref, dy, x) < TOL


@pytest.mark.parametrize("name", list(PRIMITIVES))
@FEW
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_primitive_matches_reference_or_refuses(name, case, seed):
    """Strided, padded, grouped, depthwise and 1x1 cases: right values or a ValueError naming it."""
    _check_all_three(name, case, seed)


@pytest.mark.parametrize("name", ["winograd2", "winograd4", "flat", "kn2row", "fft", "gemm"])
@FEW
@given(case=winograd_cases(), seed=st.integers(0, 2**16))
def test_primitive_on_3x3_stride1(name, case, seed):
    """The shapes Winograd exists for, with odd sizes so the last tile hangs over the edge."""
    _check_all_three(name, case, seed)


@pytest.mark.parametrize("name", ["polyphase", "im2col", "kn2row", "gemm"])
@FEW
@given(case=stride2_cases(), seed=st.integers(0, 2**16))
def test_primitive_on_3x3_stride2(name, case, seed):
    """The downsampling layers of a ResNet: every phase of an odd or even input, with and
    without padding, and output channels past one register block."""
    _check_all_three(name, case, seed)


@pytest.mark.parametrize("name", ["depthwise", "direct", "im2col"])
@FEW
@given(case=depthwise_cases(), seed=st.integers(0, 2**16))
def test_primitive_on_depthwise(name, case, seed):
    """MobileNet's layers: one filter per channel, every stride and padding, the edges' partial
    windows and outputs narrower than the kernel."""
    _check_all_three(name, case, seed)


def test_im2col_forward_is_the_same_bits_on_one_or_two_threads():
    """im2col's chunks are fixed whatever the thread count, so its forward rounds the same (its
    weight gradient sums per thread and may not)."""
    r = np.random.default_rng(4)
    x = r.standard_normal((9, 6, 7, 7)).astype(np.float32)
    W = r.standard_normal((5, 6, 3, 3)).astype(np.float32)
    runs, before = [], numba.get_num_threads()
    try:
        for threads in (1, 2):
            set_threads(threads)
            runs.append(conv2d_forward(x, W, 1, 1, primitive="im2col"))
    finally:
        set_threads(before)
    np.testing.assert_array_equal(*runs)


def test_depthwise_at_mobilenet_shapes_matches_im2col():
    """The 3x3 stride-1 and stride-2 layers at sizes where rows are long enough to vectorise:
    the same numbers as im2col per group, forward and both gradients."""
    r = np.random.default_rng(9)
    for stride in (1, 2):
        x = r.standard_normal((2, 24, 30, 29)).astype(np.float32)
        W = r.standard_normal((24, 1, 3, 3)).astype(np.float32)
        y = conv2d_forward(x, W, stride, 1, 24, primitive="depthwise")
        dy = r.standard_normal(y.shape).astype(np.float32)
        ref = (conv2d_forward(x, W, stride, 1, 24, primitive="im2col"),) + \
            conv2d_backward(x, W, dy, stride, 1, 24, primitive="im2col")
        got = (y,) + conv2d_backward(x, W, dy, stride, 1, 24, primitive="depthwise")
        for a, b in zip(got, ref):
            assert a.dtype == np.float32 and rel_err(a, b) < TOL


def test_polyphase_with_several_images_per_stack_and_tiles_per_stack(monkeypatch):
    """Two images' phase planes to a stack with the last stack half full (3 images), stacks
    longer than one accumulator tile, and 13 output channels (a block of 8 and one of 5)."""
    monkeypatch.setattr(conv_polyphase, "PLANE_FLOATS", 4 * 9 * 2 * 21 * 20)
    monkeypatch.setattr(conv_polyphase, "GRAD_PLANE_FLOATS", 4 * 9 * 2 * 21 * 20)
    g, wq, period, size, n_t = conv_polyphase._layout(3, 9, 20, 19, 1, conv_polyphase.PLANE_FLOATS)
    assert (g, wq, period) == (2, 20, 21) and n_t > conv_polyphase.TILE
    for pad in (0, 1):
        _check_all_three("polyphase", ((3, 9, 40 - pad, 38 + pad), (13, 9, 3, 3), 2, pad, 1), seed=pad)


@pytest.mark.parametrize("case", [
    ((3, 1, 12, 20), (5, 1, 3, 3), 1, 1, 1),  # one channel; chunks at 0 and 4 overlap
    ((2, 3, 11, 30), (13, 3, 3, 3), 1, 0, 1),  # 9x28 output, 13 = 8 + 5 output channels
    ((2, 3, 16, 32), (4, 3, 3, 3), 1, 1, 1),  # whole chunks only
    ((2, 2, 5, 40), (9, 2, 3, 3), 1, 1, 1),  # three chunks, the last repeated to make a pair
    ((2, 7, 9, 20), (3, 7, 3, 3), 1, 2, 1),  # the most channels that still take the row path
    ((2, 3, 9, 15), (4, 3, 3, 3), 1, 0, 1),  # an output narrower than a chunk: the plane path
    ((2, 9, 10, 11), (10, 9, 3, 3), 1, 1, 1),  # the plane path, with an output wider than a vector
])
def test_flat_forward_on_both_paths(case):
    """flat sums few-channel layers row by row in registers and the rest over stacked planes;
    both must agree with the reference, forward and both gradients."""
    assert conv_flat.row_chunks(28).tolist() == [0, 12] and conv_flat.row_chunks(38).tolist() == [0, 16, 22, 22]
    _check_all_three("flat", case, seed=3)


@pytest.mark.parametrize("case", [
    ((2, 3, 23, 38), (13, 3, 7, 7), 2, 3, 1),  # the ResNet stem's kernel: 12x19 out, 13 = 8 + 5 outputs
    ((1, 3, 12, 70), (9, 3, 7, 7), 2, 3, 1),  # 35 columns: chunks 0, 16 and an overlapping 19
    ((2, 1, 10, 9), (5, 1, 5, 5), 3, 2, 1),  # an output narrower than a chunk, stride 3
    ((2, 8, 6, 40), (6, 8, 2, 3), 1, 0, 1),  # a rectangular kernel, the most channels accepted
    ((1, 2, 5, 33), (4, 2, 3, 3), 1, 1, 1),  # stride 1; O = 4 is one group of the weight gradient
])
def test_stem_against_the_reference_and_on_one_or_two_threads(case):
    """The direct few-channel kernel: phase planes of every stride, chunks that overlap or are cut,
    output channels past one register block and taps past a multiple of four; the same bits
    whatever the thread count."""
    _check_all_three("stem", case, seed=5)
    x, W, dy = _arrays(case, 5)
    runs, before = [], numba.get_num_threads()
    try:
        for threads in (1, 2):
            set_threads(threads)
            runs.append((conv2d_forward(x, W, *case[2:], primitive="stem"),)
                        + conv2d_backward(x, W, dy, *case[2:], primitive="stem"))
    finally:
        set_threads(before)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, case", [
    ("stem", ((2, 3, 9, 18), (5, 3, 7, 7), 2, 3, 1)),
    ("polyphase", ((2, 3, 7, 6), (9, 3, 3, 3), 2, 1, 1)),
    ("winograd2", ((2, 6, 9, 7), (5, 6, 3, 3), 1, 1, 1)),
    ("winograd4", ((2, 3, 11, 10), (4, 3, 3, 3), 1, 0, 1)),
    ("flat", ((3, 2, 5, 4), (9, 2, 3, 3), 1, 2, 1)),
    ("flat", ((1, 2, 4, 18), (9, 2, 3, 3), 1, 1, 1)),  # the row path: chunks at 0 and 2
    ("kn2row", ((2, 3, 7, 7), (4, 3, 3, 3), 2, 1, 1)),
    ("kn2row", ((2, 5, 4, 4), (3, 5, 1, 1), 1, 0, 1)),
    ("fft", ((1, 4, 8, 8), (4, 2, 5, 5), 2, 2, 2)),
    ("direct", ((2, 4, 6, 6), (4, 1, 3, 3), 2, 1, 4)),
    ("im2col", ((2, 4, 5, 5), (6, 2, 3, 3), 1, 1, 2)),
    ("gemm", ((2, 4, 5, 6), (3, 4, 3, 3), 2, 1, 1)),
    ("gemm", ((3, 4, 5, 6), (5, 4, 1, 1), 1, 0, 1)),  # no lowering: the input's axes swapped
    ("depthwise", ((2, 4, 6, 7), (4, 1, 3, 3), 1, 1, 4)),
    ("depthwise", ((2, 3, 7, 6), (3, 1, 3, 2), 2, 1, 3)),
    ("depthwise", ((1, 2, 9, 9), (2, 1, 5, 5), 2, 2, 2)),
])
def test_primitive_passes_gradcheck_in_float64(name, case):
    """Each primitive's backward is the exact adjoint of its forward (finite differences)."""
    x_shape, W_shape, stride, pad, groups = case
    r = np.random.default_rng(7)
    x, W = r.standard_normal(x_shape), r.standard_normal(W_shape)
    dW = np.zeros_like(W)
    seen = {}

    def forward(a):
        seen["x"] = a
        y = conv2d_forward(a, W, stride, pad, groups, primitive=name)
        assert y.dtype == np.float64
        return y

    def backward(dy):
        dx, g = conv2d_backward(seen["x"], W, dy, stride, pad, groups, primitive=name)
        dW[...] += g
        return dx

    errors, _ = check_module(forward, backward, x, {"W": (W, dW)})
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_flat_with_many_blocks_and_a_partly_filled_stack(pad, monkeypatch):
    """Output channels past one register block (13 = 8 + 5), images stacked two to a plane with
    the last plane half full (a plane budget of two padded 20x20 images, 3 images), and planes
    longer than one accumulator tile."""
    floats = 9 * 2 * (20 + pad) * (19 + pad)
    monkeypatch.setattr(conv_flat, "PLANE_FLOATS", floats)
    monkeypatch.setattr(conv_flat, "GRAD_PLANE_FLOATS", floats)
    assert conv_flat._layout(3, 9, 20, 19, pad, 1, floats)[0] == 2
    assert conv_flat._layout(3, 9, 20, 19, pad, 1, floats)[4] > conv_flat.TILE
    _check_all_three("flat", ((3, 9, 20, 19), (13, 9, 3, 3), 1, pad, 1), seed=pad)


@pytest.mark.parametrize("budget, tasks, span", [(864 * 16, 5, 15), (864 * 75, 2, 75)])
def test_winograd4_with_several_chunks_per_image_or_several_images_per_task(budget, tasks, span, monkeypatch):
    """A chunk budget smaller than one image's 5x5 tiles (chunks of three tile rows, then two)
    and one that packs three images into a task and two into the other; 19x18 outputs leave
    the last tile row one row short and the last tile column two columns short."""
    monkeypatch.setattr(conv_winograd4, "BUDGET", budget)
    assert conv_winograd4._layout(5, 8, 16, 5, 5, 2) == (tasks, span)  # 36 * (8 + 16) floats a tile
    for pad in (0, 1, 2):
        _check_all_three("winograd4", ((5, 6, 21 - 2 * pad, 20 - 2 * pad), (7, 6, 3, 3), 1, pad, 1), seed=pad)


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_winograd4_with_transposed_blocks_and_their_leftovers(pad):
    """11 input channels (a block of eight and three), 13 output channels (eight and five) and
    rows of 21 - 2*pad inputs and 19 outputs (blocks of eight columns and the rest): the plane
    fill and the output rows move 8 x 8 blocks through transpose8 and the leftovers one by one."""
    _check_all_three("winograd4", ((2, 11, 21 - 2 * pad, 21 - 2 * pad), (13, 11, 3, 3), 1, pad, 1), seed=pad)


@pytest.mark.parametrize("out_channels", [40, 64])
def test_winograd4_with_pairs_of_output_blocks_and_an_odd_one(out_channels):
    """40 output channels pad to three blocks of sixteen (a pair through the 32-channel register
    block, the last alone, its lanes past 40 zero), 64 to two pairs; 20 input channels pad to
    24. The data gradient runs the same products with 20 output channels (two blocks)."""
    _check_all_three("winograd4", ((2, 20, 9, 10), (out_channels, 20, 3, 3), 1, 1, 1), seed=out_channels)


@pytest.mark.parametrize("flipped", [False, True])
def test_winograd4_kernel_transform_is_g_g_gt_packed_sixteen_to_a_block(flipped):
    """U[a*6 + b, o // 16, c, o % 16] = (G W[o, c] G^T)[a, b], zero past O (37 pads to 48) and
    past C (the caller's zeros kept); flipped, the same for the kernels W[c, o] turned by 180
    degrees (the data gradient's), from W of shape (5, 37, 3, 3)."""
    W = np.random.default_rng(3).standard_normal((37, 5, 3, 3))
    G = matrices(4, np.float64)[1]
    U = np.zeros((36, 3, 8, 16))
    given = np.ascontiguousarray(W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]) if flipped else W
    conv_winograd4._kernels(given, G, flipped, U)
    want = np.zeros((6, 6, 48, 8))
    want[:, :, :37, :5] = np.einsum("ai,ocij,bj->aboc", G, W, G)
    np.testing.assert_allclose(U, want.reshape(36, 3, 16, 8).transpose(0, 1, 3, 2), rtol=1e-12, atol=1e-12)


def test_winograd4_flipped_transform_equals_the_transform_of_the_flipped_copy():
    """The data gradient's kernels transformed straight from W are bit for bit those of NumPy's
    flipped, transposed copy (the same values through the same arithmetic), 20 by 40 channels
    in float32."""
    W = np.random.default_rng(4).standard_normal((20, 40, 3, 3)).astype(np.float32)
    copy = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    assert np.array_equal(conv_winograd4.transformed_kernels(W, flipped=True),
                          conv_winograd4.transformed_kernels(copy))


@pytest.mark.parametrize("budget, tasks", [(36 * 40 * 5, 1), (36 * 40 * 5, 3), (36 * 40 * 60, 2)])
def test_winograd4_weight_gradient_in_chunks_groups_and_tasks(budget, tasks, monkeypatch):
    """The Winograd weight gradient sums over tiles in chunks, images in groups and the batch in
    tasks: a chunk of one tile row (of 5 per image), then groups of one and of several images per
    fill, with one, two or three tasks, and 9 input / 21 output channels padded to 16 and 24
    (36 * 40 floats a tile)."""
    monkeypatch.setattr(conv_winograd4, "GRAD_BUDGET", budget)
    monkeypatch.setattr(conv_winograd4, "GRAD_TASKS", tasks)
    r = np.random.default_rng(tasks)
    for pad in (0, 1, 2):
        x = r.standard_normal((7, 9, 21 - 2 * pad, 19 - 2 * pad))
        dy = r.standard_normal((7, 21, 19, 17))
        _, ref = naive_conv2d_backward(x, np.zeros((21, 9, 3, 3)), dy, 1, pad, 1)
        got = conv_winograd4.weight_gradient(x, dy, pad)
        assert got.dtype == np.float64 and rel_err(got, ref) < 1e-12
        got32 = conv_winograd4.weight_gradient(x.astype(np.float32), dy.astype(np.float32), pad)
        assert got32.dtype == np.float32 and rel_err(got32, ref) < TOL


def test_winograd4_weight_gradient_of_many_channel_pairs_is_im2cols(monkeypatch):
    """From GRAD_MAX_PAIRS (o, c) pairs on the chunk sums cost more than they save: im2col's
    result (a GEMM), except on maps of WIDE_PIXELS or more."""
    r = np.random.default_rng(5)
    x = r.standard_normal((3, 9, 10, 10)).astype(np.float32)
    dy = r.standard_normal((3, 12, 10, 10)).astype(np.float32)
    gemm = conv_im2col.weight_gradient(x, dy, (12, 9, 3, 3), 1, 1, 1)
    monkeypatch.setattr(conv_winograd4, "GRAD_MAX_PAIRS", 16 * 16)  # 9 and 12 channels pad to 16
    np.testing.assert_array_equal(conv_winograd4.weight_gradient(x, dy, 1), gemm)
    monkeypatch.setattr(conv_winograd4, "GRAD_MAX_PAIRS", 16 * 16 + 1)
    winograd = conv_winograd4.weight_gradient(x, dy, 1)
    assert not np.array_equal(winograd, gemm) and rel_err(winograd, gemm) < TOL
    monkeypatch.setattr(conv_winograd4, "GRAD_MAX_PAIRS", 16 * 16)
    monkeypatch.setattr(conv_winograd4, "WIDE_PIXELS", 100)  # a 10x10 output: Winograd's again
    wide = conv_winograd4.weight_gradient(x, dy, 1)
    assert not np.array_equal(wide, gemm) and rel_err(wide, gemm) < TOL


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_winograd4_weight_gradient_at_resnet50s_256_channel_layers(pad):
    """ResNet-50's 256-channel 3x3 layers with a 14x14 output (batch 2 here) keep Winograd's
    weight gradient, in chunks of a whole task's tiles: not im2col's bits, but its values."""
    r = np.random.default_rng(pad)
    x = r.standard_normal((2, 256, 16 - 2 * pad, 16 - 2 * pad)).astype(np.float32)
    dy = r.standard_normal((2, 256, 14, 14)).astype(np.float32)
    want = conv_im2col.weight_gradient(x, dy, (256, 256, 3, 3), 1, pad, 1)
    got = conv_winograd4.weight_gradient(x, dy, pad)
    assert got.dtype == np.float32 and not np.array_equal(got, want) and rel_err(got, want) < TOL


def test_winograd4_wide_map_weight_gradient_passes_gradcheck_in_float64(monkeypatch):
    """The wide-map rule's chunks (thresholds lowered to a small layer: 5 and 7 channels pad to
    16 and 8, an 8x8 output, one chunk per task) give the exact adjoint (finite differences)."""
    monkeypatch.setattr(conv_winograd4, "GRAD_MAX_PAIRS", 16 * 8)
    monkeypatch.setattr(conv_winograd4, "WIDE_PIXELS", 64)
    r = np.random.default_rng(11)
    x, W = r.standard_normal((3, 5, 8, 8)), r.standard_normal((7, 5, 3, 3))
    dW = np.zeros_like(W)
    seen = {}

    def forward(a):
        seen["x"] = a
        return conv2d_forward(a, W, 1, 1, 1, primitive="winograd4")

    def backward(dy):
        dx, g = conv2d_backward(seen["x"], W, dy, 1, 1, 1, primitive="winograd4")
        dW[...] += g
        return dx

    errors, _ = check_module(forward, backward, x, {"W": (W, dW)})
    assert max(errors.values()) < 1e-5, errors
    dy = r.standard_normal((3, 7, 8, 8))  # and the path is Winograd's, not im2col's
    assert not np.array_equal(conv_winograd4.weight_gradient(x, dy, 1),
                              conv_im2col.weight_gradient(x, dy, (7, 5, 3, 3), 1, 1, 1))


def test_winograd4_turns_the_slp_vectoriser_on_only_while_it_compiles():
    """Numba reads its SLP switch at every compilation; the GEMM's must not leak into the rest."""
    before = numba.config.SLP_VECTORIZE
    with pytest.raises(RuntimeError):
        with simd.straight_line_vectorised():
            assert numba.config.SLP_VECTORIZE == 1
            raise RuntimeError("a failed compilation")
    assert numba.config.SLP_VECTORIZE == before


@pytest.mark.parametrize("c, side", [(64, 8), (128, 4), (32, 16), (16, 32)])
def test_winograd4_splits_a_batch_into_whole_rounds_of_tasks(c, side):
    """Batch 128 at cifar-resnet20's layer shapes: every thread gets the same number of tasks
    (the chunk budget alone gave 7 tasks at c64 and 4 uneven ones at c128), and a task's chunk
    still fits the budget."""
    tiles = -(-side // 4)
    for threads in (1, 2):
        n_tasks, span = conv_winograd4._layout(128, c, c, tiles, tiles, threads)
        assert n_tasks % threads == 0
        assert span <= max(4 * conv_winograd4.ROWS, conv_winograd4.BUDGET // (36 * 2 * c))


@pytest.mark.parametrize("name, stride", [("flat", 1), ("winograd4", 1), ("polyphase", 2), ("depthwise", 2),
                                          ("gemm", 1), ("gemm", 2)])
def test_same_bits_with_one_or_two_threads(name, stride):
    """flat's and polyphase's plane counts and Winograd's task split follow the thread count, but
    no sum is grouped by it, so training rounds the same whatever --threads says."""
    r = np.random.default_rng(3)
    x = r.standard_normal((37, 9, 9, 9)).astype(np.float32)
    groups = 9 if name == "depthwise" else 1
    o = 9 if name == "depthwise" else 11
    W = r.standard_normal((o, 9 // groups, 3, 3)).astype(np.float32)
    side = out_len(9, 3, stride, 1)
    dy = r.standard_normal((37, o, side, side)).astype(np.float32)
    runs, before = [], numba.get_num_threads()
    try:
        for threads in (1, 2):
            set_threads(threads)
            runs.append((conv2d_forward(x, W, stride, 1, groups, primitive=name),)
                        + conv2d_backward(x, W, dy, stride, 1, groups, primitive=name))
    finally:
        set_threads(before)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, case, reason", [
    ("winograd2", ((1, 2, 6, 6), (2, 2, 3, 3), 2, 1, 1), "stride"),
    ("winograd4", ((1, 2, 6, 6), (2, 2, 5, 5), 1, 2, 1), "3x3"),
    ("winograd2", ((1, 4, 6, 6), (4, 2, 3, 3), 1, 1, 2), "groups"),
    ("kn2row", ((1, 4, 6, 6), (4, 2, 3, 3), 1, 1, 2), "groups"),
    ("fft", ((1, 4, 6, 6), (4, 4, 1, 1), 1, 0, 1), "1x1"),
    ("flat", ((1, 2, 6, 6), (2, 2, 3, 3), 1, 3, 1), "padding"),
    ("winograd4", ((1, 2, 6, 6), (2, 2, 3, 3), 1, 3, 1), "padding"),
    ("polyphase", ((1, 2, 6, 6), (2, 2, 3, 3), 1, 1, 1), "stride"),
    ("polyphase", ((1, 2, 6, 6), (2, 2, 3, 3), 2, 2, 1), "padding"),
    ("flat", ((1, 2, 6, 6), (2, 2, 5, 5), 1, 2, 1), "3x3"),
    ("depthwise", ((1, 4, 6, 6), (4, 2, 3, 3), 1, 1, 2), "depthwise"),
    ("gemm", ((1, 4, 6, 6), (4, 2, 3, 3), 1, 1, 2), "groups"),
    ("gemm", ((8, 64, 128, 128), (8, 64, 3, 3), 1, 1, 1), "columns"),
    ("depthwise", ((1, 4, 6, 6), (8, 1, 3, 3), 1, 1, 4), "depthwise"),
    ("stem", ((1, 9, 6, 6), (4, 9, 7, 7), 2, 3, 1), "input channels"),
    ("stem", ((1, 4, 6, 6), (4, 2, 3, 3), 1, 1, 2), "groups"),
])
def test_refusals_are_clear(name, case, reason):
    """A primitive asked for a shape it does not handle says which rule it breaks."""
    x_shape, W_shape, stride, pad, groups = case
    x, W = np.zeros(x_shape, np.float32), np.zeros(W_shape, np.float32)
    with pytest.raises(ValueError, match=reason):
        conv2d_forward(x, W, stride, pad, groups, primitive=name)
    assert name not in legal_primitives(x_shape, W_shape, stride, pad, groups)


def test_unknown_primitive_is_refused():
    with pytest.raises(ValueError, match="unknown primitive"):
        conv2d_forward(np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 3, 3), np.float32),
                       primitive="magic")


def test_default_is_legal_and_forcing_respects_refusals():
    """The default heuristic always picks a primitive that accepts the shape; a forced primitive
    applies only where it is legal, the plan elsewhere."""
    cases = [((8, 64, 8, 8), (64, 64, 3, 3), 1, 1, 1), ((8, 16, 8, 8), (32, 16, 3, 3), 2, 1, 1),
             ((8, 16, 8, 8), (16, 16, 1, 1), 1, 0, 1), ((8, 4, 8, 8), (4, 1, 3, 3), 1, 1, 4)]
    for case in cases:
        assert default_primitive(*case) in legal_primitives(*case)
    assert default_primitive(*cases[3]) == "depthwise"
    assert default_primitive((8, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1) == "gemm"  # ResNet-50's last stage
    last = ((8, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1)
    assert default_primitive(*last, inference=True) == choose_primitive(None, *last, inference=True) == "winograd4"
    for case in (((8, 512, 4, 4), (512, 512, 3, 3), 1, 1, 1),  # fmnist-resnet18's last stage
                 ((8, 256, 7, 7), (256, 256, 3, 3), 1, 1, 1),  # its third
                 ((8, 512, 14, 14), (512, 512, 3, 3), 2, 1, 1)):  # ResNet-50's stride-2 one
        assert default_primitive(*case, inference=True) == default_primitive(*case) == "gemm"
    assert default_primitive((8, 64, 8, 8), (64, 64, 1, 1), 1, 0, 1) == "kn2row"  # cifar-resnet's is not
    assert default_primitive((8, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1) == "stem"  # ImageNet ResNets' first
    assert default_primitive((8, 3, 32, 32), (16, 3, 3, 3), 1, 1, 1) == "flat"  # cifar-resnet's first
    try:
        force_primitive("winograd4")
        assert choose_primitive("im2col", *cases[0]) == "winograd4"
        assert choose_primitive("im2col", *cases[1]) == "im2col"
    finally:
        force_primitive(None)
    assert choose_primitive("fft", *cases[0]) == "fft"
    with pytest.raises(ValueError):
        force_primitive("magic")


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_primitive_is_deterministic(name):
    """Same inputs, same thread count: bit-identical outputs and gradients."""
    r = np.random.default_rng(2)
    stride = 2 if name == "polyphase" else 1
    side = out_len(7, 3, stride, 1)
    groups, o = (4, 4) if name == "depthwise" else (1, 6)
    x = r.standard_normal((5, 4, 7, 7)).astype(np.float32)
    W = r.standard_normal((o, 4 // groups, 3, 3)).astype(np.float32)
    dy = r.standard_normal((5, o, side, side)).astype(np.float32)
    runs = [(conv2d_forward(x, W, stride, 1, groups, primitive=name),)
            + conv2d_backward(x, W, dy, stride, 1, groups, primitive=name) for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
