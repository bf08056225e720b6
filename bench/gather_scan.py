"""Which compiled functions of the runtime's walks move data by gather or scatter: the vector
instructions LLVM's loop vectoriser falls back on when it cannot prove an index is a plain run.
A NumPy-style index of signed type keeps Numba's negative-index wraparound (an index below zero
counts from the end), and a copy loop indexed so becomes gathers and scatters: the padded copy
of the `blocked` kernel ran 2.5-3 times slower so (docs/perf.md, fifteenth session).

    NUMBA_CACHE_DIR=$(mktemp -d) python bench/gather_scan.py [--batch 1 128]

Builds the float runtime (compiled walk) and the int8 runtime of the shipped fmnist-resnet18 at
each batch, runs one forward, and prints each compiled function of the two walks with the number
of gather and scatter instructions in its machine code, most first. Numba keeps no machine code
for what it loads from its cache, hence the new NUMBA_CACHE_DIR (the float walk then compiles for
about three minutes, the int8 one for about one). A gather is not always wrong (a transpose may
read a column so); each one listed is a loop to read.
"""

import argparse
import collections
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npdc  # noqa: E402

npdc.tune_process()

from bench.test_runtime_bench import SHIPPED, _compress  # noqa: E402
from npdc.io.modelfile import load_model  # noqa: E402
from npdc.kernels import int8_walk, walk  # noqa: E402
from npdc.runtime.calibrate import calibration_scales  # noqa: E402
from npdc.runtime.infer import build_runtime  # noqa: E402
from npdc.runtime.int8 import Int8Runtime  # noqa: E402

MOVES = re.compile(r"\bv(p?gather|p?scatter)\w*")
LABEL = re.compile(r"^([A-Za-z_][\w.$]*):")


def moves_by_function(dispatcher):
    """{function symbol: gather and scatter instructions} over every compiled signature."""
    counts = collections.Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Numba warns that cached code has no assembly
        listings = dispatcher.inspect_asm().values()
    for asm in listings:
        function = None
        for line in asm.splitlines():
            label = LABEL.match(line)
            if label:
                function = label.group(1)
            elif MOVES.search(line):
                counts[function] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 128])
    args = parser.parse_args()
    net = load_model(SHIPPED)
    folder = Path(tempfile.mkdtemp())
    decoded, codes = _compress(load_model(SHIPPED), folder / "m.npdc")
    images = np.random.default_rng(5).integers(0, 256, (64,) + tuple(net.in_shape)).astype(np.uint8)
    scales = calibration_scales(net, images, 64)
    for batch in args.batch:
        x = np.random.default_rng(0).random((batch,) + tuple(net.in_shape)).astype(np.float32)
        build_runtime(decoded, codes, "auto", batch, folder / "m.npdc", "compiled").predict(x)
        Int8Runtime(net, scales, batch).predict(x)
    for name, dispatcher in (("float walk", walk.walk), ("int8 walk", int8_walk.walk_int8)):
        counts = moves_by_function(dispatcher)
        print(f"{name}: {sum(counts.values())} gather/scatter instructions in {len(counts)} functions")
        for function, k in counts.most_common():
            print(f"{k:6d}  {function[:160]}")


if __name__ == "__main__":
    main()
