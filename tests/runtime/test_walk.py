"""The compiled walk (npdc.kernels.walk over npdc.runtime.program) computes what the Python walk
computes: the same bits when it runs the same kernels, within 1e-5 when it picks its own per
layer (the Winograd and pointwise kernels included); the per-layer picks follow the measured
times, not the sparsity."""

import json
from pathlib import Path

import numpy as np
import pytest

from npdc.codec.model import load_compressed, save_compressed
from npdc.compress.prune import apply_masks, global_percentage_masks, prunable_layers
from npdc.compress.quantize import quantize_net
from npdc.errors import UserError
from npdc.io.modelfile import load_model
from npdc.kernels.walk import OP_HOST
from npdc.runtime import program
from npdc.runtime.infer import build_runtime, choose_walk, load_runtime
from tests.conftest import rel_err
from tests.runtime.conftest import NETS, make_npdc, raw_images

MODELS = Path(__file__).resolve().parents[2] / "data" / "models"


@pytest.fixture(autouse=True)
def _own_timings(tmp_path, monkeypatch):
    """Each test measures into its own timings cache."""
    monkeypatch.setenv("NPDC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("weights", ["dense", "sparse"])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_compiled_walk_matches_the_python_walk(npdc_file, weights, batch):
    """Every net of the runtime's tests, the graph-built ones with host steps among them: the
    reference choice gives the Python walk's bits, the measured one agrees within 1e-5."""
    path, net = npdc_file
    images = raw_images(net, 4)
    python = load_runtime(path, weights, batch, walk="python")
    assert python.walk == "python" and python.program is None
    ref = python.predict(images)
    net_, codes = load_compressed(path)
    same = build_runtime(net_, codes, weights, batch, walk="compiled", choice="reference")
    fast = build_runtime(net_, codes, weights, batch, walk="compiled")
    assert same.walk == fast.walk == "compiled"
    out = same.predict(images)
    if weights == "dense" and batch > 1:  # GEMM linears: numpy's BLAS there, Numba's here
        assert rel_err(out, ref) < 1e-6
    else:
        assert np.array_equal(out, ref)
    assert rel_err(fast.predict(images), ref) < 1e-5
    assert rel_err(fast.predict(images[:1]), ref[:1]) < 1e-5  # a short batch


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.float16])
def test_images_loaded_inside_the_compiled_call_give_the_bits_of_loading_them_from_python(tmp_path, dtype):
    """A plan without host steps loads the raw images, walks and copies its output in one
    compiled call (the walk): the same bits as normalising in NumPy and walking after, for
    every image dtype, a short last batch, a strided array, and a node before the logits."""
    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS["resnet18"])
    rt = load_runtime(path, "dense", 2)
    last = len(rt.plan.steps) - 1
    assert rt.program.segments(last) == [(0, last + 1)]
    images = raw_images(net, 9)[:, :, ::-1]  # a reversed view: not C-contiguous
    if dtype != np.uint8:
        images = (images / np.float64(255.0) * 1.5 - 0.2).astype(dtype)[::2]
    node = rt.plan.steps[last - 2].output

    def from_python(name):
        outs = []
        for i in range(0, len(images), 2):
            n = rt.load_input(images[i:i + 2])
            rt._steps(n, rt.writer(name))
            outs.append(rt.view(name, n).copy())
        return np.concatenate(outs)

    assert np.array_equal(rt.predict(images), from_python(rt.plan.output))
    assert np.array_equal(rt.features(images, node), from_python(node))


