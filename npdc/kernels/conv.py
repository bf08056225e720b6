"""The one entry point for 2-D convolution: forward, backward-data and backward-weights.

Several primitives compute the same convolution with different lowerings (Anderson & Gregg 2017,
"Optimal DNN Primitive Selection with Partitioned Boolean Quadratic Programming"); each lives in
its own module and is listed in the registry PRIMITIVES. A primitive refuses, with a reason, the
shapes it does not handle. Callers name a primitive (a layer carries the one its plan chose) or
leave it to `default_primitive`, a heuristic from measurements on 2-core AVX2 machines;
npdc.engine.conv_select measures and chooses per layer instead. A layer without a plan may run its
backward on another primitive than its forward (`default_backward_primitive`): the two passes'
costs differ per lowering, and any primitive's gradients are those of the same convolution. All
primitives take and return NCHW float arrays and keep float64 in float64 (gradient checks rely on
it).
"""

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from npdc.kernels import (conv_depthwise, conv_direct, conv_fft, conv_flat, conv_gemm, conv_im2col,
                          conv_kn2row, conv_polyphase, conv_stem, conv_winograd, conv_winograd4)
from npdc.kernels.im2col import out_size
from npdc.threads import single_thread_numba_blas

single_thread_numba_blas()  # BLAS calls from inside Numba's parallel loops must not fork again


@dataclass(frozen=True)
class Primitive:
    """A convolution algorithm: refuse(shape) -> reason or None; forward; backward. A primitive
    that keeps transformed weights between calls (npdc.kernels.prepared) also has `fresh`, the
    same forward keeping and reusing nothing, for weights that change every step. A primitive
    whose backward can write dW into a given array (`dW_out`, a layer's gradient) says so with
    `writes_dW`."""
    name: str
    refuse: object
    forward: object
    backward: object
    layout: str = "NCHW"
    fresh: object = None
    writes_dW: bool = False


def _accepts_all(x_shape, W_shape, stride, pad, groups):
    return None


PRIMITIVES = {
    "direct": Primitive("direct", _accepts_all, conv_direct.forward, conv_direct.backward),
    "im2col": Primitive("im2col", _accepts_all, conv_im2col.forward, conv_im2col.backward),
    "flat": Primitive("flat", conv_flat.refuse, conv_flat.forward, conv_flat.backward),
    "polyphase": Primitive("polyphase", conv_polyphase.refuse, conv_polyphase.forward, conv_polyphase.backward),
    "kn2row": Primitive("kn2row", conv_kn2row.refuse, conv_kn2row.forward, conv_kn2row.backward, writes_dW=True),
    "winograd2": Primitive("winograd2", conv_winograd.refuse, partial(conv_winograd.forward, m=2),
                           partial(conv_winograd.backward, m=2)),
    "winograd4": Primitive("winograd4", conv_winograd4.refuse, conv_winograd4.forward, conv_winograd4.backward,
                           fresh=conv_winograd4.forward_fresh, writes_dW=True),
    "fft": Primitive("fft", conv_fft.refuse, conv_fft.forward, conv_fft.backward),
    "gemm": Primitive("gemm", conv_gemm.refuse, conv_gemm.forward, conv_gemm.backward, writes_dW=True),
    "depthwise": Primitive("depthwise", conv_depthwise.refuse, conv_depthwise.forward, conv_depthwise.backward),
    "stem": Primitive("stem", conv_stem.refuse, conv_stem.forward, conv_stem.backward),
}


def check_conv(x_shape, W_shape, stride, pad, groups):
    """Raise ValueError unless the shapes describe a legal convolution."""
    if len(x_shape) != 4 or len(W_shape) != 4:
        raise ValueError(f"conv: x {x_shape} and W {W_shape} must both be 4-D")
    n, c, h, w = x_shape
    o, cg, kh, kw = W_shape
    if groups < 1 or c % groups or o % groups or cg != c // groups:
        raise ValueError(f"conv: input has {c} channels, weight {W_shape} with groups={groups}")
    if stride < 1 or pad < 0:
        raise ValueError(f"conv: stride {stride} and padding {pad} must be >= 1 and >= 0")
    if out_size(h, kh, stride, pad) < 1 or out_size(w, kw, stride, pad) < 1:
        raise ValueError(f"conv: kernel {kh}x{kw} does not fit a padded {h}x{w} input")


