"""Where int8 inference's time goes: each step of the int8 plan timed alone at batch 128.

Run: NUMBA_NUM_THREADS=1 python -m bench.int8_steps [ROUNDS] [pruned]

The two nets of bench/test_int8_bench.py (cifar-resnet20 with seed-0 weights, the shipped
fmnist-resnet18), unpruned, or with `pruned` the files that bench times (90 % of the weights
cut, as bench/test_runtime_bench.py compresses them), scales calibrated on random images
(speed does not depend on them). Printed per net: the best whole forward and the sum of each
step's best over ROUNDS (default 7), then each step's best with how its conv reads its inputs
(`taps`: in place from channel-interleaved tiles; `lowered`: packed columns; `words`: a
conv reading or writing activations kept as words, npdc.kernels.int8_words; `sparse`: its
GEMM over the non-zero weight words only, npdc.kernels.int8_sparse; `blocked`: output channels in
the lanes, npdc.kernels.int8_blocked). One thread gives
steadier figures on a shared machine; the pytest-benchmark file is the measurement of record.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.test_runtime_bench import SHIPPED, _compress
from npdc.engine.resnet import build_net
from npdc.io.modelfile import load_model
from npdc.runtime.calibrate import calibration_scales
from npdc.runtime.int8 import Int8Runtime

BATCH = 128


def time_steps(net, rounds):
    """(best forward s, {step: best s}, runtime) of the int8 plan of net at BATCH."""
    images = np.random.default_rng(5).integers(0, 256, (64,) + tuple(net.in_shape)).astype(np.uint8)
    rt = Int8Runtime(net, calibration_scales(net, images, 64), BATCH)
    x = np.random.default_rng(0).random((BATCH,) + tuple(net.in_shape)).astype(np.float32)
    rt.predict(x)  # compiles, warms the caches
    steps = {s.name: float("inf") for s in rt.plan.steps}
    whole = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        rt.load_input(x)
        for s, call in zip(rt.plan.steps, rt.calls):
            t = time.perf_counter()
            call()
            steps[s.name] = min(steps[s.name], time.perf_counter() - t)
        whole = min(whole, time.perf_counter() - start)
    return whole, steps, rt


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    pruned = "pruned" in sys.argv[2:]
    folder = Path(tempfile.mkdtemp())
    for name, make in (("cifar-resnet20", lambda: build_net({"arch": "cifar-resnet20"}, seed=0)),
                       ("fmnist-resnet18", lambda: load_model(SHIPPED))):
        net = _compress(make(), folder / f"{name}.npdc")[0] if pruned else make()
        whole, steps, rt = time_steps(net, rounds)
        print(f"{name}: best forward {1e3 * whole:.1f} ms ({BATCH / whole:,.0f} images/s), "
              f"sum of step bests {1e3 * sum(steps.values()):.1f} ms, vnni {rt.vnni}")
        for s in rt.plan.steps:
            how = ("taps" if rt.q[s.name].taps else "lowered") if s.kind == "conv" else s.kind
            how = "words" if s.kind == "conv" and rt.runs_words(s) else how
            how = "sparse" if s.name in rt.entries else "blocked" if s.name in rt.blocked else how
            print(f"  {s.name:<14} {how:<8} {1e3 * steps[s.name]:7.2f} ms")


if __name__ == "__main__":
    main()
