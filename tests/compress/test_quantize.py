"""Quantizers: the linear formula, nearest assignment, Lloyd's k-means and the exact 1-D DP."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.compress.quantize import (assign, kmeans, linear_quantize, optimal_kmeans, quantize_weights,
                                    squared_error)
from npdc.errors import UserError


def brute_force_error(values, k):
    """Smallest squared error over every split of the sorted values into k runs."""
    v = np.sort(values)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(v)), k - 1):
        bounds = [0, *cuts, len(v)]
        err = sum(((v[a:b] - v[a:b].mean()) ** 2).sum() for a, b in zip(bounds, bounds[1:]))
        best = min(best, err)
    return best


def test_linear_quantize_follows_the_min_max_formula():
    w = np.array([-1.0, -0.2, 0.0, 0.35, 1.0])
    codes, codebook = linear_quantize(w, 3)
    step = 2.0 / 7
    np.testing.assert_array_equal(codes, np.rint((w + 1.0) / step).astype(int))
    np.testing.assert_allclose(codebook, -1.0 + step * np.arange(8), rtol=1e-6)
    assert codes.min() == 0 and codes.max() == 7


def test_linear_quantize_error_is_at_most_half_a_step():
    w = np.random.default_rng(0).standard_normal(1000)
    codes, codebook = linear_quantize(w, 8)
    step = (w.max() - w.min()) / 255
    assert np.abs(codebook[codes] - w).max() <= step / 2 + 1e-6


def test_assign_picks_the_nearest_centroid_of_an_unsorted_codebook():
    codebook = np.array([0.5, -1.0, 2.0])
    w = np.array([-3.0, -0.3, 0.2, 1.2, 1.3, 5.0])
    expected = np.abs(w[:, None] - codebook[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(assign(w, codebook), expected)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_is_a_fixed_point_of_lloyd(init):
    w = np.random.default_rng(1).laplace(size=2000)
    c = kmeans(w, 8, init=init, iters=200).astype(np.float64)
    idx = assign(w, c)
    for j in range(8):
        if np.any(idx == j):
            assert c[j] == pytest.approx(w[idx == j].mean(), rel=1e-4, abs=1e-6)


def test_unknown_init_is_a_user_error():
    with pytest.raises(UserError, match="initialisation"):
        kmeans(np.ones(5), 2, init="bogus")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=2, max_size=9),
       st.integers(1, 4))
def test_optimal_kmeans_matches_brute_force(values, k):
    v = np.array(values, np.float64)
    k = min(k, len(np.unique(v)))
    err = squared_error(v, optimal_kmeans(v, k).astype(np.float64))
    assert err <= brute_force_error(v, k) * (1 + 1e-5) + 1e-6


def test_optimal_never_worse_than_lloyd():
    w = np.random.default_rng(2).laplace(size=20000) * 0.05
    for k in (3, 7, 15):
        assert squared_error(w, optimal_kmeans(w, k)) <= squared_error(w, kmeans(w, k)) * (1 + 1e-6)


def test_optimal_with_few_distinct_values_is_exact():
    w = np.array([1.0, 1.0, 3.0, 3.0, 3.0])
    assert squared_error(w, optimal_kmeans(w, 4)) == 0.0


@pytest.mark.parametrize("method", ["linear", "kmeans", "optimal"])
def test_pruned_layer_reserves_a_code_for_zero(method):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((8, 4, 3, 3))
    mask = rng.random(W.shape) > 0.6
    idx, codebook = quantize_weights(W * mask, 4, method, mask)
    assert codebook.shape == (15,) and idx.shape == (mask.sum(),)
    assert idx.min() >= 0 and idx.max() < 15
    dense_idx, dense_codebook = quantize_weights(W, 4, method)
    assert dense_codebook.shape == (16,) and dense_idx.shape == (W.size,)


def test_quantize_weights_rejects_bad_settings():
    with pytest.raises(UserError):
        quantize_weights(np.ones(4), 0)
    with pytest.raises(UserError):
        quantize_weights(np.ones(4), 4, "bogus")
    with pytest.raises(UserError):
        quantize_weights(np.ones(4), 17)


def test_centroid_sgd_moves_each_centroid_by_the_sum_of_its_members_gradients():
    from functools import partial

    from npdc.compress.quantize import CentroidSGD, QuantizedLayer

    rng = np.random.default_rng(4)
    W = rng.standard_normal((3, 4))
    mask = rng.random(W.shape) > 0.3
    idx, codebook = quantize_weights(W * mask, 2, "kmeans", mask)
    b = rng.standard_normal(3)
    params = {"fc.W": W.copy(), "fc.b": b.copy()}
    grads = {"fc.W": rng.standard_normal(W.shape), "fc.b": rng.standard_normal(3)}
    opt = partial(CentroidSGD, shared={"fc.W": QuantizedLayer.from_assign(idx, codebook, mask)})(
        params, grads, 0.1, 0.0, False, 0.0)
    # constructing it snaps the weights onto the codebook, zeros where pruned
    np.testing.assert_allclose(params["fc.W"][mask], codebook[idx], rtol=1e-6)
    assert np.all(params["fc.W"][~mask] == 0)
    opt.step()
    member_sums = np.array([grads["fc.W"][mask][idx == j].sum() for j in range(len(codebook))])
    expected = codebook.astype(np.float64) - 0.1 * member_sums
    np.testing.assert_allclose(opt.codebooks()["fc.W"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["fc.W"][mask], expected[idx], rtol=1e-5, atol=1e-6)
    assert np.all(params["fc.W"][~mask] == 0)
    np.testing.assert_allclose(params["fc.b"], b - 0.1 * grads["fc.b"])


def test_trained_quantization_in_fit_keeps_sharing_and_zeros():
    from functools import partial

    from npdc.compress.quantize import CentroidSGD, QuantizedLayer
    from npdc.engine.resnet import build_net
    from npdc.engine.train import fit

    net = build_net({"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4,
                     "num_classes": 3})
    W = net.layers["fc5"].params["W"]
    mask = np.abs(W) > np.std(W) * 0.5
    idx, codebook = quantize_weights(W * mask, 3, "kmeans", mask)
    before = codebook.copy()
    rng = np.random.default_rng(5)
    x = (rng.random((32, 1, 8, 8)) * 255).astype(np.uint8)
    y = rng.integers(0, 3, 32)
    fit(net, x, y, 1, batch_size=8, lr=0.05, progress=False,
        optimizer=partial(CentroidSGD, shared={"fc5.W": QuantizedLayer.from_assign(idx, codebook, mask)}))
    W = net.layers["fc5"].params["W"]
    assert np.all(W[~mask] == 0)
    assert len(np.unique(W[mask])) <= len(codebook)
    assert not np.allclose(W[mask], before[idx])  # the centroids did move


def _shared_linear(seed=6, bits=2):
    """A float64 Linear(5 -> 3) whose weights are k-means quantized (about 30 % pruned), a batch
    and its labels: (layer, x, labels, QuantizedLayer)."""
    from npdc.compress.quantize import QuantizedLayer
    from npdc.engine.layers.linear import Linear

    rng = np.random.default_rng(seed)
    layer = Linear(3)
    layer.build((5,), rng)
    layer.astype(np.float64)
    layer.params["b"][...] = rng.standard_normal(3)
    W = layer.params["W"]
    mask = rng.random(W.shape) > 0.3
    idx, codebook = quantize_weights(W * mask, bits, "kmeans", mask)
    return layer, rng.standard_normal((7, 5)), rng.integers(0, 3, 7), QuantizedLayer.from_assign(idx, codebook, mask)


def test_centroid_step_is_the_finite_difference_derivative_of_the_loss():
    """float64: moving centroid j (all its member weights with it) changes the cross-entropy of a
    quantized Linear at the rate CentroidSGD's step uses: with lr 1 and no momentum the centroid
    moves by exactly -d loss / d centroid, compared with central differences."""
    from npdc.compress.quantize import CentroidSGD
    from npdc.engine.gradcheck import compare
    from npdc.engine.losses import cross_entropy

    layer, x, labels, q = _shared_linear()
    mask, idx = q.mask(layer.params["W"].shape), q.assign
    assert np.bincount(idx).max() > 1  # a centroid with several members: sum and mean differ
    params = {"fc.W": layer.params["W"], "fc.b": layer.params["b"]}
    grads = {"fc.W": layer.grads["W"], "fc.b": layer.grads["b"]}
    opt = CentroidSGD(params, grads, 1.0, 0.0, False, 0.0, shared={"fc.W": q})
    centroids = np.zeros(len(q.codebook))
    for j in range(len(centroids)):  # the float64 centroids the weights were snapped onto
        centroids[j] = params["fc.W"][mask][idx == j][0]

    def loss():
        layer.params["W"][mask] = centroids[idx]
        return cross_entropy(layer.forward(x, False), labels)[0]

    layer.zero_grad()
    layer.backward(cross_entropy(layer.forward(x, True), labels)[1])
    before, bias = params["fc.W"][mask].copy(), params["fc.b"].copy()
    opt.step()
    params["fc.b"][...] = bias  # the bias stepped too: differentiate at the point the step saw
    moved = before - params["fc.W"][mask]  # = lr * the centroid gradient, per member weight
    step = np.array([moved[idx == j][0] for j in range(len(centroids))])
    for j in range(len(centroids)):
        np.testing.assert_array_equal(moved[idx == j], step[j])  # members move together
    err, skipped = compare(loss, centroids, step)
    assert err < 1e-7 and skipped == 0
    assert np.abs(step).max() > 1e-3  # not a vacuous zero gradient


def test_centroid_sgd_nesterov_momentum_matches_a_hand_computed_reference():
    """The production setting (momentum 0.9, Nesterov, weight decay on the other weights) over three
    steps: v <- 0.9 v + g, c <- c - lr (g + 0.9 v) per centroid with g the sum of its members'
    gradients, written out step by step; no weight decay on the centroids, pruned weights stay
    zero whatever their gradient, the bias follows plain Nesterov SGD."""
    from npdc.compress.quantize import CentroidSGD

    layer, _, _, q = _shared_linear(seed=7)
    W, b = layer.params["W"], layer.params["b"]
    mask, idx = q.mask(W.shape), q.assign
    params, grads = {"fc.W": W, "fc.b": b}, {"fc.W": layer.grads["W"], "fc.b": layer.grads["b"]}
    lr, m = 0.05, 0.9
    opt = CentroidSGD(params, grads, lr, m, True, 0.1, shared={"fc.W": q})
    c0 = np.array([W[mask][idx == j][0] for j in range(len(q.codebook))])
    b0 = b.copy()
    rng = np.random.default_rng(8)
    gW = [rng.standard_normal(W.shape) * 10 for _ in range(3)]  # large where pruned too
    gb = [rng.standard_normal(3) for _ in range(3)]
    for t in range(3):
        grads["fc.W"][...], grads["fc.b"][...] = gW[t], gb[t]
        opt.step()
    members = [[k for k in range(len(idx)) if idx[k] == j] for j in range(len(c0))]
    g = [np.array([G[mask][members_j].sum() for members_j in members]) for G in gW]
    v1 = g[0]
    c1 = c0 - lr * (g[0] + m * v1)
    v2 = m * v1 + g[1]
    c2 = c1 - lr * (g[1] + m * v2)
    v3 = m * v2 + g[2]
    c3 = c2 - lr * (g[2] + m * v3)
    np.testing.assert_allclose(W[mask], c3[idx], rtol=1e-12, atol=1e-12)
    assert np.all(W[~mask] == 0)
    np.testing.assert_allclose(opt.codebooks()["fc.W"], c3.astype(np.float32), rtol=1e-6)
    u1 = gb[0]
    b1 = b0 - lr * (gb[0] + m * u1)
    u2 = m * u1 + gb[1]
    b2 = b1 - lr * (gb[1] + m * u2)
    u3 = m * u2 + gb[2]
    np.testing.assert_allclose(b, b2 - lr * (gb[2] + m * u3), rtol=1e-12)
