"""Whole-net speed: a cifar-resnet20 training step and batch-128 inference, npdc against
PyTorch CPU at the same thread count when torch is installed (the gates need it)."""

import time

import numpy as np
import pytest

from bench.conftest import THREADS, gate
from npdc.engine.losses import cross_entropy
from npdc.engine.optim import SGD
from npdc.engine.resnet import build_net

BATCH = 128
TRAIN_FLOOR = 0.5   # npdc training images/s over PyTorch's (engine issue target)
INFER_FLOOR = 0.25  # npdc inference images/s over PyTorch's


def _npdc(arch="cifar-resnet20", shape=(3, 32, 32)):
    net = build_net({"arch": arch, "input_shape": list(shape)})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    opt = SGD(net.params(), net.grads(), lr=0.01)

    def train_step():
        net.zero_grad()
        _, d = cross_entropy(net.forward(x, train=True), y)
        net.backward(d)
        opt.step()

    return net, x, train_step


def _torch_pair():
    from bench.torch_models import CifarResNet, torch

    torch.set_num_threads(THREADS)
    model = CifarResNet(20)
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()

    return train_step, infer


@pytest.mark.parametrize("arch,shape", [("cifar-resnet20", (3, 32, 32)), ("resnet18", (1, 28, 28))])
def test_train_step(benchmark, arch, shape):
    _, _, step = _npdc(arch, shape)
    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.min, 1)


@pytest.mark.parametrize("arch,shape", [("cifar-resnet20", (3, 32, 32)), ("resnet18", (1, 28, 28))])
def test_inference(benchmark, arch, shape):
    net, x, _ = _npdc(arch, shape)
    net.forward(x)
    benchmark.pedantic(net.forward, args=(x,), rounds=5, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.min, 1)


def _alternating_best(ours, theirs, rounds=5):
    """(best seconds of ours, of theirs), one call of each per round after a warm-up call each:
    this machine's speed drifts over seconds, and alternating lets a slow spell hit both."""
    ours(), theirs()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for k, fn in enumerate((ours, theirs)):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _versus(benchmark, name, ours, theirs, floor):
    """Time ours with pytest-benchmark, then the ratio of images/s from alternating calls."""
    benchmark.pedantic(ours, rounds=5, warmup_rounds=1)
    mine, torch_s = _alternating_best(ours, theirs)
    benchmark.extra_info.update(npdc_img_s=round(BATCH / mine, 1), torch_img_s=round(BATCH / torch_s, 1))
    gate(benchmark, name, torch_s / mine, floor)


def test_train_vs_torch(benchmark):
    torch_step, _ = _torch_pair()
    _, _, step = _npdc()
    _versus(benchmark, "train_vs_torch", step, torch_step, TRAIN_FLOOR)


def test_inference_vs_torch(benchmark):
    _, torch_infer = _torch_pair()
    net, x, _ = _npdc()
    _versus(benchmark, "inference_vs_torch", lambda: net.forward(x), torch_infer, INFER_FLOOR)
