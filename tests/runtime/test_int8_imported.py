"""Int8 inference of an imported PyTorch CIFAR ResNet-20 (tests/data/torch/cifar_resnet20.pt,
random weights, the normalisation PyTorch used) against the float runtime, on real images: the
shipped Fashion-MNIST digits padded to 32 x 32 and repeated over the three channels, calibrated
on training images and judged on test images.

The weights are random, so accuracy against the labels means nothing, and the issue's "top-1
agrees on 99.7 % of the images" does not hold for a reason that is not int8's: random weights
give near ties (measured on these 400 images: half the float top-1 margins under 0.09, 1 % under
0.001, for logits up to 0.65 and int8 errors up to 0.0097), and 6 of 400 decisions (1.5 %) flip,
each with a float margin under 0.0025. What is asserted instead: the logits stay within 3 % of
their largest magnitude (measured 1.5 %), and on every image whose float margin is at least 1 %
of that magnitude (where an int8 error of the measured size could still flip it) int8 decides as
float on at least 99.7 %; the overall agreement stays at least 97 %."""

from pathlib import Path

import numpy as np
import pytest

from npdc.io.datasets import load_dataset
from npdc.io.torch_import import import_checkpoint
from npdc.runtime.calibrate import calibration_scales
from npdc.runtime.infer import build_runtime
from npdc.runtime.int8 import Int8Runtime

DATA = Path(__file__).resolve().parents[1] / "data" / "torch"
TEST_IMAGES, CALIBRATION_IMAGES, BATCH = 400, 256, 100


def _cifar_sized(x):
    """(N, 1, 28, 28) uint8 digits as (N, 3, 32, 32): padded with 2 black pixels, grey over RGB."""
    x = np.asarray(x).reshape(len(x), 28, 28)
    return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None], 3, axis=1)


@pytest.fixture(scope="module")
def imported():
    with np.load(DATA / "expected.npz") as e:
        mean, std = e["cifar_resnet20.mean"], e["cifar_resnet20.std"]
    net = import_checkpoint(DATA / "cifar_resnet20.pt", "cifar-resnet20", mean, std)
    shipped = load_dataset("fashion-mnist")
    return net, _cifar_sized(shipped.x_train), _cifar_sized(shipped.x_test[:TEST_IMAGES])


def test_int8_keeps_the_float_runtimes_top1_on_an_imported_cifar_resnet20(imported):
    net, x_train, x_test = imported
    scales = calibration_scales(net, x_train, CALIBRATION_IMAGES)
    ref = build_runtime(net, {}, "dense", BATCH, walk="python").predict(x_test)
    got = Int8Runtime(net, scales, BATCH).predict(x_test)
    assert np.sort(np.bincount(ref.argmax(1)))[-2] >= 10  # two classes at least (382 and 18 here)
    top = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 0.03 * top
    same = got.argmax(1) == ref.argmax(1)
    ordered = np.sort(ref, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] >= 0.01 * top
    assert clear.sum() >= 0.9 * len(ref)
    assert same[clear].mean() >= 0.997, f"int8 agrees with float on {same[clear].mean():.2%} of clear images"
    assert same.mean() >= 0.97
