"""Whole-net speed: a cifar-resnet20 training step and batch-128 inference, npdc against
PyTorch CPU at the same thread count when torch is installed (the vs_torch gates need it).

Without torch the same cases are still gated against numpy's 1024^3 matmul timed in alternation:
the net's FLOPs (2 per MAC forward, 6 for a training step, from Net.macs()) per second over the
matmul's. Floors at half the lower of two machines' figures (AVX-512, README Speed at c833f75,
matmul ~300 GFLOP/s: training 0.59 / 0.43, inference 0.70 / 0.58 for cifar-resnet20 / resnet18;
the same kind of machine shared with a training run, matmul ~100 GFLOP/s: 0.51 / 0.27 and
0.51 / 0.21; a later, quieter run there: 0.62 / 0.46 and 0.77 / 0.59)."""

import numpy as np
import pytest

from bench.conftest import THREADS, alternating_best, gate, versus
from npdc.engine.losses import cross_entropy
from npdc.engine.optim import SGD
from npdc.engine.resnet import build_net

BATCH = 128
MATMUL = 1024
TRAIN_MATMUL_FLOOR = {"cifar-resnet20": 0.25, "resnet18": 0.13}  # training FLOP/s over matmul's
INFER_MATMUL_FLOOR = {"cifar-resnet20": 0.25, "resnet18": 0.10}  # inference FLOP/s over matmul's
TRAIN_FLOOR = 1.0  # npdc training images/s over PyTorch's (the fast-convolution issue's target)
INFER_FLOOR = 1.0  # npdc inference images/s over PyTorch's (the same)


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


@pytest.fixture(scope="module")
def matmul():
    a = np.random.default_rng(0).standard_normal((MATMUL, MATMUL), dtype=np.float32)
    return lambda: a @ a


def _vs_matmul(benchmark, fn, flops, matmul, floor):
    ours, theirs = alternating_best(fn, matmul, rounds=3)
    gate(benchmark, "vs_matmul", (flops / ours) / (2 * MATMUL**3 / theirs), floor)


@pytest.mark.gate
@pytest.mark.parametrize("arch,shape", [("cifar-resnet20", (3, 32, 32)), ("resnet18", (1, 28, 28))])
def test_train_step(benchmark, arch, shape, matmul):
    net, _, step = _npdc(arch, shape)
    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.min, 1)
    _vs_matmul(benchmark, step, 6 * net.macs() * BATCH, matmul, TRAIN_MATMUL_FLOOR[arch])


@pytest.mark.gate
@pytest.mark.parametrize("arch,shape", [("cifar-resnet20", (3, 32, 32)), ("resnet18", (1, 28, 28))])
def test_inference(benchmark, arch, shape, matmul):
    net, x, _ = _npdc(arch, shape)
    net.forward(x)
    benchmark.pedantic(net.forward, args=(x,), rounds=5, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.min, 1)
    _vs_matmul(benchmark, lambda: net.forward(x), 2 * net.macs() * BATCH, matmul, INFER_MATMUL_FLOOR[arch])


@pytest.mark.gate
def test_train_vs_torch(benchmark):
    torch_step, _ = _torch_pair()
    _, _, step = _npdc()
    versus(benchmark, "train_vs_torch", step, torch_step, TRAIN_FLOOR, BATCH)


@pytest.mark.gate
def test_inference_vs_torch(benchmark):
    _, torch_infer = _torch_pair()
    net, x, _ = _npdc()
    versus(benchmark, "inference_vs_torch", lambda: net.forward(x), torch_infer, INFER_FLOOR, BATCH)
