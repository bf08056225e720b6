"""Tests for knowledge distillation (npdc.compress.distill): the KD losses (KL with temperature,
L2, cosine) against direct formulas and finite differences, the Distillation objective (hard
labels only equals plain cross-entropy, matching an intermediate layer, unlabeled data, bad
settings) and prune_and_retrain (teacher untouched, masks kept, gradual pruning to a target)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.compress.agp import GradualPruner
from npdc.compress.distill import Distillation, cosine_loss, kl_loss, l2_loss, prune_and_retrain
from npdc.compress.prune import percentage_masks, prunable_layers
from npdc.engine.gradcheck import compare
from npdc.engine.losses import cross_entropy
from npdc.engine.resnet import build_net, clone_net
from npdc.engine.train import fit
from npdc.errors import UserError

TINY = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4,
        "num_classes": 3}


# -- independent references ----------------------------------------------------------------------
def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl_direct(student, teacher, tau):
    """tau^2 * mean over rows of sum_k p_k log(p_k / q_k), p = softmax(t/tau), q = softmax(s/tau)."""
    p, q = _softmax(teacher / tau), _softmax(student / tau)
    return tau * tau * float(np.mean(np.sum(p * np.log(p / q), axis=1)))


def _ce_direct(logits, labels):
    p = _softmax(logits)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def _pair(n=5, k=6, seed=0, scale=2.0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, k)) * scale, r.standard_normal((n, k)) * scale


def _images(n=16, seed=0):
    """Normalised float inputs (what an objective receives from fit) and labels."""
    r = np.random.default_rng(seed)
    return r.standard_normal((n, 1, 8, 8)).astype(np.float32), r.integers(0, 3, n)


def _nets(dtype=np.float32, seed=0):
    """(student, teacher): different random tiny ResNets in train-ready state."""
    student, teacher = build_net(TINY, seed=seed), build_net(TINY, seed=seed + 100)
    return student.astype(dtype), teacher.astype(dtype)


# -- the losses ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0, 10.0])
def test_kl_gradient_passes_gradcheck(tau):
    s, t = _pair(seed=1)
    _, grad = kl_loss(s, t, tau)
    err, _ = compare(lambda: kl_loss(s, t, tau)[0], s, grad)
    assert err < 1e-5


@pytest.mark.parametrize("loss", [l2_loss, cosine_loss])
def test_l2_and_cosine_gradients_pass_gradcheck(loss):
    s, t = _pair(seed=2)
    _, grad = loss(s, t)
    err, _ = compare(lambda: loss(s, t)[0], s, grad)
    assert err < 1e-5


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0, 8.0])
def test_kl_equals_tau_squared_times_direct_kl(tau):
    s, t = _pair(seed=3)
    assert kl_loss(s, t, tau)[0] == pytest.approx(_kl_direct(s, t, tau), rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tau=st.floats(0.25, 20.0), scale=st.floats(0.1, 10.0))
def test_kl_zero_for_equal_outputs_positive_otherwise(seed, tau, scale):
    """KL(T || S) = 0 (with a zero gradient) when student == teacher, > 0 when the softened
    distributions differ."""
    s, t = _pair(4, 5, seed, scale)
    loss, grad = kl_loss(t.copy(), t, tau)
    assert loss == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    assert kl_loss(s, t, tau)[0] > 0


def test_l2_and_cosine_values():
    """L2 = 0.5 * mean_n ||s - t||^2; cosine = mean_n (1 - cos); both 0 for equal outputs."""
    s, t = _pair(seed=5)
    assert l2_loss(s, t)[0] == pytest.approx(0.5 * np.mean(np.sum((s - t) ** 2, axis=1)), rel=1e-12)
    cos = np.array([s[i] @ t[i] / (np.linalg.norm(s[i]) * np.linalg.norm(t[i])) for i in range(len(s))])
    assert cosine_loss(s, t)[0] == pytest.approx(np.mean(1 - cos), rel=1e-10)
    assert l2_loss(t, t)[0] == 0.0
    assert cosine_loss(3.0 * t, t)[0] == pytest.approx(0.0, abs=1e-12)


def test_kl_with_one_hot_teacher_at_tau_one_is_cross_entropy():
    """A teacher whose logits are 1e4 * onehot(y) is a hard label: KL at tau = 1 is the student's
    cross-entropy, value and gradient."""
    s, _ = _pair(6, 4, seed=7)
    y = np.array([0, 3, 1, 1, 2, 0])
    teacher = 1e4 * np.eye(4)[y]
    loss, grad = kl_loss(s, teacher, 1.0)
    assert loss == pytest.approx(_ce_direct(s, y), rel=1e-9)
    np.testing.assert_allclose(grad, (_softmax(s) - np.eye(4)[y]) / 6, rtol=1e-9, atol=1e-12)
    assert loss == pytest.approx(cross_entropy(s, y)[0], rel=1e-9)


# -- the Distillation objective ------------------------------------------------------------------
def test_hard_labels_only_at_tau_one_equals_plain_cross_entropy():
    """Distillation(teacher, 'kl', tau=1, soft_weight=0, hard_weight=1) gives exactly the loss
    and parameter gradients of cross-entropy training on the same batch."""
    student, teacher = _nets()
    twin = clone_net(student)
    x, y = _images()
    student.zero_grad()
    logits_a, terms = Distillation(teacher, "kl", tau=1.0, soft_weight=0.0, hard_weight=1.0)(student, x, y)
    twin.zero_grad()
    logits_b = twin.forward(x, train=True)
    ce, dlogits = cross_entropy(logits_b, y)
    twin.backward(dlogits)
    np.testing.assert_array_equal(logits_a, logits_b)
    assert terms["loss"] == ce and terms["ce"] == ce
    assert terms["loss"] == pytest.approx(_ce_direct(logits_b, y), rel=1e-5)
    ga, gb = student.grads(), twin.grads()
    for path in gb:
        np.testing.assert_array_equal(ga[path], gb[path], err_msg=path)
    assert any(np.abs(g).max() > 0 for g in gb.values())


@pytest.mark.parametrize("kind, tau", [("kl", 2.0), ("l2", None), ("cosine", None)])
def test_distil_on_fc5_matches_hand_computation(kind, tau):
    """on='fc5' (plus a hard-label term): the gradients equal a backward pass seeded by hand with
    0.3 * dCE at the logits and 0.5 * dKD at the fc5 embedding, the KD gradient written here."""
    student, teacher = _nets(np.float64, seed=1)
    twin = clone_net(student).astype(np.float64)
    x, y = _images(12, 1)
    x = x.astype(np.float64)
    objective = Distillation(teacher, kind, tau=tau or 4.0, soft_weight=0.5, hard_weight=0.3, on="fc5")
    student.zero_grad()
    _, terms = objective(student, x, y)

    target = teacher.forward(x, keep=("fc5",))[1]["fc5"]
    twin.zero_grad()
    logits, kept = twin.forward(x, train=True, keep=("fc5",))
    emb, n = kept["fc5"], len(x)
    if kind == "kl":
        kd = _kl_direct(emb, target, tau)
        d_kd = tau * (_softmax(emb / tau) - _softmax(target / tau)) / n
    elif kind == "l2":
        kd = 0.5 * float(np.sum((emb - target) ** 2)) / n
        d_kd = (emb - target) / n
    else:
        ns, nt = np.linalg.norm(emb, axis=1, keepdims=True), np.linalg.norm(target, axis=1, keepdims=True)
        cos = np.sum(emb * target, axis=1, keepdims=True) / (ns * nt)
        kd = float(np.mean(1 - cos))
        d_kd = -(target / (ns * nt) - cos * emb / ns**2) / n
    d_ce = (_softmax(logits) - np.eye(3)[y]) / n
    twin.backward(0.3 * d_ce, extra={"fc5": 0.5 * d_kd})
    assert terms["loss"] == pytest.approx(0.5 * kd + 0.3 * _ce_direct(logits, y), rel=1e-10)
    ga, gb = student.grads(), twin.grads()
    for path in gb:
        np.testing.assert_allclose(ga[path], gb[path], rtol=1e-9, atol=1e-12, err_msg=path)
    assert np.abs(gb["res3a_2a.W"]).max() > 0


def test_distillation_gradient_passes_gradcheck():
    """The student's parameter gradients under the KD objective on fc5 agree with finite
    differences of the objective's loss (float64, ReLU kinks skipped)."""
    student, teacher = _nets(np.float64, seed=2)
    x, y = _images(8, 2)
    x = x.astype(np.float64)
    objective = Distillation(teacher, "kl", tau=2.0, soft_weight=1.0, hard_weight=0.5, on="fc5")
    student.zero_grad()
    objective(student, x, y)
    analytic = {k: g.copy() for k, g in student.grads().items()}
    params = student.params()

    def loss():
        return objective(student, x, y)[1]["loss"]

    for path in ("fc5.W", "fc6.W", "res5b_2a.W", "conv1_bn.gamma"):
        err, _ = compare(loss, params[path], analytic[path], kinks=True, max_entries=12)
        assert err < 1e-5, path


