"""The runtime from a .npdc file: batch-1 latency and batch-128 throughput in each weight mode,
and memory, for cifar-resnet20 and the shipped fmnist-resnet18.

The compressed files are made in the fixtures without retraining: a global magnitude cut of
PRUNE % (conv1 kept dense), k-means to 5 bits (conv) and 4 bits (fc), as `compress` would store
them. Every timing and the memory gate use these files, built here the same way every run, never
a file left on disk. Without retraining such a cut ruins the shipped model's accuracy, so for the
score alone (recorded, not gated) the output of `python -m npdc compress` is used when present
(NPDC_BENCH_FILE, else compressed/fmnist-resnet18.npdc). Gates (same-run ratios): batch-1
latency from the .npdc at most PyTorch CPU's dense batch-1 latency (cifar-resnet20, sparse
weights), batch-128 images/s from the .npdc at least PyTorch CPU's (cifar-resnet20, dense
weights), and the runtime's peak memory at most 1/8 of the naive float32 run of the
uncompressed model (shipped model).
"""

import os
from pathlib import Path

import numpy as np
import pytest

from bench.conftest import THREADS, best_seconds, gate, versus
from npdc.codec.model import load_compressed, save_compressed
from npdc.compress.prune import apply_masks, global_percentage_masks, prunable_layers
from npdc.compress.quantize import quantize_net
from npdc.engine.resnet import build_net
from npdc.io.modelfile import load_model
from npdc.runtime.infer import build_runtime
from npdc.runtime.measure import naive_peak_bytes, peak_rss_bytes, runtime_peak_bytes

PRUNE = 90.0
SHIPPED = Path(__file__).resolve().parents[1] / "data/models/fmnist-resnet18.h5"
BATCH = 128
LATENCY_FLOOR = 1.0  # PyTorch batch-1 ms over npdc's (sparse, from the .npdc)
MEMORY_FLOOR = 8.0   # naive float32 peak over the runtime's
THROUGHPUT_FLOOR = 1.0  # runtime batch-128 images/s (dense, from the .npdc) over PyTorch's


def _compress(net, path):
    masks = global_percentage_masks(net, PRUNE, exclude=("conv1",))
    apply_masks(net, masks)
    fc = {n: 4 for n in prunable_layers(net) if n.startswith("fc")}
    save_compressed(path, net, quantize_net(net, fc, "kmeans", masks, default_bits=5))
    return load_compressed(path)