def test_a_first_walk_that_compiles_for_long_says_why_once(tmp_path, monkeypatch, capsys):
    """A runtime's first compiled call gets one line on stderr when Numba compiles in it (here a
    compile event around a sleep) and it runs past the notice's delay; a second runtime whose
    first call is as slow but compiles nothing (its kernels loaded from the cache) gets none."""
    import time

    from numba.core import event

    from npdc import progress
    from npdc.kernels import walk as W

    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS["resnet18"])
    real, calls = W.walk, []

    def walk(*args):
        if not calls:
            with event.trigger_event("numba:compile", data={}):
                time.sleep(0.3)
        calls.append(1)
        real(*args)

    monkeypatch.setattr(W, "walk", walk)
    monkeypatch.setattr(progress, "NOTICE_SECONDS", 0.05)
    with progress.output("info"):
        load_runtime(path, "dense", 1).predict(raw_images(net, 3))
        first = len(calls)
        calls.clear()
        calls.append(0)  # no compile event from here on
        rt = load_runtime(path, "dense", 1)
        rt.program._walked = False
        monkeypatch.setattr(W, "walk", lambda *args: (time.sleep(0.3), real(*args)))
        rt.predict(raw_images(net, 1))
    assert first > 3 and capsys.readouterr().err.count(program.COMPILING) == 1


def test_auto_weights_run_each_layer_as_it_measured_fastest(tmp_path):
    """Fake timings that make sparse rows win every layer, then dense floats: the picks follow
    the times whatever the sparsity, and the store of the losing form is dropped."""
    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS["cifar-resnet20"], sparsity=30)
    net_, codes = load_compressed(path)
    images = raw_images(net, 3)
    first = build_runtime(net_, codes, "auto", 1)
    cache = tmp_path / "cache" / program.TIMINGS_NAME
    timings = json.loads(cache.read_text())
    assert timings and all(v > 0 for v in timings.values())
    layers = [s.name for s in first.plan.steps if s.kind in ("conv", "linear")]
    for winner in ("sparse", "dense"):
        cache.write_text(json.dumps({k: (1e-6 if f"-{winner}-" in k else 1.0) for k in timings}))
        runtime = build_runtime(net_, codes, "auto", 1)
        assert runtime.sparse_layers() == (layers if winner == "sparse" else [])
        assert {kind for name, (_, kind) in runtime.kernels().items() if name in layers} == {winner}
        held = runtime.stores["dense"].W if winner == "dense" else runtime.stores["sparse"].csr
        assert held == {}  # packed into the program's buffers, not held twice
        assert rel_err(runtime.predict(images), net.predict(images)) < 1e-5
    sparse_wins = lambda k: ("-sparse-" in k) == ("-x16x" in k)  # layers reading 16 channels
    cache.write_text(json.dumps({k: (1e-6 if sparse_wins(k) else 1.0) for k in timings}))
    mixed = build_runtime(net_, codes, "auto", 1)
    reads16 = [s.name for s in mixed.plan.steps if s.name in layers
               and mixed.plan.values[s.inputs[0]].shape[0] == 16]
    assert mixed.sparse_layers() == reads16 and 0 < len(reads16) < len(layers)
    assert rel_err(mixed.predict(images), net.predict(images)) < 1e-5


def test_a_dense_batch_conv_runs_on_the_host_when_that_measured_fastest(tmp_path):
    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS["cifar-resnet20"])
    net_, codes = load_compressed(path)
    build_runtime(net_, codes, "dense", 3)
    cache = tmp_path / "cache" / program.TIMINGS_NAME
    timings = json.loads(cache.read_text())
    cache.write_text(json.dumps({k: (1e-6 if k.startswith("conv-host-") else 1.0) for k in timings}))
    runtime = build_runtime(net_, codes, "dense", 3)
    convs = [s.name for s in runtime.plan.steps if s.kind == "conv"]
    assert [n for n, (op, _) in runtime.program.picks.items() if op == OP_HOST] == convs
    assert set(runtime.primitives) == set(convs)
    segments = runtime.program.segments(len(runtime.plan.steps) - 1)
    assert [seg for seg in segments if len(seg) == 1] == [(k,) for k in range(len(convs))]
    images = raw_images(net, 5)
    assert rel_err(runtime.predict(images), net.predict(images)) < 1e-5