@pytest.mark.parametrize("layer_kind", ["l2", "cosine"])
def test_layer_term_beside_the_logit_kl_passes_gradcheck(layer_kind):
    """KL on the logits plus 0.7 x (L2 or cosine distance) on fc5, and labels: the student's
    parameter gradients agree with finite differences of the total loss (float64, ReLU kinks
    skipped), fc5's own weights and a conv's before it included."""
    student, teacher = _nets(np.float64, seed=3)  # seed 4 leaves res5b_2a dead: all at the noise floor
    x, y = _images(8, 3)
    x = x.astype(np.float64)
    objective = Distillation(teacher, "kl", tau=2.0, hard_weight=0.5, layer="fc5",
                             layer_kind=layer_kind, layer_weight=0.7)
    student.zero_grad()
    _, terms = objective(student, x, y)
    assert set(terms) == {"kd", "kd_layer", "ce", "loss"} and terms["kd_layer"] > 0
    analytic = {k: g.copy() for k, g in student.grads().items()}
    params = student.params()

    def loss():
        return objective(student, x, y)[1]["loss"]

    for path in ("fc5.W", "fc5_bn.gamma", "fc6.W", "res5b_2a.W", "conv1.W"):
        err, _ = compare(loss, params[path], analytic[path], kinks=True, max_entries=12)
        assert err < 1e-5, path


