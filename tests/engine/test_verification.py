"""Tests for verification accuracy (npdc.engine.verification): the 10-fold protocol on a case
worked out by hand (each fold's threshold from the other folds only, the tie rule), the exact
threshold search, ROC AUC and TAR at FAR against brute force, identical and shuffled pairs,
balanced seeded pairs, checks of bad pairs, and embeddings of a Net."""

import numpy as np
import pytest

from npdc.engine.resnet import build_net
from npdc.engine.verification import (Pairs, best_threshold, check_pairs, cosine_similarity,
                                      default_embedding, embed, make_pairs, protocol, roc_auc,
                                      tar_at_far, verify_net)
from npdc.errors import UserError
from tests.conftest import TINY_RESNET18

# three folds of two same and two different pairs: (similarity, same?)
FOLDS = [[(0.9, True), (0.8, True), (0.1, False), (0.2, False)],
         [(0.7, True), (0.6, True), (0.3, False), (0.65, False)],
         [(0.55, True), (0.5, True), (0.4, False), (0.0, False)]]


def _hand_case(rng):
    """Embeddings in the plane whose cosine similarities with image 0 are the FOLDS' values (at
    random lengths, so normalisation matters), and the pairs (0, k)."""
    sims = [s for fold in FOLDS for s, _ in fold]
    angles = np.arccos(sims)
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(0.5, 3.0, (len(sims), 1))
    embeddings = np.concatenate([[[2.0, 0.0]], vectors])
    pairs = Pairs(np.zeros(len(sims), np.int64), np.arange(1, len(sims) + 1),
                  np.array([same for fold in FOLDS for _, same in fold]),
                  np.repeat(np.arange(len(FOLDS)), 4))
    return embeddings, pairs


def test_protocol_on_a_case_worked_by_hand():
    """Fold 1 (0.9, 0.8 | 0.1, 0.2) is tested at the threshold of folds 2 and 3: sorted, their
    pairs are d 0.0 0.3 0.4 | s 0.5 0.55 0.6 | d 0.65 | s 0.7; cutting at 0.45 gets 7 of 8
    right, at 0.675 only 5: t = 0.45, fold 1 all right. Fold 2 is tested at the threshold of
    folds 1 and 3, which separate perfectly at 0.45: its 0.65 different pair is wrong (0.75) —
    on itself it would have chosen 0.675 and scored 1.0. Fold 3 from folds 1 and 2: cuts at
    0.45 and at 0.675 both get 7 of 8, the lower wins, and fold 3 scores 1.0 (0.5 at 0.675).
    Mean 11/12, sample std sqrt(((1/12)^2 * 2 + (1/6)^2) / 2); over all pairs 0.45 (11 of 12);
    AUC: of 36 same-different comparisons only 0.6, 0.55 and 0.5 lose to 0.65: 33/36; TAR at
    FAR 1e-3 with 6 different pairs accepts none of them: threshold 0.65, TAR 3/6."""
    embeddings, pairs = _hand_case(np.random.default_rng(0))
    sims = cosine_similarity(embeddings, pairs)
    np.testing.assert_allclose(sims, [s for fold in FOLDS for s, _ in fold], atol=1e-12)
    r = protocol(sims, pairs)
    np.testing.assert_allclose(r["fold_thresholds"], [0.45, 0.45, 0.45], atol=1e-12)
    np.testing.assert_allclose(r["fold_accuracies"], [1.0, 0.75, 1.0])
    assert r["verification_accuracy"] == pytest.approx(11 / 12)
    assert r["verification_std"] == pytest.approx(np.sqrt(((1 / 12) ** 2 * 2 + (1 / 6) ** 2) / 2))
    assert r["threshold"] == pytest.approx(0.45)
    assert r["auc"] == pytest.approx(33 / 36)
    assert r["tar_at_far_1e-3"] == pytest.approx(0.5)
    assert r["folds"] == 3 and r["pairs"] == 12


