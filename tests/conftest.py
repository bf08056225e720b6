"""Shared float64 references for the engine tests, written independently of npdc.

The convolution references walk the output pixels one by one (the textbook definition), so they
share no code and no lowering with npdc.kernels. Tests import them as `tests.conftest`.
"""

import os
from pathlib import Path

import npdc

# Under pytest-xdist (`-n N`, pytest_cmdline_main below) each test process computes on one
# thread by default: two processes each waking two threads on two cores made parallel
# kernels wait for descheduled threads. Tests that compare thread counts still set 1 and 2.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read when numpy loads
npdc.tune_process()  # the suite runs as the command line does: set before numpy loads (npdc.process)

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

if XDIST_WORKER:
    numba.set_num_threads(1)

BOUNDS_CHECKED = "kernels/test_bounds_checked.py"
TINY_RESNET18 = {"arch": "resnet18", "input_shape": [1, 6, 6], "width": 2, "embedding": 4,
                 "num_classes": 3, "strides": [1, 2, 1, 2, 1]}
TINY_CIFAR = {"arch": "cifar-resnet20", "input_shape": [3, 6, 6], "num_classes": 3}


def out_len(size, k, stride, pad):
    """Output length along one axis, from the definition of a strided window."""
    return (size + 2 * pad - k) // stride + 1


def naive_conv2d(x, W, stride=1, pad=0, groups=1):
    """y[n, o, p, q] = sum_{c in group(o), i, j} xpad[n, c, p*s + i, q*s + j] * W[o, c, i, j]."""
    x, W = np.asarray(x, np.float64), np.asarray(W, np.float64)
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    og = o // groups
    ho, wo = out_len(h, kh, stride, pad), out_len(w, kw, stride, pad)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    y = np.zeros((n, o, ho, wo))
    for g in range(groups):
        cs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for p in range(ho):
            for q in range(wo):
                patch = xp[:, cs, p * stride:p * stride + kh, q * stride:q * stride + kw]
                y[:, os_, p, q] = np.einsum("ncij,ocij->no", patch, W[os_])
    return y


def naive_conv2d_backward(x, W, dy, stride=1, pad=0, groups=1):
    """(dx, dW) of naive_conv2d: each output pixel scatters dy back over its window (the
    transposed convolution) and accumulates dy * patch into the weights."""
    x, W, dy = (np.asarray(a, np.float64) for a in (x, W, dy))
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    og = o // groups
    ho, wo = dy.shape[2], dy.shape[3]
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    dxp = np.zeros_like(xp)
    dW = np.zeros_like(W)
    for g in range(groups):
        cs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for p in range(ho):
            for q in range(wo):
                win = (slice(None), cs, slice(p * stride, p * stride + kh),
                       slice(q * stride, q * stride + kw))
                d = dy[:, os_, p, q]
                dxp[win] += np.einsum("no,ocij->ncij", d, W[os_])
                dW[os_] += np.einsum("no,ncij->ocij", d, xp[win])
    return dxp[:, :, pad:pad + h, pad:pad + w], dW


def rel_err(a, ref):
    """Largest absolute difference relative to the largest reference magnitude."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-12))


def distinct_values(shape, rng, spread=1.0):
    """A random permutation of evenly spaced values: no ties, gaps of `spread` apart."""
    size = int(np.prod(shape))
    return (rng.permutation(size).astype(np.float64) * spread - size * spread / 2).reshape(shape)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """With `-n N` (pytest-xdist, in [test]) the suite runs in N processes: most of its time is
    single-threaded (Numba compiling, small arrays), so a second process uses the second core.
    Before the workers start, this process compiles the kernels once into Numba's cache, which
    they then load instead of each compiling them again, and starts the bounds-checked build
    on the other core. tests/ holds no benchmarks (they are in bench/): pytest-benchmark is told
    so, which keeps it from warning that xdist disables it."""
    if hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True
    if (not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput")
            or not config.getoption("numprocesses") or config.getoption("collectonly")):
        return
    if _selects(config, BOUNDS_CHECKED):
        from tests.kernels import test_bounds_checked
        test_bounds_checked.share()  # compiles on the second core while this one does the below
    import npdc.api  # noqa: F401  compiles (or loads) the kernels the package builds on import
    import npdc.cli  # noqa: F401


def _selects(config, test_file):
    """Whether the command line's paths (the test paths when it gives none) include test_file."""
    target = (Path(__file__).parent / test_file).resolve()
    paths = [Path(config.invocation_params.dir, a.split("::")[0]).resolve() for a in config.args]
    return any(p == target or p in target.parents for p in paths)


def pytest_collection_finish(session):
    """The bounds-checked build of the kernels compiles for about two minutes on one core: when
    its test is selected, start it now, so that it uses the second core while the rest runs. In
    an xdist worker it starts with its test instead (every worker collects every test)."""
    if XDIST_WORKER:
        return
    if any(item.nodeid.endswith("test_every_primitive_passes_the_helper_with_bounds_checking")
           for item in session.items):
        from tests.kernels import test_bounds_checked
        test_bounds_checked.start()


def pytest_sessionfinish(session):
    from tests.kernels import test_bounds_checked
    test_bounds_checked.stop()


@pytest.fixture
def tiny_resnet18():
    from npdc.engine.resnet import build_net

    return build_net(TINY_RESNET18, seed=1)


@pytest.fixture
def tiny_cifar():
    from npdc.engine.resnet import build_net

    return build_net(TINY_CIFAR, seed=2)


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of one in-process CLI call; argparse exits count like returns.
    The thread count comes back as it was (`--threads` sets Numba's and BLAS's for the process),
    so that the tests after this one run as they would without it."""
    from npdc.cli import main
    from npdc.threads import set_threads

    threads = numba.get_num_threads()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        if numba.get_num_threads() != threads:
            set_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err):
    """A user mistake: exit code 2 and exactly one line on stderr, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error" in lines[0]
    return lines[0]


def optimal_huffman_bits(counts):
    """Total bits of an optimal (unlimited) Huffman code for these symbol counts: the sum of all
    merged weights (a lone used symbol still takes one bit per occurrence)."""
    import heapq

    heap = [int(c) for c in counts if c > 0]
    if len(heap) <= 1:
        return sum(heap)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def write_tiny_dataset(path, train=192, test=60):
    """A three-class 8x8 grey dataset whose classes differ by brightness, as an .npz at `path`:
    learnable in an epoch or two by the smallest nets."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        y = np.arange(n) % 3
        arrays[f"x_{split}"] = np.clip(y[:, None, None, None] * 80 + 40 + rng.normal(0, 15, (n, 1, 8, 8)),
                                       0, 255).astype(np.uint8)
        arrays[f"y_{split}"] = y
    np.savez(path, **arrays)
    return path


def tiny_model_and_data(folder, train=192, test=60, epochs=2):
    """A width-2 resnet18 trained for `epochs` on write_tiny_dataset's images, saved as
    folder/m.h5 beside folder/d.npz; returns (net, the loaded Dataset)."""
    from npdc.engine.train import train_model
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import save_model

    write_tiny_dataset(folder / "d.npz", train, test)
    data = load_dataset(str(folder / "d.npz"))
    net, _ = train_model({"arch": "resnet18", "input_shape": [1, 8, 8], "num_classes": 3, "width": 2},
                         data.x_train, data.y_train, epochs, batch_size=16, progress=False)
    save_model(folder / "m.h5", net)
    return net, data

