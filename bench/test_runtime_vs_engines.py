"""The runtime from a .npdc file against the CPU runtimes people deploy with: ONNX Runtime and
OpenVINO (each skipped when not installed), on identical weights: the decoded .npdc net exported
by npdc's own ONNX export (npdc/io/onnx_export.py), which includes the input normalisation, so
every engine gets the same float pixels and returns logits.

Batch-1 latency and batch-128 throughput of cifar-resnet20 and the shipped fmnist-resnet18, each
engine with THREADS threads, timed in one run by alternating engines round by round (the
machine's speed drifts; alternating lets a slow spell hit all), in an order drawn afresh each
round, each timed call right after an untimed one of the same engine (`alternate`).
Recorded per engine: the median and the best; the ratios other/npdc (above 1: npdc faster) of both.
The issue's targets (npdc's float batch-1 latency <= ONNX Runtime's, its batch-128 throughput >=
ONNX Runtime's) are recorded as `meets_*`, not asserted: a bench that fails whenever a shared
machine is busy says nothing. The .npdc files are the ones test_runtime_bench builds (a 90 % global
magnitude cut and k-means to 5 / 4 bits); NPDC_BENCH_CIFAR and NPDC_BENCH_FMNIST name other .npdc
files to use. The fast-preset memory case reads NPDC_BENCH_FAST_FILE (a `compress --preset fast`
output of the shipped model) and gates its batch-1 peak memory at 1/8 of the naive float run.
"""

import os
import time
from pathlib import Path

import numpy as np
import pytest

from bench.conftest import THREADS, gate
from bench.test_runtime_bench import SHIPPED, _compress
from npdc.codec.model import load_compressed
from npdc.engine.resnet import build_net
from npdc.io.modelfile import load_model
from npdc.runtime.infer import build_runtime
from npdc.runtime.measure import naive_peak_bytes, runtime_peak_bytes

BATCH = 128
ROUNDS = {1: 200, BATCH: 7}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{model: (.npdc path, decoded net, codes, ONNX path)}."""
    from npdc.io.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("engines")
    out = {}
    for name, env, make in (("cifar-resnet20", "NPDC_BENCH_CIFAR",
                             lambda: build_net({"arch": "cifar-resnet20"}, seed=0)),
                            ("fmnist-resnet18", "NPDC_BENCH_FMNIST", lambda: load_model(SHIPPED))):
        path = Path(os.environ[env]) if os.environ.get(env) else folder / f"{name}.npdc"
        if not os.environ.get(env):
            _compress(make(), path)
        net, codes = load_compressed(path)
        export_onnx(net, folder / f"{name}.onnx")
        out[name] = (path, net, codes, folder / f"{name}.onnx")
    return out


def _onnxruntime(onnx_path):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def _openvino(onnx_path, shape):
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({"images": list(shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": THREADS,
                                                 "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]


def _engines(models, model, batch):
    """{engine: predict(x)} for the float runtimes; npdc in each walk and weight storage."""
    path, net, codes, onnx_path = models[model]
    engines = {}
    for label, weights, walk in (("npdc", "auto", "compiled"), ("npdc-sparse", "sparse", "compiled"),
                                 ("npdc-dense", "dense", "compiled"),
                                 ("npdc-python-walk", "dense" if batch > 1 else "sparse", "python")):
        engines[label] = build_runtime(net, codes, weights, batch, path, walk).predict
    engines["onnxruntime"] = _onnxruntime(onnx_path)
    openvino = _openvino(onnx_path, (batch,) + tuple(net.in_shape))
    if openvino is not None:
        engines["openvino"] = openvino
    return engines


def _race(engines, x, rounds):
    """{engine: (median s, best s)} over `rounds` alternating calls, after one warm-up each; and
    each engine's logits checked against npdc's."""
    ref = engines["npdc"](x)
    for name, run in engines.items():
        out = np.asarray(run(x))
        assert np.abs(out - ref).max() <= 1e-3 * max(np.abs(ref).max(), 1.0), name
    return alternate(engines, x, rounds)


def alternate(engines, x, rounds):
    """{engine: (median s, best s)} of `rounds` rounds in which each engine, in an order drawn
    afresh each round (seeded), is called twice in a row and the second call timed. Engines whose
    worker threads spin after a call slow whichever engine runs next on these two cores: in a
    fixed order npdc's runtime ran after OpenVINO and ONNX Runtime every round and its median was
    six times its best; in drawn orders its calls right after ONNX Runtime still took 1.7 times
    those right after its own (docs/perf.md, eighteenth session), while ONNX Runtime, which
    never follows a spinning engine, kept its time. So every timed call follows a call of the
    same engine, as it would in a process of its own, and the drawn order still spreads the
    machine's drift over all."""
    names, times = list(engines), {name: [] for name in engines}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for k in order.permutation(len(names)):
            engines[names[k]](x)
            t0 = time.perf_counter()
            engines[names[k]](x)
            times[names[k]].append(time.perf_counter() - t0)
    return {name: (float(np.median(t)), float(min(t))) for name, t in times.items()}


