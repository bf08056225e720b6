"""Tests for the training loop: augmentation, seeded reproducibility, learning a separable
problem, masks during training, and the evaluation figures."""

import numpy as np
import pytest

from npdc.engine.resnet import build_net
from npdc.engine.train import augment, evaluate, evaluate_model, fit, model_figures, train_model

SPEC = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4,
        "num_classes": 2}


def _random_images(n=64, seed=0, shape=(1, 8, 8), classes=2):
    r = np.random.default_rng(seed)
    return r.integers(0, 256, (n, *shape)).astype(np.uint8), r.integers(0, classes, n)


def _brightness_problem(n, seed):
    """Two classes of 8x8 images told apart only by their mean brightness (85 vs 170, noise 30)."""
    r = np.random.default_rng(seed)
    y = r.permutation(np.arange(n) % 2)
    base = np.where(y[:, None, None, None] == 1, 170.0, 85.0)
    x = np.clip(base + r.normal(0, 30, (n, 1, 8, 8)), 0, 255).astype(np.uint8)
    return x, y


# -- augmentation --------------------------------------------------------------------------------
def test_augment_keeps_shape_and_dtype():
    """Crops and flips return an array like the input (uint8 stays uint8, float32 stays)."""
    x, _ = _random_images(10)
    for arr in (x, x.astype(np.float32)):
        out = augment(arr, np.random.default_rng(0), 2)
        assert out.shape == arr.shape and out.dtype == arr.dtype


def test_augment_without_padding_is_identity_or_flip():
    """pad=0 leaves only the flip: each image is itself or its mirror, and both occur."""
    x = np.random.default_rng(1).standard_normal((64, 2, 5, 5)).astype(np.float32)
    out = augment(x, np.random.default_rng(2), 0)
    same = [np.array_equal(out[i], x[i]) for i in range(64)]
    mirrored = [np.array_equal(out[i], x[i, :, :, ::-1]) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54


def test_augment_output_is_a_crop_of_the_padded_image():
    """With pad p each output is an HxW window of the zero-padded image, possibly mirrored,
    and different offsets are used across the batch."""
    p = 2
    x = np.random.default_rng(3).standard_normal((40, 1, 6, 6)) + 10.0
    out = augment(x, np.random.default_rng(4), p)
    offsets = set()
    for i in range(40):
        xp = np.pad(x[i], ((0, 0), (p, p), (p, p)))
        found = [(dy, dx, flip) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 for flip in (False, True)
                 if np.array_equal(out[i], (lambda c: c[:, :, ::-1] if flip else c)(
                     xp[:, dy:dy + 6, dx:dx + 6]))]
        assert found, f"image {i} is not a crop of its padded original"
        offsets.add(found[0][:2])
    assert len(offsets) > 5


def test_augment_is_seeded():
    """The same generator state gives the same augmentation."""
    x, _ = _random_images(16)
    a = augment(x, np.random.default_rng(5), 1)
    b = augment(x, np.random.default_rng(5), 1)
    np.testing.assert_array_equal(a, b)


# -- fit -----------------------------------------------------------------------------------------
def test_same_seed_same_model_different_seed_different():
    """Everything random comes from the seed: two runs with seed 3 give bit-identical weights,
    a run with seed 4 does not."""
    x, y = _random_images(64, seed=6)
    nets = []
    for seed in (3, 3, 4):
        net = build_net(SPEC, seed=0)
        fit(net, x, y, epochs=1, batch_size=16, seed=seed, progress=False)
        nets.append(net.state_dict())
    for path in nets[0]:
        np.testing.assert_array_equal(nets[0][path], nets[1][path], err_msg=path)
    assert any(not np.array_equal(nets[0][p], nets[2][p]) for p in nets[0])


def test_fit_history_and_input_untouched():
    """One history entry per epoch with finite loss and an accuracy in [0, 1]; x is not
    modified by augmentation; weights change."""
    x, y = _random_images(32, seed=7)
    before = x.copy()
    net = build_net(SPEC, seed=1)
    w0 = net.params()["conv1.W"].copy()
    history = fit(net, x, y, epochs=2, batch_size=16, seed=0, progress=False, schedule="step")
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert np.isfinite(h["loss"]) and 0 <= h["accuracy"] <= 1 and h["seconds"] >= 0
    np.testing.assert_array_equal(x, before)
    assert not np.array_equal(net.params()["conv1.W"], w0)


def test_training_learns_a_separable_problem():
    """Brightness classes: accuracy rises from the untrained net's to > 90 % on the training
    set and on fresh images from the same distribution."""
    x, y = _brightness_problem(128, seed=0)
    x_new, y_new = _brightness_problem(128, seed=1)
    net, history = train_model(SPEC, x, y, 8, seed=0, progress=False, batch_size=16, lr=0.05)
    assert len(history) == 8
    assert history[-1]["loss"] < history[0]["loss"]
    untrained = build_net(SPEC, seed=0)
    untrained.mean, untrained.std = net.mean, net.std
    before = evaluate(untrained, x, y)["accuracy"]
    after = evaluate(net, x, y)["accuracy"]
    assert after > 0.9 and after > before
    assert evaluate(net, x_new, y_new)["accuracy"] > 0.9


def test_masks_hold_during_training():
    """A mask passed to fit keeps the pruned weights at exactly zero through training."""
    x, y = _random_images(32, seed=8)
    net = build_net(SPEC, seed=2)
    W = net.params()["res3a_2a.W"]
    mask = np.random.default_rng(9).random(W.shape) < 0.5
    fit(net, x, y, epochs=2, batch_size=16, seed=0, progress=False, masks={"res3a_2a.W": mask})
    W = net.params()["res3a_2a.W"]
    assert np.all(W[~mask] == 0)
    assert np.count_nonzero(W[mask]) == mask.sum()


def test_train_model_sets_input_normalisation():
    """train_model stores the per-channel mean and population std of the images in [0, 1]."""
    x, y = _random_images(24, seed=10, shape=(3, 8, 8))
    spec = {"arch": "cifar-resnet20", "input_shape": [3, 8, 8], "num_classes": 2}
    net, history = train_model(spec, x, y, 1, seed=0, progress=False, batch_size=12)
    xf = x / 255.0
    np.testing.assert_allclose(net.mean, xf.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(net.std, xf.std(axis=(0, 2, 3)), rtol=1e-5)
    assert len(history) == 1 and net.spec["arch"] == "cifar-resnet20"


# -- evaluation ----------------------------------------------------------------------------------
def test_evaluate_matches_direct_computation():
    """Accuracy and mean cross-entropy over uneven batches equal the whole-set figures
    computed here from the logits in float64."""
    x, y = _random_images(23, seed=11, classes=3)
    net = build_net({**SPEC, "num_classes": 3}, seed=3)
    logits = net.predict(x).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    result = evaluate(net, x, y, batch_size=5)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))
    assert result["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(23), y])), rel=1e-5)


def test_evaluate_model_and_figures():
    """The report adds parameters, float32 bytes, MACs, image count and a positive rate."""
    x, y = _random_images(8, seed=12)
    net = build_net(SPEC, seed=4)
    r = evaluate_model(net, x, y, batch_size=4)
    assert r["params"] == net.num_params() and r["size_bytes"] == 4 * net.num_params()
    assert r["macs"] == net.macs() > 0
    assert r["images"] == 8 and r["images_per_s"] > 0
    assert set(model_figures(net)) == {"params", "size_bytes", "macs"}
    assert r["accuracy"] == evaluate(net, x, y)["accuracy"]
