"""ResNet-50's stem and MobileNetV2's depthwise layers at batch 8, 2 threads: the current
primitive, the one it replaced (im2col; depthwise's tap-by-tap sweep) and PyTorch, each call timed
warm, best of 7, alternating. `backward`: every conv shape of ResNet-50's training step, the
gradients as the net asks for them (no data gradient at the stem) by the forward's default
primitive, the backward's default and PyTorch's autograd (backward alone); `fork`: a residual
add's ReLU gradient from two parts, NumPy's sum then the mask against the fused kernel, summed
over ResNet-50's 16 forks. Needs PyTorch. From the repository root:

    python bench/imagenet_layers.py [stem|dw|backward|fork|all]
"""
import sys, time
sys.path.insert(0, '.')
import npdc; npdc.tune_process()
import numpy as np, torch
from npdc.threads import set_threads
from npdc.kernels.conv import conv2d_forward, conv2d_backward
from npdc.kernels import conv_depthwise
set_threads(2); torch.set_num_threads(2)

def cmp(label, fns, rounds=7):
    for f in fns.values(): f()
    best = {k: 1e9 for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            f(); t0 = time.perf_counter(); f(); best[k] = min(best[k], time.perf_counter() - t0)
    print(label, "  ".join(f"{k} {v*1e3:.2f}" for k, v in best.items()), flush=True)

def _timed(f):
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0

r = np.random.default_rng(0)
what = sys.argv[1] if len(sys.argv) > 1 else "all"
if what in ("all", "stem"):
    x = r.standard_normal((8, 3, 224, 224), dtype=np.float32)
    W = r.standard_normal((64, 3, 7, 7), dtype=np.float32)
    tx, tW = torch.from_numpy(x), torch.from_numpy(W)
    y = conv2d_forward(x, W, 2, 3, primitive="im2col")
    dy = r.standard_normal(y.shape, dtype=np.float32)
    tdy = torch.from_numpy(dy)
    cmp("stem fwd", {"stem": lambda: conv2d_forward(x, W, 2, 3, primitive="stem"),
                     "im2col": lambda: conv2d_forward(x, W, 2, 3, primitive="im2col"),
                     "torch": lambda: torch.nn.functional.conv2d(tx, tW, stride=2, padding=3)})
    twr = tW.clone().requires_grad_(True)
    def tback():
        twr.grad = None
        yy = torch.nn.functional.conv2d(tx, twr, stride=2, padding=3)
        yy.backward(tdy)
    cmp("stem fwd+wgrad", {"stem": lambda: conv2d_backward(x, W, conv2d_forward(x, W, 2, 3, primitive="stem"), 2, 3, need_dx=False, primitive="stem"),
                     "im2col": lambda: conv2d_backward(x, W, conv2d_forward(x, W, 2, 3, primitive="im2col"), 2, 3, need_dx=False, primitive="im2col"),
                     "torch": tback})
if what in ("all", "dw"):
    for c, hw, s in [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (384, 14, 1), (960, 7, 1)]:
        x = r.standard_normal((8, c, hw, hw), dtype=np.float32)
        W = r.standard_normal((c, 1, 3, 3), dtype=np.float32)
        ho = (hw + 2 - 3) // s + 1
        y = np.empty((8, c, ho, ho), np.float32)
        tx, tW = torch.from_numpy(x), torch.from_numpy(W)
        cmp(f"dw c{c}h{hw}s{s}", {"new": lambda: conv2d_forward(x, W, s, 1, c, primitive="depthwise"),
                                   "old": lambda: conv_depthwise._sweep(x, W, s, 1, y, False),
                                   "torch": lambda: torch.nn.functional.conv2d(tx, tW, stride=s, padding=1, groups=c)})
        a = conv2d_forward(x, W, s, 1, c, primitive="depthwise"); conv_depthwise._sweep(x, W, s, 1, y, False)
        assert np.allclose(a, y, atol=1e-4), np.abs(a - y).max()
    big = np.ones(16 << 20, np.float32); dst = np.empty_like(big)
    cmp("copy 64MB", {"copy": lambda: np.copyto(dst, big)})
if what in ("all", "backward"):
    from collections import Counter
    from npdc.engine.layers import Conv2d
    from npdc.engine.resnet import build_net
    from npdc.kernels.conv import default_backward_primitive, default_primitive
    net = build_net({"arch": "tv-resnet50", "input_shape": [3, 224, 224]})
    convs = [layer for _, layer, _ in net.nodes if isinstance(layer, Conv2d)]
    shapes = Counter(((8,) + layer.in_shape, layer.params["W"].shape, layer.stride, layer.padding,
                      layer is not convs[0]) for layer in convs)
    for (xs, ws, s, p, need_dx), count in shapes.items():
        x, W = r.standard_normal(xs, dtype=np.float32), r.standard_normal(ws, dtype=np.float32)
        dy = r.standard_normal(conv2d_forward(x, W, s, p, primitive="im2col").shape, dtype=np.float32)
        tx = torch.from_numpy(x).requires_grad_(need_dx)
        tW = torch.from_numpy(W).requires_grad_(True)
        ty, tdy = torch.nn.functional.conv2d(tx, tW, stride=s, padding=p), torch.from_numpy(dy)
        names = dict.fromkeys([default_primitive(xs, ws, s, p, 1), default_backward_primitive(xs, ws, s, p, 1)])
        fns = {k: (lambda k=k: conv2d_backward(x, W, dy, s, p, need_dx=need_dx, primitive=k)) for k in names}
        fns["torch"] = lambda: torch.autograd.grad(ty, [tx, tW] if need_dx else [tW], tdy, retain_graph=True)
        cmp(f"{count}x c{xs[1]}h{xs[2]} W{ws[0]}x{ws[1]}x{ws[2]}x{ws[3]} s{s} backward", fns, rounds=5)
if what in ("all", "fork"):
    from npdc.kernels.activation import relu_backward, relu_backward_sum
    totals = {"numpy sum, mask": 0.0, "fused": 0.0}
    for count, c, hw in [(3, 256, 56), (4, 512, 28), (6, 1024, 14), (3, 2048, 7)]:
        a, b, y = (r.standard_normal(8 * c * hw * hw, dtype=np.float32) for _ in range(3))
        out = np.empty_like(y)
        fns = {"numpy sum, mask": lambda: relu_backward(a + b, y, out),
               "fused": lambda: relu_backward_sum(a, b, y, out)}
        for f in fns.values(): f()
        for k, f in fns.items():
            totals[k] += count * min(_timed(f) for _ in range(7))
    print("16 forks", "  ".join(f"{k} {v*1e3:.2f}" for k, v in totals.items()), flush=True)
