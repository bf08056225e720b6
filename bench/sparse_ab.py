"""The runtime's sparse conv over shifted runs (npdc.kernels.sparse_s1) against another version of
the same file, on cifar-resnet20's layer shapes at the densities of the bench's 90 %-cut file, in
alternation in one process, so a spell of load from other processes slows both alike:

    git show ff8c560:npdc/kernels/sparse_s1.py > /tmp/s1_old.py
    NUMBA_CACHE_DIR=$(mktemp -d) python bench/sparse_ab.py /tmp/s1_old.py --batch 1 --threads 2

Random rows at each layer's density, best of the rounds (wall clock, the order turning each round),
each call from Python as the runtime's Python walk makes it. The other file is loaded as a module
of its own name, whose compiled code Numba cannot load back from its cache, hence a fresh
NUMBA_CACHE_DIR. Prints the microseconds of each and whether their outputs are within 1e-5 of each
other (the bits may differ between versions that sum in another order).
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npdc.engine.conv_select import best_in_turns  # noqa: E402
from npdc.kernels import sparse_s1 as ours  # noqa: E402
from npdc.kernels.sparse import csr_entries, csr_from_indices  # noqa: E402

# (C, O, H, density): cifar-resnet20's stride-1 3x3 convs in the bench's .npdc file
LAYERS = [(16, 16, 32, 0.33), (32, 32, 16, 0.17), (64, 64, 8, 0.05)]


def _rows(o, c, density, rng):
    table = np.concatenate([[0], rng.standard_normal(15)]).astype(np.float32)
    indices = (rng.integers(1, 16, (o, c * 9)) * (rng.random((o, c * 9)) < density)).astype(np.uint8)
    flat = indices.reshape(-1)
    n = csr_entries(flat, o)
    rowptr, cols, vidx = np.zeros(o + 1, np.int32), np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    csr_from_indices(flat, o, rowptr, cols, vidx)
    return rowptr, cols, vidx, table


def layer(theirs, n, c, o, h, density, rounds, rng):
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    csr = _rows(o, c, density, rng)
    rows = numba.config.NUMBA_NUM_THREADS  # a workspace row per thread, as the runtime's
    acc = np.zeros((rows, max(o * 8 * (h + 2), (h - 1) * (h + 2) + h, 128)), np.float32)
    decode = np.zeros((rows, 2 * c * (h + 4) * (h + 2) + 8 * c * 9 + 64), np.float32)
    ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
    no_res = np.zeros((1, 1, 1, 1), np.float32)
    ys = [np.zeros((n, o, h, h), np.float32) for _ in range(2)]
    xps = [np.zeros((n, c, h + 2, h + 2), np.float32) for _ in range(2)]
    calls = {i: lambda m=m, y=y, xp=xp: m.conv_sparse_s1(x, 1, 1, xp, *csr, 3, 3, ones, zeros, True,
                                                         zeros, no_res, 0, 0, 1, y, acc, decode)
             for i, (m, y, xp) in enumerate(zip((theirs, ours), ys, xps))}
    best = best_in_turns(calls, rounds)
    close = np.abs(ys[0] - ys[1]).max() <= 1e-5 * max(np.abs(ys[1]).max(), 1.0)
    print(f"c{c}h{h}o{o} density {density:.2f} batch {n}: theirs {best[0] * 1e6:9.1f} µs, "
          f"ours {best[1] * 1e6:9.1f} µs ({best[0] / best[1]:.2f}x), outputs close: {close}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", help="another version of npdc/kernels/sparse_s1.py")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--rounds", type=int, default=0, help="default: 2,000 at batch 1, else 10")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("sparse_s1_other", args.other)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for c, o, h, density in LAYERS:
        layer(theirs, args.batch, c, o, h, density, args.rounds or (2000 if args.batch == 1 else 10), rng)


if __name__ == "__main__":
    main()
