"""Max pooling kernels over (N, C, H, W), parallel over the (image, channel) planes. (Average
pooling is a depthwise convolution: npdc.kernels.conv_depthwise.)

Each output line is built tap by tap in kernel order (a, b) over the run of output columns whose
input column lies inside the image (`valid_run`), so padding is never materialised: a padded
position simply never wins (it would be -inf). Visiting the taps in order keeps the results
those of the whole-array NumPy form they replace: the first tap is copied, a later one replaces
the maximum only when strictly greater (ties and NaN keep the earlier value, the gradient goes to
the first maximum). That NumPy form made k*k strided passes plus a boolean scatter per tap, and
measured as the slowest layer of torchvision's ResNet-50 (docs/perf.md).
"""

import numba
import numpy as np

from npdc.kernels.im2col import valid_run


@numba.njit(parallel=True, cache=True)
def max_forward(x, k, stride, pad, y, arg, keep_arg):
    """y = the maximum of each window; with keep_arg, arg (int16, y's shape) = the winning tap
    a*k + b of each output (0 when no tap of the window lies inside x)."""
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        src = x[i, ch]
        for oy in range(ho):
            row = y[i, ch, oy]
            best = arg[i, ch, oy] if keep_arg else arg[0, 0, 0]
            row[:] = -np.inf
            if keep_arg:
                best[:] = 0
            for a in range(k):
                iy = oy * stride - pad + a
                if iy < 0 or iy >= h:
                    continue
                line = src[iy]
                for b in range(k):
                    lo, hi = valid_run(b, stride, pad, w, wo)
                    shift, t = b - pad, a * k + b
                    if t == 0:
                        for ox in range(lo, hi):
                            row[ox] = line[ox * stride + shift]
                    elif keep_arg:
                        for ox in range(lo, hi):
                            v, m = line[ox * stride + shift], row[ox]
                            row[ox] = v if v > m else m  # selects, not a branch: they vectorise
                            best[ox] = t if v > m else best[ox]
                    else:
                        for ox in range(lo, hi):
                            v = line[ox * stride + shift]
                            row[ox] = v if v > row[ox] else row[ox]


@numba.njit(parallel=True, cache=True)
def max_backward(dy, arg, k, stride, pad, dx):
    """dx (overwritten) = each output's gradient added at its winning input position."""
    n, c, h, w = dx.shape
    ho, wo = dy.shape[2], dy.shape[3]
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        out = dx[i, ch]
        out[:, :] = 0
        for oy in range(ho):
            for ox in range(wo):
                t = arg[i, ch, oy, ox]
                iy, ix = oy * stride - pad + t // k, ox * stride - pad + t % k
                if 0 <= iy < h and 0 <= ix < w:
                    out[iy, ix] += dy[i, ch, oy, ox]