def test_one_place_decides_the_walk(monkeypatch):
    monkeypatch.delenv("NPDC_RUNTIME_WALK", raising=False)
    assert choose_walk("sparse") == "compiled" and choose_walk("stream", "compiled") == "python"
    monkeypatch.setenv("NPDC_RUNTIME_WALK", "python")
    assert choose_walk("dense") == "python" and choose_walk("dense", "compiled") == "compiled"
    with pytest.raises(UserError, match="auto"):
        choose_walk("auto")
    monkeypatch.setenv("NPDC_RUNTIME_WALK", "jit")
    with pytest.raises(UserError, match="unknown runtime walk"):
        choose_walk("dense")


@pytest.mark.parametrize("model", ["fmnist-resnet18", "fmnist-resnet20"])
def test_the_shipped_models_give_the_same_logits_in_both_walks(tmp_path, model):
    """The shipped models, cut and quantized as a .npdc file: both walks, dense, sparse and auto
    weights, batch 1 and 8."""
    net = load_model(MODELS / f"{model}.h5")
    masks = global_percentage_masks(net, 80.0, exclude=("conv1",))
    apply_masks(net, masks)
    fc = {n: 4 for n in prunable_layers(net) if n.startswith("fc")}
    save_compressed(tmp_path / "m.npdc", net, quantize_net(net, fc, "kmeans", masks, default_bits=5))
    decoded, codes = load_compressed(tmp_path / "m.npdc")
    images = np.random.default_rng(0).integers(0, 256, (9, 28, 28)).astype(np.uint8)
    for batch in (1, 8):
        ref = build_runtime(decoded, codes, "sparse", batch, walk="python").predict(images)
        assert rel_err(ref, decoded.predict(images[:, None])) < 1e-5
        for weights in ("dense", "sparse", "auto"):
            out = build_runtime(decoded, codes, weights, batch, walk="compiled").predict(images)
            assert rel_err(out, ref) < 1e-5, (weights, batch)


@pytest.mark.parametrize("spec", ["cifar-resnet20", "resnet18", "tv-resnet50"])
def test_winograd_and_pointwise_layers_compute_the_net(tmp_path, spec):
    """Fake timings that make Winograd win every 3x3 stride-1 conv and the pointwise kernel
    every 1x1 conv: at a batch they run every such layer and the logits are the net's; at batch
    1 Winograd is offered only to layers whose transformed kernels fit WINOGRAD_ONE_BYTES."""
    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS[spec])
    net_, codes = load_compressed(path)
    images = raw_images(net, 3)
    for batch in (3, 1):
        build_runtime(net_, codes, "dense", batch)
        cache = tmp_path / "cache" / program.TIMINGS_NAME
        timings = json.loads(cache.read_text())
        cache.write_text(json.dumps({k: (1e-6 if "-winograd-" in k or "-pointwise-" in k else 1.0)
                                     for k in timings}))
        runtime = build_runtime(net_, codes, "dense", batch)
        convs = [s for s in runtime.plan.steps if s.kind == "conv"]
        wino = [s.name for s in convs if s.w_shape[2:] == (3, 3) and s.stride == 1 and s.pad <= 2
                and (batch > 1 or program.winograd_bytes(s.w_shape) <= program.WINOGRAD_ONE_BYTES)]
        points = [s.name for s in convs if s.w_shape[2:] == (1, 1) and s.pad == 0]
        kernels = runtime.kernels()
        assert [s.name for s in convs if kernels[s.name][0] == "winograd"] == wino
        assert [s.name for s in convs if kernels[s.name][0] == "pointwise"] == points
        assert rel_err(runtime.predict(images), net.predict(images)) < 1e-5
    assert 36 * 64 * 64 * 4 > program.WINOGRAD_ONE_BYTES >= 36 * 32 * 32 * 4  # 64 channels: no
    if spec == "cifar-resnet20":  # its 64-channel layers stay direct at batch 1
        assert wino and len(wino) < sum(s.w_shape[2:] == (3, 3) and s.stride == 1 for s in convs)
    else:
        assert points