def test_a_fold_never_chooses_its_threshold_on_itself():
    """Moving fold 2's pairs (to same 0.95, 0.9, different 0.52, 0.53) leaves fold 2's threshold
    where folds 1 and 3 put it, and moves fold 1's: from folds 2 and 3 the best cut is now 0.54
    (7 of 8 right) instead of 0.45 (6 of 8)."""
    _, pairs = _hand_case(np.random.default_rng(1))
    sims = np.array([s for fold in FOLDS for s, _ in fold])
    moved = sims.copy()
    moved[pairs.fold == 1] = [0.95, 0.9, 0.52, 0.53]
    a, b = protocol(sims, pairs), protocol(moved, pairs)
    assert a["fold_thresholds"][1] == b["fold_thresholds"][1] == pytest.approx(0.45)
    assert b["fold_thresholds"][0] == pytest.approx(0.54)


def _brute_threshold(sims, same):
    """Every candidate (midpoints of distinct neighbours, and outside the range) by direct count."""
    values = np.unique(sims)
    candidates = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    accuracy = [((sims > t) == same).mean() for t in candidates]
    return candidates[int(np.argmax(accuracy))], max(accuracy)


@pytest.mark.parametrize("seed", range(6))
def test_best_threshold_is_the_best_candidate_ties_included(seed):
    """Against a count at every candidate, on similarities rounded to force ties."""
    rng = np.random.default_rng(seed)
    same = rng.random(80) < 0.5
    sims = np.round(np.where(same, 0.3, 0.0) + rng.normal(0, 0.3, 80), 1)
    expected, best = _brute_threshold(sims, same)
    t = best_threshold(sims, same)
    assert t == pytest.approx(expected)
    assert ((sims > t) == same).mean() == best


@pytest.mark.parametrize("seed", range(4))
def test_auc_is_the_pairwise_win_rate(seed):
    rng = np.random.default_rng(seed)
    same = rng.random(60) < 0.4
    sims = np.round(rng.normal(0, 1, 60) + same, 1)  # ties count a half
    s, d = sims[same], sims[~same]
    wins = (s[:, None] > d[None, :]).sum() + 0.5 * (s[:, None] == d[None, :]).sum()
    assert roc_auc(sims, same) == pytest.approx(wins / (len(s) * len(d)))


def test_tar_at_far_accepts_at_most_the_allowed_different_pairs():
    """2,500 different pairs at FAR 1e-3 allow 2 false accepts: the threshold is the third
    largest different similarity, and TAR counts the same pairs above it."""
    rng = np.random.default_rng(3)
    diff, same_sims = rng.normal(0, 1, 2500), rng.normal(2, 1, 500)
    sims = np.concatenate([same_sims, diff])
    same = np.arange(3000) < 500
    tar, t = tar_at_far(sims, same)
    assert t == np.sort(diff)[-3]
    assert (diff > t).sum() == 2
    assert tar == (same_sims > t).mean()


def test_identical_embeddings_for_same_pairs_give_accuracy_one():
    """Same pairs are an image and its copy (cosine 1), different pairs two random 64-d
    embeddings (cosine near 0): every fold is judged right."""
    rng = np.random.default_rng(4)
    embeddings = rng.normal(0, 1, (20, 64))
    embeddings = np.concatenate([embeddings, 3 * embeddings])  # copies, at another length
    first = np.concatenate([np.arange(20), rng.permutation(20)])
    second = np.concatenate([np.arange(20, 40), (first[20:] + 1 + rng.integers(0, 18, 20)) % 20])
    pairs = Pairs(first, second, np.arange(40) < 20, np.tile(np.arange(10), 4))
    r = protocol(cosine_similarity(embeddings, pairs), pairs)
    assert r["verification_accuracy"] == 1.0 and r["verification_std"] == 0.0
    assert r["auc"] == 1.0 and r["tar_at_far_1e-3"] == 1.0