_forced = {"name": None}


def force_primitive(name):
    """Make every convolution that accepts `name` use it, whatever its plan says (None: stop)."""
    if name is not None and name not in PRIMITIVES:
        raise ValueError(f"unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}")
    _forced["name"] = name


def forced_primitive():
    """The primitive force_primitive set, or None."""
    return _forced["name"]


@contextmanager
def primitive_forced(name):
    """force_primitive(name) inside a with block, the previous choice again after it."""
    before = _forced["name"]
    force_primitive(name)
    try:
        yield
    finally:
        _forced["name"] = before


def choose_primitive(planned, x_shape, W_shape, stride, pad, groups, inference=False):
    """The primitive a layer runs: the forced one if it accepts the shape, else the planned one,
    else the default heuristic (for an inference forward if `inference`)."""
    forced = _forced["name"]
    if forced and PRIMITIVES[forced].refuse(x_shape, W_shape, stride, pad, groups) is None:
        return forced
    return planned or default_primitive(x_shape, W_shape, stride, pad, groups, inference)


def choose_backward_primitive(planned, x_shape, W_shape, stride, pad, groups):
    """The primitive a layer's backward runs: the forced one if it accepts the shape, else the
    planned one (a plan times each primitive's forward and backward together), else
    default_backward_primitive."""
    forced = _forced["name"]
    if forced and PRIMITIVES[forced].refuse(x_shape, W_shape, stride, pad, groups) is None:
        return forced
    return planned or default_backward_primitive(x_shape, W_shape, stride, pad, groups)


def legal_primitives(x_shape, W_shape, stride, pad, groups):
    """Names of the primitives that accept this convolution, in registry order."""
    return [name for name, p in PRIMITIVES.items() if p.refuse(x_shape, W_shape, stride, pad, groups) is None]


def default_primitive(x_shape, W_shape, stride, pad, groups, inference=False):
    """The primitive to use when no plan chose one, from measurements at ResNet shapes on 2-core
    AVX2 machines, batch 128: fused Winograd F(4x4,3x3) wins 3x3 stride-1 layers with 8 or more
    input channels, flat those with fewer (the first layer), polyphase 3x3 stride-2 layers, kn2row
    a 1x1 stride-1 unpadded layer (one GEMM), im2col everything else. Two kinds of layer that
    small models do not have, measured at ImageNet shapes (batch 8, 224x224; docs/perf.md): a
    depthwise layer takes the direct depthwise kernel, one with 256 or more input channels
    and an output map of at most 64 pixels (ResNet-50's last stage) one GEMM over the batch, and
    one with few input channels and a kernel larger than 3x3 (the ResNets' 7x7 stride-2 stem)
    the direct few-channel kernel. An inference forward (`inference`) of a 3x3 stride-1 layer with
    512 or more input channels and a 7x7 or 8x8 output takes winograd4 instead of the GEMM: its
    kernel transform, as large as the layer's work there, is kept between calls with unchanged
    weights (npdc.kernels.prepared), which a training step's never are. Small models have no such
    layer (fmnist-resnet18's 512 channels run at 4x4)."""
    o, cg, kh, kw = W_shape
    if conv_depthwise.refuse(x_shape, W_shape, stride, pad, groups) is None and x_shape[1] > 1:
        return "depthwise"
    if conv_stem.refuse(x_shape, W_shape, stride, pad, groups) is None and max(kh, kw) > 3:
        return "stem"
    pixels = out_size(x_shape[2], kh, stride, pad) * out_size(x_shape[3], kw, stride, pad)
    winograd = groups == 1 and stride == 1 and (kh, kw) == (3, 3) and pad <= 2
    if inference and winograd and cg >= 512 and 49 <= pixels <= 64:
        return "winograd4"
    if groups == 1 and cg >= 256 and pixels <= 64:
        return "gemm"
    if winograd:
        return "winograd4" if cg >= 8 else "flat"
    if groups == 1 and stride == 2 and (kh, kw) == (3, 3) and pad <= 1:
        return "polyphase"
    if groups == 1 and stride == 1 and pad == 0 and kh == kw == 1:
        return "kn2row"
    return "im2col"


