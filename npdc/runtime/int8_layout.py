"""Which activations of an int8 plan are kept as words between layers (npdc.kernels.int8_words:
four channels to a 32-bit word, with their padding), and each conv's geometry for
npdc.kernels.int8_words.conv_words.

A value is kept as words when a conv writes it, its channels are a multiple of 4, every step
reading it is a conv (as input or residual), it is not the plan's output, its padded planes fit
the arena's ROOM bytes per value, and the pad works for both ends: at least the largest pad of
the convs reading it, and the one the writer's tile rows give (a stride-1 writer's run of
positions is one padded input row per output row, so its output's padded row must be that
long). Decided in step order, so a conv's input and residual are decided before its output. A
conv that writes its output over its residual (the plan's in-place step) keeps both alike, or
gets memory of its own.
"""

import numpy as np

from npdc.kernels import int8_pack as P
from npdc.kernels import int8_words as W

ROOM = 4  # arena bytes per activation value: the plan places values in floats


def words_pads(plan):
    """({value: pad} of the values kept as words, [outputs to write apart from their residual])."""
    readers = {}
    for s in plan.steps:
        for name in s.reads():
            readers.setdefault(name, []).append((s, "residual" if name == s.residual else "input"))
    pads = {}
    for s in plan.steps:
        if s.kind == "conv":
            p = _pad(plan, s, readers.get(s.output, []), pads)
            if p is not None:
                pads[s.output] = p
    apart = [s.output for s in plan.steps
             if s.inplace and pads.get(s.output) != pads.get(s.residual)]
    return pads, apart


def _pad(plan, s, readers, pads):
    v = plan.values[s.output]
    if len(v.shape) != 3 or v.shape[0] % P.GROUP or s.output == plan.output or not readers:
        return None
    if any(r.kind != "conv" for r, _ in readers):
        return None
    c, h, w = v.shape
    need = max([r.pad for r, role in readers if role == "input"], default=0)
    cin, _, win = plan.values[s.inputs[0]].shape
    kw = s.w_shape[3]
    if s.inputs[0] in pads and s.stride > 1:  # the phases are gathered with rows of the output's pad
        p = max(need, ((kw - 1) // s.stride + 1) // 2)
    else:
        if s.inputs[0] in pads:
            row = win + 2 * pads[s.inputs[0]]
        else:
            row = P.tap_width(win, s.pad, s.stride) if cin % P.GROUP == 0 or s.stride == 1 else w
        if (row - w) % 2 or (row - w) // 2 < need:
            return None
        p = (row - w) // 2
    if W.group_plane(h, w, p)[1] > ROOM * h * w:
        return None
    if s.inplace and pads.get(s.residual) != p:
        return None
    return p


def geometry(plan, pads, s):
    """The conv's int64 geometry fields (npdc.kernels.int8_words.G_*)."""
    g = np.zeros(W.N_GEO, np.int64)
    c, h, w = plan.values[s.inputs[0]].shape
    o, ho, wo = plan.values[s.output].shape
    g[[W.G_C, W.G_H, W.G_W, W.G_O, W.G_HO, W.G_WO]] = c, h, w, o, ho, wo
    if s.residual:
        g[W.G_CR] = plan.values[s.residual].shape[0]
    for name, at in ((s.inputs[0], W.G_PI), (s.residual, W.G_PR), (s.output, W.G_PO)):
        if name in pads:
            shape = plan.values[name].shape
            g[at] = pads[name]
            g[at + 1], g[at + 2] = W.group_plane(shape[1], shape[2], pads[name])
    return g


def image_words(plan, pads, name):
    """Words per image of a value kept as words."""
    c, h, w = plan.values[name].shape
    return c // P.GROUP * W.group_plane(h, w, pads[name])[1]