def test_shuffled_labels_give_about_one_half():
    """6,000 pairs whose same/different flags are unrelated to their similarities: accuracy
    within 3 points of 0.5 (the spread of a fold's 600 coin flips is 2 points), AUC too."""
    rng = np.random.default_rng(5)
    pairs = make_pairs(np.arange(12000) % 10, 6000, seed=5)
    sims = rng.uniform(-1, 1, 6000)
    r = protocol(sims, pairs._replace(same=rng.permutation(pairs.same)))
    assert abs(r["verification_accuracy"] - 0.5) < 0.03
    assert abs(r["auc"] - 0.5) < 0.03


# -- pairs -------------------------------------------------------------------------------------------
def test_make_pairs_is_balanced_distinct_and_seeded():
    labels = np.random.default_rng(6).integers(0, 7, 900)
    pairs = make_pairs(labels, 600, seed=3)
    assert len(pairs.same) == 600 and pairs.folds == 10
    for f in range(10):
        kinds = pairs.same[pairs.fold == f]
        assert len(kinds) == 60 and kinds.sum() == 30
    assert ((labels[pairs.first] == labels[pairs.second]) == pairs.same).all()
    assert (pairs.first != pairs.second).all()
    keys = {(min(a, b), max(a, b)) for a, b in zip(pairs.first, pairs.second)}
    assert len(keys) == 600
    again, other = make_pairs(labels, 600, seed=3), make_pairs(labels, 600, seed=4)
    for a, b in zip(pairs, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(pairs.first, other.first)
    check_pairs(pairs, 900, labels)


@pytest.mark.parametrize("labels, n", [(np.arange(100) % 5, 610), (np.arange(100) % 5, 0),
                                       (np.zeros(100, int), 20), (np.arange(30), 20),
                                       (np.arange(12) % 2, 80)])
def test_make_pairs_refuses_what_cannot_be_drawn(labels, n):
    """Not a multiple of 2 x folds, no pairs, one class (no different pairs), one image per
    class (no same pairs), fewer possible pairs than asked."""
    with pytest.raises(UserError):
        make_pairs(labels, n)


@pytest.mark.parametrize("change, words", [
    (lambda p: p._replace(second=np.where(np.arange(len(p.same)) == 3, 50, p.second)), "out of range"),
    (lambda p: p._replace(first=np.where(np.arange(len(p.same)) == 2, -1, p.first)), "out of range"),
    (lambda p: p._replace(second=p.first.copy()), "with itself"),
    (lambda p: p._replace(same=np.where(p.fold == 4, True, p.same)), "fold 5 has no different"),
    (lambda p: p._replace(same=~p.same), "labelled"),
])
def test_check_pairs_refuses(change, words):
    labels = np.arange(50) % 5
    pairs = make_pairs(labels, 100, seed=0)
    with pytest.raises(UserError, match=words):
        check_pairs(change(pairs), 50, labels)


# -- embeddings of a Net ----------------------------------------------------------------------------------
def test_embed_is_the_kept_output_and_default_is_the_classifier_input(tiny_resnet18):
    net = tiny_resnet18
    x = np.random.default_rng(7).integers(0, 256, (9, 1, 6, 6)).astype(np.uint8)
    assert default_embedding(net) == "fc5_bn"
    whole = net.forward(net.preprocess(x), keep=("fc5",))[1]["fc5"]
    np.testing.assert_allclose(embed(net, x, "fc5", batch_size=4), whole, rtol=1e-6, atol=1e-6)
    assert default_embedding(build_net({"arch": "cifar-resnet20", "input_shape": [3, 6, 6],
                                        "num_classes": 3})) == "pool"
    with pytest.raises(UserError, match="no layer"):
        embed(net, x, "fc9")


def test_embeddings_that_are_not_finite_are_refused():
    _, pairs = _hand_case(np.random.default_rng(2))
    with pytest.raises(UserError, match="not finite"):
        protocol(np.full(12, np.nan), pairs)


def test_check_embedding_names_the_model_end():
    net = build_net(TINY_RESNET18, seed=0)
    with pytest.raises(UserError, match="fc6"):
        verify_net(net, np.zeros((4, 1, 6, 6), np.uint8),
                   Pairs(np.array([0, 1]), np.array([2, 3]), np.array([True, False]), np.array([0, 0])),
                   layer="fc7")
