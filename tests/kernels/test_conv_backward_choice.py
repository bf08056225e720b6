"""A layer's backward may run another primitive than its forward (default_backward_primitive):
the choice only at ImageNet-size stride-2 layers, the gradients those of the same convolution
(against the float64 reference), and a plan or a forced primitive still covering both passes."""

import numpy as np
import pytest

from npdc.engine.layers import Conv2d
from npdc.kernels.conv import (choose_backward_primitive, default_backward_primitive,
                               default_primitive, legal_primitives, primitive_forced)
from tests.conftest import naive_conv2d_backward, rel_err

# ResNet-50's stride-2 layers at batch 8 (torchvision v1.5: the stride on the 3x3 conv)
RESNET50_STRIDE2 = {
    ((8, 128, 56, 56), (128, 128, 3, 3), 2, 1, 1): "im2col",  # 28x28 out: polyphase forward
    ((8, 256, 28, 28), (256, 256, 3, 3), 2, 1, 1): "gemm",  # 14x14 out: polyphase forward
    ((8, 512, 14, 14), (512, 512, 3, 3), 2, 1, 1): "gemm",  # gemm forward already
    ((8, 256, 56, 56), (512, 256, 1, 1), 2, 0, 1): "kn2row",  # im2col forward
    ((8, 512, 28, 28), (1024, 512, 1, 1), 2, 0, 1): "gemm",  # im2col forward
    ((8, 1024, 14, 14), (2048, 1024, 1, 1), 2, 0, 1): "gemm",  # gemm forward already
}

# every conv shape of the shipped models and the CIFAR ResNets, at batch 128 and 1
SMALL_MODELS = [((n,) + x, w, s, p, 1) for n in (1, 128) for x, w, s, p in [
    ((1, 28, 28), (16, 1, 3, 3), 1, 1), ((16, 28, 28), (16, 16, 3, 3), 1, 1),
    ((16, 28, 28), (32, 16, 3, 3), 2, 1), ((16, 28, 28), (32, 16, 1, 1), 2, 0),
    ((32, 14, 14), (64, 32, 3, 3), 2, 1), ((32, 14, 14), (64, 32, 1, 1), 2, 0),
    ((64, 7, 7), (128, 64, 3, 3), 2, 1), ((64, 7, 7), (128, 64, 1, 1), 2, 0),
    ((128, 4, 4), (128, 128, 3, 3), 1, 1), ((3, 32, 32), (16, 3, 3, 3), 1, 1),
    ((16, 32, 32), (32, 16, 3, 3), 2, 1), ((32, 16, 16), (64, 32, 3, 3), 2, 1),
    ((64, 8, 8), (64, 64, 3, 3), 1, 1)]]


@pytest.mark.parametrize("case", list(RESNET50_STRIDE2))
def test_resnet50_stride2_layers_take_their_measured_backward(case):
    assert default_backward_primitive(*case) == RESNET50_STRIDE2[case]
    assert RESNET50_STRIDE2[case] in legal_primitives(*case)


def test_small_models_keep_the_forwards_primitive_for_the_backward():
    """So training rounds as before and the shipped compress runs keep their bytes."""
    for case in SMALL_MODELS:
        assert default_backward_primitive(*case) == default_primitive(*case), case


def test_a_batch_too_large_for_one_gemm_falls_back_to_a_legal_primitive():
    case = ((256, 256, 28, 28), (256, 256, 3, 3), 2, 1, 1)  # the whole batch's columns: 115 M floats
    assert "gemm" not in legal_primitives(*case)
    assert default_backward_primitive(*case) == "im2col"


def test_a_plan_or_a_forced_primitive_covers_the_backward_too():
    case = ((8, 256, 28, 28), (256, 256, 3, 3), 2, 1, 1)
    assert choose_backward_primitive(None, *case) == "gemm"
    assert choose_backward_primitive("polyphase", *case) == "polyphase"
    with primitive_forced("im2col"):
        assert choose_backward_primitive("polyphase", *case) == "im2col"
    with primitive_forced("winograd4"):  # refuses stride 2: the plan again
        assert choose_backward_primitive("polyphase", *case) == "polyphase"


@pytest.mark.parametrize("k, c, side, forward, backward", [
    (3, 128, 28, "polyphase", "gemm"), (3, 128, 30, "polyphase", "im2col"),
    (1, 256, 28, "im2col", "gemm"), (1, 256, 34, "im2col", "kn2row")])
def test_layer_backward_on_another_primitive_matches_the_reference(k, c, side, forward, backward):
    """Stride-2 layers at the backward rule's edges (14x14 = 196 output pixels for 3x3, 16x16 =
    256 for 1x1, and just past them), one image, few output channels to keep the reference quick."""
    rng = np.random.default_rng(5)
    layer = Conv2d(8, k, stride=2, padding=k // 2)
    layer.build((c, side, side), rng)
    x = rng.standard_normal((1, c, side, side)).astype(np.float32)
    y = layer.forward(x, train=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    assert (layer.ran, layer.ran_backward) == (forward, backward)
    ref_dx, ref_dW = naive_conv2d_backward(x, layer.params["W"], dy, 2, k // 2)
    assert rel_err(dx, ref_dx) < 1e-5
    assert rel_err(layer.grads["W"], ref_dW) < 1e-5


def test_kn2row_writes_every_element_of_a_pointwise_layers_data_gradient(monkeypatch):
    """Its dx starts uninitialised (np.empty_like); here that memory is NaN, which any element
    the products missed would carry into the result."""
    from npdc.kernels import conv_kn2row

    class NaNFilled:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def empty_like(a):
            return np.full_like(a, np.nan)

    monkeypatch.setattr(conv_kn2row, "np", NaNFilled())
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
    W = rng.standard_normal((4, 5, 1, 1)).astype(np.float32)
    dy = rng.standard_normal((3, 4, 6, 7)).astype(np.float32)
    dx, dW = conv_kn2row.backward(x, W, dy, 1, 0, 1, True)
    ref_dx, ref_dW = naive_conv2d_backward(x, W, dy)
    assert rel_err(dx, ref_dx) < 1e-6 and rel_err(dW, ref_dW) < 1e-6
