"""Tests for the search's metrics (npdc.engine.metrics): each scores what its own function
measures, counts its units, survives pickling (a cluster's jobs get it), draws subsets from the
first images only, and the pairs of a held-out split are balanced whole folds."""

import pickle

import numpy as np
import pytest

from npdc.engine.metrics import PairVerification, TopOne, judged, search_metric, validation_pairs
from npdc.engine.resnet import build_net
from npdc.engine.train import evaluate
from npdc.engine.verification import make_pairs, verify_net
from npdc.errors import UserError
from tests.conftest import TINY_RESNET18


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    net = build_net(TINY_RESNET18, seed=1)
    x = rng.uniform(0, 255, (60, 1, 6, 6)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    return net, x, y


def test_top_one_scores_top_one_accuracy_and_counts_images(problem):
    net, x, y = problem
    metric = TopOne(x, y)
    assert metric.score(net) == evaluate(net, x, y)["accuracy"]
    assert (metric.count, metric.units) == (60, "images")
    assert metric.subset(10).count == 10 and np.array_equal(metric.subset(10).x, x[:10])
    assert judged((net, x, y))[1].score(net) == metric.score(net)
    assert metric.digest() == TopOne(x.copy(), y.copy()).digest() != TopOne(x, y[::-1]).digest()


def test_pair_verification_scores_the_protocol_counts_pairs_and_pickles(problem):
    net, x, y = problem
    pairs = make_pairs(y, 200, seed=4)  # more pairs than images: the count is of pairs
    metric = PairVerification(x, y, pairs, "fc5")
    expected = verify_net(net, x, pairs, "fc5")["verification_accuracy"]
    assert metric.score(net) == expected
    assert (metric.count, metric.units) == (200, "pairs")
    # the fold accuracies are of equally many pairs, so score * count is a whole number of pairs
    assert abs(metric.score(net) * metric.count - round(metric.score(net) * metric.count)) < 1e-9
    again = pickle.loads(pickle.dumps(metric))
    assert again.score(net) == expected and again.digest() == metric.digest()
    assert PairVerification(x, y, pairs).digest() != metric.digest()  # another layer
    with pytest.raises(UserError, match="labelled"):  # pairs checked against the split's labels
        PairVerification(x, np.zeros(60, np.int64), pairs)


def test_a_metric_says_which_layers_it_reads(problem):
    """Verification reads the layers up to its embedding, not the classifier after it; top-1 reads all."""
    net, x, y = problem
    names = [name for name, _, _ in net.nodes]
    assert TopOne(x, y).reads(net) == set(names)
    pairs = make_pairs(y, 40, seed=4)
    on_bn = PairVerification(x, y, pairs).reads(net)  # the classifier's input, fc5_bn
    assert "fc6" not in on_bn and {"conv1", "fc5", "fc5_bn"} <= on_bn
    on_fc5 = PairVerification(x, y, pairs, "fc5").reads(net)
    assert on_fc5 == on_bn - {"fc5_bn"}


def test_a_verification_subset_pairs_only_the_first_images(problem):
    net, x, y = problem
    y = np.tile(np.arange(3), 20)
    metric = PairVerification.of_split(x, y, seed=2)
    small = metric.subset(30)
    assert small.count == 20 and max(small.pairs.first.max(), small.pairs.second.max()) < 30
    assert small.digest() == metric.subset(30).digest()  # seeded: the same pairs again


def test_validation_pairs_are_one_per_image_in_whole_balanced_folds():
    y = np.repeat(np.arange(10), 600)
    pairs = validation_pairs(y, seed=0)
    assert len(pairs.same) == 6000 and pairs.folds == 10
    for f in range(10):
        assert (pairs.same[pairs.fold == f]).sum() == 300 and (~pairs.same[pairs.fold == f]).sum() == 300
    assert np.array_equal(validation_pairs(y, seed=0).first, pairs.first)
    assert not np.array_equal(validation_pairs(y, seed=1).first, pairs.first)
    assert len(validation_pairs(np.repeat(np.arange(3), 9)).same) == 20  # 27 images: whole folds of 2
    # two images of each of two classes: 2 same pairs in all, too few for ten folds
    with pytest.raises(UserError, match="too few for verification pairs"):
        validation_pairs(np.array([0, 0, 1, 1]))
    with pytest.raises(UserError, match="too few"):
        validation_pairs(np.zeros(100, np.int64))  # one class: no different pairs


def test_search_metric_builds_the_kind_asked_and_checks_the_layer(problem):
    net, x, y = problem
    assert isinstance(search_metric("accuracy", net, x, y), TopOne)
    metric = search_metric("verification", net, x, y, None, seed=5)
    assert isinstance(metric, PairVerification) and metric.count == 60
    assert metric.evaluate(net)["embedding"] == "fc5_bn"
    with pytest.raises(UserError, match="no layer 'fc9'"):
        search_metric("verification", net, x, y, "fc9")
    with pytest.raises(UserError, match="unknown metric"):
        search_metric("loss", net, x, y)