def _compressed_run_output():
    """The output of `python -m npdc compress` when there is one (NPDC_BENCH_FILE, else
    compressed/fmnist-resnet18.npdc), for the score only; else None."""
    made = Path(os.environ.get("NPDC_BENCH_FILE", SHIPPED.parents[2] / "compressed/fmnist-resnet18.npdc"))
    return (made, *load_compressed(made)) if made.is_file() else None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{model: (path, uncompressed net, decoded net, codes)}, each file built here."""
    folder = tmp_path_factory.mktemp("runtime")
    cifar = build_net({"arch": "cifar-resnet20"}, seed=0)
    return {"cifar-resnet20": (folder / "cifar.npdc", cifar,
                               *_compress(build_net(cifar.spec, seed=0), folder / "cifar.npdc")),
            "fmnist-resnet18": (folder / "fmnist.npdc", load_model(SHIPPED),
                                *_compress(load_model(SHIPPED), folder / "fmnist.npdc"))}


def _runtime(files, model, mode, batch):
    path, _, net, codes = files[model]
    runtime = build_runtime(net, codes, mode, batch, path)
    x = np.random.default_rng(0).random((batch,) + runtime.plan.in_shape).astype(np.float32)
    runtime.predict(x)  # compile and touch everything before timing
    return runtime, x


@pytest.mark.parametrize("mode", ["dense", "stream", "sparse"])
@pytest.mark.parametrize("model", ["cifar-resnet20", "fmnist-resnet18"])
def test_latency_batch1(benchmark, files, model, mode):
    runtime, x = _runtime(files, model, mode, 1)
    benchmark.pedantic(runtime.predict, args=(x,), rounds=50, warmup_rounds=5)
    benchmark.extra_info["latency_ms"] = round(1e3 * benchmark.stats.stats.median, 3)


@pytest.mark.parametrize("mode", ["dense", "stream", "sparse"])
@pytest.mark.parametrize("model", ["cifar-resnet20", "fmnist-resnet18"])
def test_throughput_batch128(benchmark, files, model, mode):
    runtime, x = _runtime(files, model, mode, BATCH)
    benchmark.pedantic(runtime.predict, args=(x,), rounds=3, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.min, 1)


@pytest.mark.gate
def test_latency_vs_torch(benchmark, files):
    from bench.torch_models import CifarResNet, torch

    torch.set_num_threads(THREADS)
    model = CifarResNet(20).eval()
    xt = torch.randn(1, 3, 32, 32)

    def torch_b1():
        with torch.no_grad():
            model(xt)

    runtime, x = _runtime(files, "cifar-resnet20", "sparse", 1)
    benchmark.pedantic(runtime.predict, args=(x,), rounds=100, warmup_rounds=10)
    ours = benchmark.stats.stats.median
    theirs = min(best_seconds(torch_b1, repeats=1, warmup=0) for _ in range(100))
    benchmark.extra_info.update(npdc_ms=round(1e3 * ours, 3), torch_ms=round(1e3 * theirs, 3),
                                npdc_best_ms=round(1e3 * benchmark.stats.stats.min, 3))
    gate(benchmark, "torch_over_npdc_latency", theirs / benchmark.stats.stats.min, LATENCY_FLOOR)


@pytest.mark.gate
def test_throughput_vs_torch(benchmark, files):
    """Batch-128 inference from the .npdc (dense weights: each conv runs the engine primitive of
    its plan, batch norms and ReLUs folded into the conv tails) against PyTorch's eval forward."""
    from bench.torch_models import CifarResNet, torch

    torch.set_num_threads(THREADS)
    model = CifarResNet(20).eval()
    xt = torch.randn(BATCH, 3, 32, 32)

    def torch_batch():
        with torch.no_grad():
            model(xt)

    runtime, x = _runtime(files, "cifar-resnet20", "dense", BATCH)
    versus(benchmark, "runtime_vs_torch", lambda: runtime.predict(x), torch_batch, THROUGHPUT_FLOOR, BATCH)


@pytest.mark.gate
def test_memory_and_score_of_the_shipped_model(benchmark, files):
    """The memory gate on the file built in `files` (the same every run); the score recorded from
    the compress run's output when there is one (its accuracy is meaningful), else from that file."""
    from npdc.engine.train import evaluate
    from npdc.io.datasets import load_dataset
    from npdc.report import totals
    from npdc.score import score

    path, baseline, net, codes = files["fmnist-resnet18"]
    M = naive_peak_bytes(baseline)
    runtime = build_runtime(net, codes, "sparse", 1, path)
    m = benchmark.pedantic(runtime_peak_bytes, args=(runtime,), rounds=1, iterations=1)
    benchmark.extra_info.update(M=M, m=m, peak_rss_bytes=peak_rss_bytes(),
                                modes={w: runtime_peak_bytes(build_runtime(net, codes, w, 1, path))
                                       for w in ("dense", "stream", "sparse")})
    made = _compressed_run_output()
    if made:
        path, net, codes = made
        m_made = runtime_peak_bytes(build_runtime(net, codes, "sparse", 1, path))
        benchmark.extra_info.update(score_file=str(path), score_file_m=m_made)
    else:
        m_made = m
    x, y = load_dataset("fashion-mnist").require("test")
    z0 = evaluate(baseline, x, y)["accuracy"]
    z = float((build_runtime(net, codes, "sparse", BATCH).predict(x).argmax(1) == y).mean())
    sizes = totals(path, baseline=baseline)
    result = score(sizes["size_before_bytes"], sizes["size_after_bytes"], M, m_made, z, "relative", z0)
    benchmark.extra_info.update(S=sizes["size_before_bytes"], s=sizes["size_after_bytes"],
                                z0=z0, z=z, score=round(result["score"], 2), A=result["A"])
    gate(benchmark, "naive_over_runtime_memory", M / m, MEMORY_FLOOR)
