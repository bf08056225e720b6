"""Small pruned, quantized nets written as .npdc files, with BN statistics that are not the
identity so that folding them is tested."""

import numpy as np
import pytest

from npdc.codec.model import load_compressed, save_compressed
from npdc.compress.prune import apply_masks, percentage_masks
from npdc.compress.quantize import quantize_net
from npdc.engine.resnet import build_net

NETS = {
    "resnet18": {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 4, "embedding": 8,
                 "num_classes": 3, "strides": [1, 1, 2, 2, 1]},
    "resnet18-prelu": {"arch": "resnet18", "input_shape": [2, 7, 7], "width": 2, "embedding": 4,
                       "num_classes": 5, "strides": [2, 1, 1, 2, 1], "activation": "prelu"},
    "cifar-resnet20": {"arch": "cifar-resnet20", "input_shape": [3, 8, 8], "num_classes": 4},
    # graph-built nets: 7x7 stem, max-pool, bottlenecks; depthwise convs, ReLU6, linear
    # bottlenecks; ceil-mode pools, concat
    "tv-resnet50": {"arch": "tv-resnet50", "input_shape": [3, 32, 32], "num_classes": 4, "width": 2},
    "mobilenet_v2": {"arch": "mobilenet_v2", "input_shape": [3, 16, 16], "num_classes": 3,
                     "width_mult": 0.1},
    "squeezenet1_1": {"arch": "squeezenet1_1", "input_shape": [3, 20, 20], "num_classes": 3, "width": 8},
}


def randomise_bn(net, rng):
    for _, layer, _ in net.nodes:
        if "running_var" in layer.buffers:
            c = layer.buffers["running_var"].size
            layer.buffers["running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
            layer.buffers["running_mean"] = rng.normal(0, 0.3, c).astype(np.float32)
            layer.params["gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            layer.params["beta"] = rng.normal(0, 0.3, c).astype(np.float32)
        if "slope" in layer.params:
            layer.params["slope"] = rng.uniform(0.05, 0.4, layer.params["slope"].size).astype(np.float32)


def make_npdc(path, spec, sparsity=80, seed=0):
    """Write a pruned (sparsity %), k-means-quantized net to path; returns the decoded net."""
    rng = np.random.default_rng(seed)
    net = build_net(spec, seed=seed)
    randomise_bn(net, rng)
    net.mean = rng.uniform(0.2, 0.6, net.in_shape[0]).astype(np.float32)
    net.std = rng.uniform(0.2, 0.5, net.in_shape[0]).astype(np.float32)
    masks = percentage_masks(net, sparsity, {"conv1": (0.0, False)} if "conv1" in net.layers else {})
    apply_masks(net, masks)
    save_compressed(path, net, quantize_net(net, {}, "kmeans", masks, default_bits=5))
    return load_compressed(path)[0]


@pytest.fixture(scope="session")
def npdc_bytes(tmp_path_factory):
    """name -> the bytes make_npdc writes for NETS[name], built once a session: the file is the
    same bytes every time, and building it (k-means, coding) costs far more than decoding it."""
    folder, built = tmp_path_factory.mktemp("nets"), {}

    def get(name):
        if name not in built:
            make_npdc(folder / f"{name}.npdc", NETS[name])
            built[name] = (folder / f"{name}.npdc").read_bytes()
        return built[name]

    return get


@pytest.fixture(params=sorted(NETS))
def npdc_file(request, tmp_path, npdc_bytes):
    """(path, net): make_npdc's file for one net of NETS, a copy in this test's own folder, and
    the net decoded from it, as make_npdc returns it."""
    path = tmp_path / f"{request.param}.npdc"
    path.write_bytes(npdc_bytes(request.param))
    return path, load_compressed(path)[0]


def raw_images(net, n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n,) + net.in_shape).astype(np.uint8)
