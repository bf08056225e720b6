"""Net.zero_grad marks the gradients instead of writing zeros; the next backward stores each
layer's first gradient. Held arrays must then read exactly what zeroing and adding gave, and a
gradient no backward wrote must read as zero once anything reads it through the Net."""

import numpy as np

from npdc.engine.layers import Conv2d, Linear
from npdc.engine.losses import cross_entropy


def _step(net, x, y, zero):
    zero()
    _, d = cross_entropy(net.forward(x, train=True), y)
    net.backward(d)


def _eager(net):
    return lambda: [layer.zero_grad() for _, layer, _ in net.nodes]


def test_marked_gradients_are_the_bits_of_zeroed_ones(tiny_resnet18):
    """Arrays held from grads() (an optimizer's), full of stale values, read after one backward
    the same bits as after eager zeroing (adding to stored gradients: the layer test below)."""
    net = tiny_resnet18
    r = np.random.default_rng(0)
    x, y = r.standard_normal((3, 1, 6, 6)).astype(np.float32), r.integers(0, 3, 3)
    held = net.grads()
    _step(net, x, y, _eager(net))
    want = {k: g.copy() for k, g in held.items()}
    for g in held.values():
        g[...] = np.nan
    _step(net, x, y, net.zero_grad)
    for k, g in held.items():
        assert g.tobytes() == want[k].tobytes(), k
    assert all(not layer.unset_grads for layer in net.layers.values())


def test_grads_reads_zero_after_zero_grad_without_backward(tiny_resnet18):
    held = tiny_resnet18.grads()
    for g in held.values():
        g[...] = 1.0
    tiny_resnet18.zero_grad()
    assert all(not g.any() for g in tiny_resnet18.grads().values())
    assert all(not g.any() for g in held.values())


def test_layer_gradient_written_into_a_marked_array_or_added():
    """A conv (winograd4 writes dW into the marked array) and a linear layer, float32 and float64:
    marked, the stale values vanish; unmarked, the gradient adds; -0.0 comes out +0.0 either way."""
    r = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        for layer, x in ((Conv2d(8, 3, padding=1), r.standard_normal((2, 8, 5, 5))),
                         (Linear(4, bias=True), r.standard_normal((3, 6)))):
            layer.build(x.shape[1:], r)
            layer.astype(dtype)
            x = x.astype(dtype)
            y = layer.forward(x, True)
            dy = r.standard_normal(y.shape).astype(dtype)
            layer.backward(dy)
            once = {k: g.copy() for k, g in layer.grads.items()}
            for g in layer.grads.values():
                g[...] = 7.0
            layer.unset_grad()
            layer.forward(x, True)
            layer.backward(dy)
            for k, g in layer.grads.items():
                assert g.dtype == dtype and g.tobytes() == once[k].tobytes(), (layer, k)
            layer.forward(x, True)
            layer.backward(dy)
            for k, g in layer.grads.items():
                np.testing.assert_array_equal(g, once[k] + once[k])
    layer.unset_grad()
    layer.add_grad("b", -np.zeros(4))
    assert not np.signbit(layer.grads["b"]).any()
