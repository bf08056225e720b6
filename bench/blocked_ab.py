"""The runtime's `blocked` conv kernel (npdc.kernels.fused_blocked) against another version of the
same file, layer by layer over the shapes of the shipped fmnist-resnet18, in alternation in one
process, so a spell of load from other processes slows both alike:

    git show main:npdc/kernels/fused_blocked.py > /tmp/fb_main.py
    NUMBA_CACHE_DIR=$(mktemp -d) python bench/blocked_ab.py /tmp/fb_main.py --batch 32 --threads 1

With one thread it reads the process's CPU time (less disturbed by a busy machine than the wall
clock), with more the wall clock; best of the rounds. The other file is loaded as a module of
its own name, whose compiled code Numba cannot load back from its cache, hence a fresh
NUMBA_CACHE_DIR. Prints G multiply-adds/s of each and the largest difference of their outputs
relative to the largest output.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npdc.kernels import fused_blocked as ours  # noqa: E402
from npdc.kernels.conv_flat import interleaved  # noqa: E402
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, Tail  # noqa: E402

# (C, O, H, kernel, stride): fmnist-resnet18's convs, 3x3 and 1x1
LAYERS = [(1, 16, 28, 3, 1), (16, 16, 28, 3, 1), (16, 16, 28, 1, 1), (16, 32, 28, 3, 2), (16, 32, 28, 1, 2),
          (32, 32, 14, 3, 1), (32, 64, 14, 3, 2), (64, 64, 7, 3, 1), (64, 128, 7, 3, 2),
          (128, 128, 4, 3, 1)]


def layer(theirs, n, c, o, h, k, s, rounds, clock, rng):
    pad = k // 2
    ho = (h + 2 * pad - k) // s + 1
    x = rng.random((n, c, h, h), dtype=np.float32)
    Wb = interleaved(rng.standard_normal((o, c, k * k)).astype(np.float32), ours.lanes_for(o))
    plane, acc = ours.blocked_scratch(c, h, h, pad, o, ho * ho, n)
    rows = numba.config.NUMBA_NUM_THREADS  # a row per thread the process may run, as the runtime's
    planes, accs = np.zeros(plane * rows, np.float32), np.zeros((rows, acc), np.float32)
    ident = s == 1 and c == o  # then y is written over its residual, as the runtime does
    scale, shift = rng.random(o, dtype=np.float32), rng.random(o, dtype=np.float32) * 0.01
    res = rng.random((n, o, ho, ho), dtype=np.float32) if ident else np.zeros((1, 1, 1, 1), np.float32)
    ys = [res.copy() if ident else np.zeros((n, o, ho, ho), np.float32) for _ in range(2)]
    tails = [Tail(scale, shift, True, np.full(o, 0.1, np.float32), y if ident else res,
                  RES_IDENTITY if ident else RES_NONE, 0, 1) for y in ys]
    calls = [lambda m=m, y=y, t=t: m.conv_blocked_fused(x, Wb, k, k, s, pad, t, y, planes, accs)
             for m, y, t in zip((theirs, ours), ys, tails)]
    best = [np.inf, np.inf]
    for call in calls:
        call()
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            t = clock()
            calls[i]()
            best[i] = min(best[i], clock() - t)
    macs = n * o * ho * ho * c * k * k
    diff = np.abs(ys[0] - ys[1]).max() / np.abs(ys[0]).max()
    print(f"c{c}h{h}o{o}k{k}s{s}: theirs {macs / best[0] / 1e9:6.1f}, ours {macs / best[1] / 1e9:6.1f} "
          f"G/s ({best[0] / best[1]:.2f}x), outputs differ by {diff:.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("theirs", help="another fused_blocked.py")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("theirs_fused_blocked", args.theirs)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    numba.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    for shape in LAYERS:
        layer(theirs, args.batch, *shape, args.rounds, clock, rng)


if __name__ == "__main__":
    main()