@pytest.mark.parametrize("layer_kind", ["l2", "cosine"])
def test_layer_term_is_the_sum_of_the_two_losses(layer_kind):
    """The objective with a layer term equals, in loss and gradients, a backward pass seeded with
    the logit KL at the logits and 0.7 x the layer loss's gradient at fc5."""
    student, teacher = _nets(np.float64, seed=5)
    twin = clone_net(student).astype(np.float64)
    x, _ = _images(10, 5)
    x = x.astype(np.float64)
    student.zero_grad()
    _, terms = Distillation(teacher, "kl", tau=3.0, layer="fc5", layer_kind=layer_kind,
                            layer_weight=0.7)(student, x, None)
    t_logits, t_kept = teacher.forward(x, keep=("fc5",))
    twin.zero_grad()
    logits, kept = twin.forward(x, train=True, keep=("fc5",))
    kd, d_kd = kl_loss(logits, t_logits, 3.0)
    layer_loss, d_layer = (l2_loss if layer_kind == "l2" else cosine_loss)(kept["fc5"], t_kept["fc5"])
    twin.backward(d_kd, extra={"fc5": 0.7 * d_layer})
    assert terms["kd"] == pytest.approx(kd) and terms["kd_layer"] == pytest.approx(layer_loss)
    assert terms["loss"] == pytest.approx(kd + 0.7 * layer_loss, rel=1e-12)
    ga, gb = student.grads(), twin.grads()
    for path in gb:
        np.testing.assert_allclose(ga[path], gb[path], rtol=1e-9, atol=1e-12, err_msg=path)


def test_kd_layer_alone_retrains_without_labels():
    """kd=None with kd_layer: only the fc5 term (no labels needed); the student's fc5 moves
    towards the teacher's in cosine distance."""
    teacher = build_net(TINY, seed=12)
    x, _ = _labelled_images(32, 12)
    masks = percentage_masks(teacher, 60)
    objective = Distillation(teacher, "kl", soft_weight=0.0, layer="fc5")
    start = clone_net(teacher)
    apply = __import__("npdc.compress.prune", fromlist=["apply_masks"]).apply_masks
    apply(start, masks)
    xn = start.preprocess(x)
    before = objective(start, xn, None)[1]["kd_layer"]
    student, _, history = prune_and_retrain(teacher, x, None, masks, kd=None, kd_layer="fc5",
                                            epochs=3, batch_size=16, lr=0.05, progress=False)
    assert set(history[0]) >= {"kd_layer", "loss"} and "kd" not in history[0]
    assert objective(student, xn, None)[1]["kd_layer"] < before


