"""The runtime computes what decompress + the engine compute, in every weight mode and batch."""

import numpy as np
import pytest

from npdc.errors import UserError
from npdc.kernels.conv import primitive_forced
from npdc.runtime.infer import build_runtime, load_runtime
from npdc.runtime.measure import naive_peak_bytes, runtime_peak_bytes
from tests.conftest import rel_err
from tests.runtime.conftest import NETS, make_npdc, raw_images


@pytest.mark.parametrize("weights", ["dense", "stream", "sparse"])
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_every_mode_matches_the_decompressed_engine(npdc_file, weights, batch):
    path, net = npdc_file
    images = raw_images(net, 5)  # 5 images: full plan batches and a short last one
    ref = net.predict(images)
    out = load_runtime(path, weights, batch).predict(images)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("weights", ["dense", "sparse"])
def test_a_larger_image_takes_every_kernel_path(tmp_path, weights):
    """24x24 inputs give stride-1 convs long enough for the long-run kernels, and 7 images in
    batches of 3 end with a single image."""
    net = make_npdc(tmp_path / "m.npdc", {**NETS["cifar-resnet20"], "input_shape": [3, 24, 24]})
    images = raw_images(net, 7)
    for batch in (1, 3):
        assert rel_err(load_runtime(tmp_path / "m.npdc", weights, batch).predict(images),
                       net.predict(images)) < 1e-5


def test_float_and_channelless_images_are_accepted(tmp_path):
    spec = NETS["resnet18"]
    net = make_npdc(tmp_path / "m.npdc", spec)
    images = np.random.default_rng(2).random((3, 8, 8))  # N x H x W float64
    runtime = load_runtime(tmp_path / "m.npdc", "sparse")
    assert rel_err(runtime.predict(images), net.predict(images[:, None])) < 1e-5
    with pytest.raises(UserError, match="do not fit"):
        runtime.predict(np.zeros((2, 1, 9, 9), np.float32))
    with pytest.raises(UserError, match="dtype"):
        runtime.predict(np.zeros((2, 1, 8, 8), np.int32))


def test_a_layer_kept_as_floats_runs_in_every_mode(tmp_path):
    """A file whose conv1 was never quantized (its weights in PARM) still runs sparse/streamed."""
    from npdc.codec.model import load_compressed, save_compressed
    from npdc.compress.quantize import quantize_net

    spec = NETS["cifar-resnet20"]
    make_npdc(tmp_path / "a.npdc", spec)
    net, _ = load_compressed(tmp_path / "a.npdc")
    codes = quantize_net(net, {}, "kmeans", None, default_bits=4)
    del codes["conv1.W"]
    save_compressed(tmp_path / "b.npdc", net, codes)
    net, codes = load_compressed(tmp_path / "b.npdc")
    images = raw_images(net, 2)
    for weights in ("dense", "stream", "sparse"):
        out = build_runtime(net, codes, weights, 2, tmp_path / "b.npdc").predict(images)
        assert rel_err(out, net.predict(images)) < 1e-5


def test_runtime_memory_is_far_below_the_naive_run(tmp_path):
    net = make_npdc(tmp_path / "m.npdc", {"arch": "cifar-resnet20", "input_shape": [3, 16, 16]},
                    sparsity=90)
    M = naive_peak_bytes(net)
    activations = sum(4 * int(np.prod(s)) for s in net.shapes.values())
    assert M > 4 * net.num_params() + activations  # weights and every activation are counted
    with primitive_forced("im2col"):  # its column matrix, like any scratch, stays out of the baseline
        assert naive_peak_bytes(net) == M
    figures = {w: runtime_peak_bytes(load_runtime(tmp_path / "m.npdc", w)) for w in ("dense", "sparse")}
    # dense weights may be held transformed where that runs faster (Winograd's are 4x larger), so
    # only the sparse runtime, the memory-first default, is held below the naive run
    assert figures["sparse"] < figures["dense"] and 4 * figures["sparse"] < M
    runtime = load_runtime(tmp_path / "m.npdc", "sparse")
    assert runtime.static_bytes() > runtime.plan.activation_bytes()  # the arena is counted
    assert runtime_peak_bytes(runtime) >= runtime.static_bytes()


def test_unknown_weight_mode_is_a_user_error(tmp_path):
    make_npdc(tmp_path / "m.npdc", NETS["resnet18"])
    with pytest.raises(UserError, match="weight mode"):
        load_runtime(tmp_path / "m.npdc", "packed")


def test_dense_batches_run_the_conv_plan_and_compute_the_same(tmp_path):
    """In the Python walk, with dense weights and a batch plan each conv runs the engine primitive
    the model's plan names (the engine default where it names none); batch 1 keeps the fused
    kernels."""
    from npdc.codec.model import load_compressed
    from npdc.engine.conv_plan import apply_plan, conv_layers
    from npdc.kernels.conv import default_primitive

    make_npdc(tmp_path / "m.npdc", NETS["cifar-resnet20"])
    net, codes = load_compressed(tmp_path / "m.npdc")
    images = raw_images(net, 5)
    convs = conv_layers(net)
    default = {n: default_primitive((3,) + layer.in_shape, layer.params["W"].shape, layer.stride,
                                    layer.padding, layer.groups) for n, layer in convs}
    assert build_runtime(net, codes, "dense", 3, walk="python").primitives == default
    plan = {n: ("kn2row", "im2col", "direct")[i % 3] for i, (n, _) in enumerate(convs[:-1])}
    apply_plan(net, plan)
    runtime = build_runtime(net, codes, "dense", 3, walk="python")
    assert runtime.primitives == {**default, **plan}
    assert rel_err(runtime.predict(images), net.predict(images)) < 1e-5
    assert build_runtime(net, codes, "dense", 1, walk="python").primitives == {}
