"""Where a network's inference time goes: each layer of a registry architecture timed inside the
engine's forward (batch 8, 2 threads), summed by layer kind, and each convolution set against
PyTorch's conv2d on the same shapes (timed alone, warm, best of 3) when PyTorch is installed.
Convolutions of one shape and primitive are summed on one line, largest gap first.

    python bench/layer_profile.py [ARCH] [--size 224] [--batch 8]

The timings wrap each layer's forward, so the total is a little above an unwrapped forward's.
"""

import argparse
import time
from collections import defaultdict

import npdc

npdc.tune_process()

import numpy as np  # noqa: E402

from npdc.engine.resnet import build_net  # noqa: E402
from npdc.threads import set_threads  # noqa: E402


def timed_forward(net, x, repeats=3):
    """(seconds per forward, {layer: seconds per forward}, {conv layer: (x shape, W shape, stride,
    padding, groups, primitive)}) with every layer's forward wrapped by a timer."""
    spent, convs = defaultdict(float), {}
    for name, layer in net.layers.items():
        for attr in ("forward", "forward_into"):
            inner = getattr(layer, attr, None)
            if inner is None:
                continue

            def wrapped(*args, _inner=inner, _name=name, _layer=layer, **kwargs):
                start = time.perf_counter()
                out = _inner(*args, **kwargs)
                spent[_name] += time.perf_counter() - start
                if "W" in getattr(_layer, "params", {}) and hasattr(_layer, "stride"):
                    convs[_name] = (args[0].shape, _layer.params["W"].shape, _layer.stride, _layer.padding,
                                    _layer.groups, getattr(_layer, "ran", None))
                return out
            setattr(layer, attr, wrapped)
    net.forward(x), net.forward(x)
    spent.clear()
    start = time.perf_counter()
    for _ in range(repeats):
        net.forward(x)
    return (time.perf_counter() - start) / repeats, {k: v / repeats for k, v in spent.items()}, convs


def torch_conv_seconds(torch, shape, W_shape, stride, padding, groups):
    x, W = torch.randn(*shape), torch.randn(*W_shape)
    best = float("inf")
    with torch.no_grad():
        for k in range(5):
            start = time.perf_counter()
            torch.nn.functional.conv2d(x, W, stride=stride, padding=padding, groups=groups)
            if k >= 2:
                best = min(best, time.perf_counter() - start)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("arch", nargs="?", default="tv-resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    set_threads(2)
    net = build_net({"arch": a.arch, "input_shape": [3, a.size, a.size]})
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size), dtype=np.float32)
    total, spent, convs = timed_forward(net, x)
    kinds = defaultdict(float)
    for name, seconds in spent.items():
        kinds[type(net.layers[name]).__name__] += seconds
    print(f"forward {total * 1e3:.1f} ms: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in
                                                         sorted(kinds.items(), key=lambda kv: -kv[1])))
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: no per-convolution comparison")
        return
    torch.set_num_threads(2)
    rows = defaultdict(lambda: [0, 0.0, 0.0])
    for name, (shape, W_shape, stride, padding, groups, primitive) in convs.items():
        row = rows[(tuple(shape[1:]), tuple(W_shape), stride, groups, primitive)]
        row[0] += 1
        row[1] += spent[name]
        row[2] += torch_conv_seconds(torch, shape, W_shape, stride, padding, groups)
    print(f"convolutions: npdc {sum(r[1] for r in rows.values()) * 1e3:.1f} ms, PyTorch "
          f"{sum(r[2] for r in rows.values()) * 1e3:.1f} ms")
    for (shape, W_shape, stride, groups, primitive), (count, ours, theirs) in sorted(
            rows.items(), key=lambda kv: kv[1][2] - kv[1][1]):
        print(f"{count:2d} x in {shape} W {W_shape} stride {stride} groups {groups} {primitive}: "
              f"npdc {ours * 1e3:.1f} ms, PyTorch {theirs * 1e3:.1f} ms ({(ours - theirs) * 1e3:+.1f})")


if __name__ == "__main__":
    main()
