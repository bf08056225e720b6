"""ImageNet-size gates against PyTorch (skipped without it): ResNet-50 at 224x224, batch 8,
inference and a training step, and MobileNetV2 inference, each npdc's images/s over PyTorch's
measured alternately in the same run (`versus`). The PyTorch side is the torchvision-named twin
of bench/torchvision_twins.py with the same weights, so both compute the same network.

    python -m pytest bench/test_imagenet_bench.py --benchmark-only -p no:cacheprovider
"""

import numpy as np
import pytest

from bench.conftest import THREADS, versus
from npdc.engine.losses import cross_entropy
from npdc.engine.optim import SGD
from npdc.engine.resnet import build_net

BATCH = 8
SHAPE = (3, 224, 224)
FLOOR = 1.0  # the target: at least PyTorch's images/s


def _pair(arch, twin, **options):
    torch = pytest.importorskip("torch")
    from bench.torchvision_twins import MobileNetV2, ResNet

    torch.set_num_threads(THREADS)
    net = build_net({"arch": arch, "input_shape": list(SHAPE), **options})
    model = {"tv-resnet50": lambda: ResNet(50), "mobilenet_v2": lambda: MobileNetV2()}[twin]()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH,) + SHAPE, dtype=np.float32)
    y = rng.integers(0, 1000, BATCH)
    return net, model, torch, x, y


def _infer_pair(arch):
    net, model, torch, x, _ = _pair(arch, arch)
    model.eval()
    tx = torch.from_numpy(x)

    def theirs():
        with torch.no_grad():
            model(tx)

    return lambda: net.forward(x), theirs


@pytest.mark.gate
@pytest.mark.parametrize("arch", ["tv-resnet50", "mobilenet_v2"])
def test_inference_vs_torch(benchmark, arch):
    ours, theirs = _infer_pair(arch)
    versus(benchmark, f"{arch}_inference_vs_torch", ours, theirs, FLOOR, BATCH)


@pytest.mark.gate
def test_resnet50_train_step_vs_torch(benchmark):
    net, model, torch, x, y = _pair("tv-resnet50", "tv-resnet50")
    opt = SGD(net.params(), net.grads(), lr=0.01)
    topt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def ours():
        net.zero_grad()
        _, d = cross_entropy(net.forward(x, train=True), y)
        net.backward(d)
        opt.step()

    def theirs():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(model(tx), ty).backward()
        topt.step()

    versus(benchmark, "resnet50_train_vs_torch", ours, theirs, FLOOR, BATCH)