def test_unlabeled_data():
    """y=None works when hard_weight=0 (soft targets only) and is a UserError when
    hard_weight > 0; fit runs a whole unlabeled epoch with it."""
    student, teacher = _nets(seed=3)
    x, _ = _images(8, 3)
    logits, terms = Distillation(teacher, "kl")(student, x, None)
    assert logits.shape == (8, 3) and "ce" not in terms and terms["loss"] == terms["kd"] > 0
    with pytest.raises(UserError):
        Distillation(teacher, "kl", hard_weight=0.5)(student, x, None)
    r = np.random.default_rng(4)
    images = r.integers(0, 256, (16, 1, 8, 8)).astype(np.uint8)
    history = fit(student, images, None, 1, batch_size=8, objective=Distillation(teacher, "l2"),
                  progress=False)
    assert "kd" in history[0] and "accuracy" not in history[0]


@pytest.mark.parametrize("kwargs", [{"kind": "kld"}, {"tau": 0.0}, {"tau": -1.0}, {"on": "fc7"},
                                    {"on": "res9a_2a"}, {"layer": "fc7"}, {"layer": "fc5", "on": "fc5"},
                                    {"layer": "fc5", "layer_kind": "dot"}])
def test_bad_settings_are_user_errors(kwargs):
    _, teacher = _nets()
    with pytest.raises(UserError):
        Distillation(teacher, **{"kind": "kl", **kwargs})


# -- prune_and_retrain -----------------------------------------------------------------------------
def _labelled_images(n=32, seed=5):
    r = np.random.default_rng(seed)
    return r.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8), r.integers(0, 3, n)