def default_backward_primitive(x_shape, W_shape, stride, pad, groups):
    """The primitive for the gradients when no plan chose one: default_primitive's, except at two
    kinds of stride-2 layer that only ImageNet-size networks have (128 or more input channels;
    the shipped models have at most 64 there), where another lowering's backward measured faster
    than the forward's choice (ResNet-50, batch 8; docs/perf.md): a 3x3 layer, polyphase forward,
    takes one GEMM over the batch when its output map has at most 196 pixels (else im2col), as
    polyphase's weight gradient is the slowest there; a 1x1 layer with 256 or more input
    channels takes one GEMM up to 256 output pixels, kn2row above."""
    o, cg, kh, kw = W_shape
    pixels = out_size(x_shape[2], kh, stride, pad) * out_size(x_shape[3], kw, stride, pad)
    forward = default_primitive(x_shape, W_shape, stride, pad, groups)
    if groups != 1 or stride != 2 or forward == "gemm":
        return forward
    gemm_fits = conv_gemm.refuse(x_shape, W_shape, stride, pad, groups) is None
    if (kh, kw) == (3, 3) and cg >= 128:
        return "gemm" if pixels <= 196 and gemm_fits else "im2col"
    if (kh, kw) == (1, 1) and cg >= 256:
        return "gemm" if pixels <= 256 and gemm_fits else "kn2row"
    return forward


def _resolve(primitive, x_shape, W_shape, stride, pad, groups):
    check_conv(x_shape, W_shape, stride, pad, groups)
    name = primitive or default_primitive(x_shape, W_shape, stride, pad, groups)
    if name not in PRIMITIVES:
        raise ValueError(f"conv: unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}")
    p = PRIMITIVES[name]
    reason = p.refuse(x_shape, W_shape, stride, pad, groups)
    if reason:
        raise ValueError(f"conv: primitive {name} cannot compute x {tuple(x_shape)} * W "
                         f"{tuple(W_shape)} stride {stride} pad {pad} groups {groups}: {reason}")
    return p


def conv2d_forward(x, W, stride=1, pad=0, groups=1, primitive=None, keep=True):
    """x: (N, C, H, W), W: (O, C/groups, kh, kw) -> y: (N, O, Ho, Wo). Without `keep` (training,
    whose weights change every step) no transformed weights are kept or looked up: comparing
    and copying the weights each call would buy nothing."""
    p = _resolve(primitive, np.shape(x), np.shape(W), stride, pad, groups)
    x = np.ascontiguousarray(x)
    W = np.ascontiguousarray(W, dtype=x.dtype)
    forward = p.forward if keep or p.fresh is None else p.fresh
    return forward(x, W, stride, pad, groups)


def conv2d_backward(x, W, dy, stride=1, pad=0, groups=1, need_dx=True, primitive=None, dW_out=None):
    """Gradients of a convolution: returns (dx or None, dW) for dy: (N, O, Ho, Wo). With
    `dW_out` (C-contiguous, W's shape and type: a layer's gradient that reads as zero) dW is
    written there and returned; a primitive that `writes_dW` skips its own array and the copy."""
    p = _resolve(primitive, np.shape(x), np.shape(W), stride, pad, groups)
    o, cg, kh, kw = W.shape
    want = (x.shape[0], o, out_size(x.shape[2], kh, stride, pad), out_size(x.shape[3], kw, stride, pad))
    if dy.shape != want:
        raise ValueError(f"conv backward: dy has shape {dy.shape}, expected {want}")
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    W_in = np.ascontiguousarray(W, dtype=x.dtype)
    if dW_out is not None and p.writes_dW and dW_out.dtype == x.dtype:
        return p.backward(x, W_in, dy, stride, pad, groups, need_dx, dW_out=dW_out)
    dx, dW = p.backward(x, W_in, dy, stride, pad, groups, need_dx)
    if dW_out is None:
        return dx, dW.astype(W.dtype, copy=False)
    dW_out[...] = dW
    return dx, dW_out
