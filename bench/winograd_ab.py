"""The runtime's Winograd conv kernel (npdc.kernels.fused_winograd) against another version of
the same file, over the 3x3 stride-1 shapes of the shipped fmnist-resnet18, without a residual
and with an identity residual written over in place, in alternation in one process:

    git show d9da5ec~1:npdc/kernels/fused_winograd.py > /tmp/fw_before.py
    NUMBA_CACHE_DIR=$(mktemp -d) python bench/winograd_ab.py /tmp/fw_before.py --batch 128 --rounds 20

Wall clock, Numba's threads as set (default: all), best of the rounds; a fresh NUMBA_CACHE_DIR as
for bench/blocked_ab.py (the other file is a module of its own name). Prints each version's
milliseconds and whether their outputs are bit for bit the same (without a residual: with one,
each call adds onto the last).
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npdc.kernels import fused_winograd as ours  # noqa: E402
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, Tail  # noqa: E402

SHAPES = [(16, 28), (32, 14), (64, 7), (128, 4)]  # (channels in and out, plane side)


def layer(theirs, n, c, h, identity, rounds, rng):
    x = rng.random((n, c, h, h), dtype=np.float32)
    U = ours.grouped_kernels(rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.1)
    res = rng.random((n, c, h, h), dtype=np.float32)
    ys = [res.copy() if identity else np.zeros_like(x) for _ in range(2)]
    tails = [Tail(np.ones(c, np.float32), np.full(c, 0.01, np.float32), True, np.full(c, 0.1, np.float32),
                  y if identity else np.zeros((1, 1, 1, 1), np.float32), RES_IDENTITY if identity else RES_NONE,
                  0, 1) for y in ys]
    threads = numba.get_num_threads()
    calls = [lambda m=m, y=y, t=t: m.conv_winograd_fused(x, U, 1, t, y, threads)
             for m, y, t in zip((theirs, ours), ys, tails)]
    for call in calls:
        call()
    same = "" if identity else f", same bits: {np.array_equal(ys[0], ys[1])}"
    best = [np.inf, np.inf]
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            t = time.perf_counter()
            calls[i]()
            best[i] = min(best[i], time.perf_counter() - t)
    print(f"c{c}h{h} {'identity' if identity else 'no residual'}: theirs {1e3 * best[0]:.3f}, ours "
          f"{1e3 * best[1]:.3f} ms ({best[0] / best[1]:.2f}x){same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("theirs", help="another fused_winograd.py")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("theirs_fused_winograd", args.theirs)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    rng = np.random.default_rng(0)
    for c, h in SHAPES:
        for identity in (False, True):
            layer(theirs, args.batch, c, h, identity, args.rounds, rng)


if __name__ == "__main__":
    main()