def test_prune_and_retrain_keeps_teacher_and_masks():
    """The teacher is bit-identical afterwards; the student's pruned weights are 0 and its kept
    weights moved."""
    teacher = build_net(TINY, seed=6)
    before = teacher.state_dict()
    x, y = _labelled_images()
    masks = percentage_masks(teacher, 50)
    student, out_masks, history = prune_and_retrain(teacher, x, y, masks, epochs=2, batch_size=16,
                                                    lr=0.05, progress=False, hard_weight=0.5)
    after = teacher.state_dict()
    assert set(after) == set(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert student is not teacher and len(history) == 2
    params = student.params()
    for path, keep in masks.items():
        np.testing.assert_array_equal(out_masks[path], keep)
        assert (params[path][~keep] == 0).all(), path
        assert (params[path][keep] != before[path][keep]).mean() > 0.9, path


@pytest.mark.parametrize("per_layer", [True, False])
def test_prune_and_retrain_gradual_reaches_target(per_layer):
    """With a GradualPruner the returned masks reach the target and the student obeys them."""
    teacher = build_net(TINY, seed=7)
    x, y = _labelled_images(48, 8)
    total = 2 * 48 // 16

    def gradual(net):
        return GradualPruner(net, 0.6, total, per_layer=per_layer, exclude=("conv1",))

    student, masks, _ = prune_and_retrain(teacher, x, y, gradual=gradual, epochs=2, batch_size=16,
                                          lr=0.05, progress=False)
    names = [n for n in prunable_layers(teacher) if n != "conv1"]
    assert masks["conv1.W"].all()
    size = sum(masks[f"{n}.W"].size for n in names)
    dropped = sum(int((~masks[f"{n}.W"]).sum()) for n in names)
    if per_layer:
        for n in names:
            assert int((~masks[f"{n}.W"]).sum()) == math.floor(0.6 * masks[f"{n}.W"].size + 1e-9)
    else:
        assert 0 <= dropped - math.floor(0.6 * size + 1e-9) <= 2  # ties of trained float32 weights
    params = student.params()
    for path, keep in masks.items():
        assert (params[path][~keep] == 0).all()
    assert np.count_nonzero(teacher.layers["fc5"].params["W"]) == teacher.layers["fc5"].params["W"].size


def test_prune_and_retrain_gradual_without_epochs_jumps_to_target():
    """epochs=0 with a schedule: no training, the masks of the schedule's end are applied."""
    teacher = build_net(TINY, seed=9)
    x, y = _labelled_images(16, 9)
    student, masks, history = prune_and_retrain(
        teacher, x, y, gradual=lambda net: GradualPruner(net, 0.5, 10), epochs=0, progress=False)
    assert history == []
    for path, keep in masks.items():
        assert int((~keep).sum()) == keep.size // 2
        assert (student.params()[path][~keep] == 0).all()


def test_prune_and_retrain_fixed_masks_without_epochs():
    """epochs=0 with fixed masks: the student is the teacher with exactly the masked weights
    zeroed (no retraining), the teacher keeps its weights."""
    teacher = build_net(TINY, seed=11)
    x, y = _labelled_images(16, 11)
    masks = percentage_masks(teacher, 40)
    student, out_masks, history = prune_and_retrain(teacher, x, y, masks, epochs=0, progress=False)
    assert history == [] and student is not teacher
    t_params, s_params = teacher.params(), student.params()
    for path, W in t_params.items():
        expected = W * masks[path] if path in masks else W
        np.testing.assert_array_equal(s_params[path], expected, err_msg=path)
    assert all(np.count_nonzero(t_params[p]) == t_params[p].size for p in masks)


def test_retraining_without_kd_needs_labels():
    teacher = build_net(TINY, seed=10)
    x, _ = _labelled_images(16, 10)
    with pytest.raises(UserError):
        prune_and_retrain(teacher, x, None, percentage_masks(teacher, 30), kd=None, epochs=1,
                          batch_size=8, progress=False)


# -- the teacher's outputs computed once ------------------------------------------------------------
@pytest.mark.parametrize("layer", [None, "fc5"])
def test_cached_teacher_outputs_train_as_the_per_batch_teacher_does(layer):
    """fit with the teacher's outputs computed once (outputs_of, fit's targets) gives the model
    that the per-batch teacher gives on the same unaugmented images (float64: the teacher's
    batches differ, its outputs do not), and runs the teacher over the images once, not once
    per batch and epoch."""
    student, teacher = _nets(np.float64, seed=21)
    x, y = _labelled_images(48, 21)
    objective = Distillation(teacher, "kl", hard_weight=0.5, layer=layer)
    calls = []
    forward = teacher.forward
    teacher.forward = lambda *a, **k: calls.append(len(a[0])) or forward(*a, **k)
    targets = objective.outputs_of(x, batch_size=32)
    assert set(targets) == {"logits"} | ({layer} if layer else set())
    assert calls == [32, 16] and all(len(v) == len(x) for v in targets.values())
    a, b = clone_net(student), clone_net(student)
    fit(a, x, y, 2, batch_size=8, lr=0.05, objective=objective, targets=targets, progress=False, seed=3)
    assert calls == [32, 16]
    fit(b, x, y, 2, batch_size=8, lr=0.05, objective=objective, augment_pad=0, progress=False, seed=3)
    assert len(calls) == 2 + 2 * 6
    moved = False
    for path, value in a.params().items():
        np.testing.assert_allclose(value, b.params()[path], rtol=1e-9, atol=1e-12, err_msg=path)
        moved |= not np.array_equal(value, student.params()[path])
    assert moved


def test_cached_targets_refuse_augmentation():
    """Outputs of the stored images cannot stand for crops and flips of them."""
    student, teacher = _nets(seed=22)
    x, y = _labelled_images(16, 22)
    objective = Distillation(teacher, "kl")
    with pytest.raises(ValueError, match="unaugmented"):
        fit(student, x, y, 1, batch_size=8, objective=objective, targets=objective.outputs_of(x),
            augment_pad=2, progress=False)


def test_prune_and_retrain_without_augmentation_uses_cached_outputs():
    """augment=False: the student matches a run on the same images with fit's augmentation off
    and the teacher asked per batch."""
    teacher = build_net(TINY, seed=23).astype(np.float64)
    x, y = _labelled_images(32, 23)
    masks = percentage_masks(teacher, 50)
    a, _, _ = prune_and_retrain(teacher, x, y, masks, epochs=1, batch_size=16, progress=False,
                                augment=False, seed=1)
    b, _, _ = prune_and_retrain(teacher, x, y, masks, epochs=1, batch_size=16, progress=False,
                                augment_pad=0, seed=1)
    c, _, _ = prune_and_retrain(teacher, x, y, masks, epochs=1, batch_size=16, progress=False, seed=1)
    for path, value in a.params().items():
        np.testing.assert_allclose(value, b.params()[path], rtol=1e-9, atol=1e-12, err_msg=path)
    assert any(not np.allclose(v, c.params()[p]) for p, v in a.params().items())