def _record(benchmark, figures, batch, unit):
    ours = figures["npdc"]
    for name, (median, best) in figures.items():
        if unit == "ms":
            benchmark.extra_info[f"{name}_ms"] = [round(1e3 * median, 3), round(1e3 * best, 3)]
        else:
            benchmark.extra_info[f"{name}_img_s"] = [round(batch / median, 1), round(batch / best, 1)]
        if not name.startswith("npdc"):
            benchmark.extra_info[f"{name}_over_npdc"] = [round(median / ours[0], 3), round(best / ours[1], 3)]
    if "onnxruntime" in figures:
        benchmark.extra_info["meets_onnxruntime"] = figures["onnxruntime"][1] >= ours[1]


@pytest.mark.parametrize("model", ["cifar-resnet20", "fmnist-resnet18"])
def test_batch1_latency_vs_engines(benchmark, models, model):
    engines = _engines(models, model, 1)
    x = np.random.default_rng(0).random((1,) + tuple(models[model][1].in_shape)).astype(np.float32)
    figures = _race(engines, x, ROUNDS[1])
    benchmark.pedantic(engines["npdc"], args=(x,), rounds=50, warmup_rounds=5)
    _record(benchmark, figures, 1, "ms")


@pytest.mark.parametrize("model", ["cifar-resnet20", "fmnist-resnet18"])
def test_batch128_throughput_vs_engines(benchmark, models, model):
    engines = _engines(models, model, BATCH)
    del engines["npdc-sparse"]  # 4x slower than dense at this batch: not a contender
    x = np.random.default_rng(0).random((BATCH,) + tuple(models[model][1].in_shape)).astype(np.float32)
    figures = _race(engines, x, ROUNDS[BATCH])
    benchmark.pedantic(engines["npdc"], args=(x,), rounds=3, warmup_rounds=1)
    _record(benchmark, figures, BATCH, "img_s")


@pytest.mark.gate
def test_memory_of_the_fast_preset_file(benchmark):
    """Peak memory at batch 1 (sparse weights, compiled walk) of a `compress --preset fast` file of
    the shipped model against the naive float run of the shipped model."""
    made = os.environ.get("NPDC_BENCH_FAST_FILE")
    if not made or not Path(made).is_file():
        pytest.skip("NPDC_BENCH_FAST_FILE names no file (python -m npdc compress "
                    "data/models/fmnist-resnet18.h5 --preset fast --out FILE)")
    net, codes = load_compressed(made)
    M = naive_peak_bytes(load_model(SHIPPED))
    runtime = build_runtime(net, codes, "sparse", 1, made)
    m = benchmark.pedantic(runtime_peak_bytes, args=(runtime,), rounds=1, iterations=1)
    benchmark.extra_info.update(M=M, m=m, arena=int(runtime.arena.nbytes),
                                workspace=int(runtime.cols.nbytes + runtime.acc.nbytes + runtime.padded.nbytes),
                                weights={k: int(a.nbytes) for k, a in runtime.program.buffers.items()})
    gate(benchmark, "naive_over_runtime_memory", M / m, 8.0)
