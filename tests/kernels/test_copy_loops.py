"""The `blocked` kernel's padded copy (npdc.kernels.blocked_io.fill_padded) compiles to vector
runs: no gather or scatter instruction in its machine code, and it still copies right.

Why a test: a signed index keeps Numba's negative-index wraparound, and LLVM's loop vectoriser
then moves each element by gather and scatter, correct but 2.5-3 times slower (the `blocked`
kernel's padded copy did so; docs/perf.md, fifteenth session). The functions are compiled afresh
here without Numba's cache, which keeps no machine code to read. On a CPU without gather
instructions nothing is found whatever the indices; on this host (AVX-512) the test failed
with the signed indices.
"""

import re

import numba
import numpy as np
import pytest

from npdc.kernels.blocked_io import fill_padded


def _moves(function, *args):
    """{"gather": n, "scatter": n}: vector gathers and scatters in function's machine code,
    compiled afresh for args (and run once on them)."""
    fresh = numba.njit(cache=False)(function.py_func)
    fresh(*args)
    asm = "\n".join(fresh.inspect_asm().values())
    return {kind: len(re.findall(rf"\bvp?{kind}", asm)) for kind in ("gather", "scatter")}


@pytest.mark.parametrize("c,h", [(16, 28), (64, 7)])
def test_the_padded_copy_moves_runs(c, h):
    x = np.random.default_rng(0).random((2, c, h, h), dtype=np.float32)
    xp = np.full(c * (h + 2) ** 2 + 16, np.nan, np.float32)
    assert _moves(fill_padded, x, 1, 1, xp) == {"gather": 0, "scatter": 0}
    plane = xp[:c * (h + 2) ** 2].reshape(c, h + 2, h + 2)
    assert np.array_equal(plane[:, 1:-1, 1:-1], x[1]) and not plane[:, [0, -1]].any()

