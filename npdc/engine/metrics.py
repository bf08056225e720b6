"""What a budget search judges a Net by: one object that holds the held-out data and scores a net
on it, so that the search (npdc.pipeline.auto) and the sensitivity sweep
(npdc.compress.sensitivity) are written once for every kind of accuracy.

A metric has
- `score(net)`: a fraction in [0, 1], higher is better;
- `evaluate(net)`: a dict with that fraction as "accuracy" (and what else it measured);
- `count` and `units`: how many things the fraction counts ("images", "pairs"), so that a gate
  can speak in whole ones (npdc.pipeline.auto.Gate: round(score * count) are right);
- `subset(n)`: the same metric on the first n images (the sweeps use fewer);
- `digest()`: what its data is, for the caches keyed by it.

TopOne is top-1 classification (npdc.engine.train.evaluate). PairVerification is verification
accuracy by LFW's 10-fold protocol (npdc.engine.verification; Huang et al. 2007): pairs of the
held-out images, cosine similarity of an embedding, each fold judged at the threshold of the
other nine. Its fraction is the mean over equally large folds, so score * count is the number of
pairs judged right. Both are plain objects of arrays, picklable, so that a cluster's workers get
them as the jobs' shared value (npdc.jobs).

Pairs of a held-out split (`validation_pairs`): one pair per image (6,000 validation images give
LFW's 6,000 pairs, and one pair weighs in the gate what one image does in top-1), rounded down to
whole folds of equally many same and different pairs, and at most half of the same (or
different) pairs the split can give, so drawing them stays quick.
"""

import hashlib

import numpy as np

from npdc.engine.train import evaluate
from npdc.engine.verification import check_embedding, check_pairs, default_embedding, make_pairs, verify_net
from npdc.errors import UserError

METRICS = ("accuracy", "verification")
FOLDS = 10


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


class TopOne:
    """Top-1 accuracy on images x with labels y (eval mode, in batches)."""
    name, units = "accuracy", "images"

    def __init__(self, x, y, batch_size=256):
        self.x, self.y, self.batch_size = x, y, batch_size

    @property
    def count(self):
        return len(self.y)

    def evaluate(self, net):
        return evaluate(net, self.x, self.y, self.batch_size)

    def score(self, net):
        return self.evaluate(net)["accuracy"]

    def subset(self, n):
        return TopOne(self.x[:n], self.y[:n], self.batch_size)

    def reads(self, net):
        """The nodes whose weights this metric's score depends on: all of them."""
        return {name for name, _, _ in net.nodes}

    def digest(self):
        return f"top-1:{_digest(self.x, self.y)}"


class PairVerification:
    """Verification accuracy on `pairs` (npdc.engine.verification.Pairs) of images x labelled y,
    embeddings from `layer` (None: the classifier's input). The pairs are checked against the
    split when the metric is made. `seed` and `folds` are how subsets draw their pairs."""
    name, units = "verification", "pairs"

    def __init__(self, x, y, pairs, layer=None, seed=0, batch_size=256):
        check_pairs(pairs, len(x), y)
        self.x, self.y, self.pairs, self.layer = x, y, pairs, layer
        self.seed, self.batch_size = seed, batch_size

    @classmethod
    def of_split(cls, x, y, layer=None, seed=0, folds=FOLDS, batch_size=256):
        """The metric on pairs drawn (seeded) from the split itself: validation_pairs."""
        return cls(x, y, validation_pairs(y, seed, folds), layer, seed, batch_size)

    @property
    def count(self):
        return len(self.pairs.same)

    def evaluate(self, net):
        r = verify_net(net, self.x, self.pairs, self.layer, self.batch_size)
        return {"accuracy": r["verification_accuracy"], "verification_std": r["verification_std"],
                "auc": r["auc"], "tar_at_far_1e-3": r["tar_at_far_1e-3"], "embedding": r["embedding"]}

    def score(self, net):
        return self.evaluate(net)["accuracy"]

    def reads(self, net):
        """The nodes the embedding is computed from (not the classifier after it)."""
        inputs = {name: ins for name, _, ins in net.nodes}
        seen, todo = set(), [self.layer or default_embedding(net)]
        while todo:
            name = todo.pop()
            if name in inputs and name not in seen:
                seen.add(name)
                todo.extend(inputs[name])
        return seen

    def subset(self, n):
        return PairVerification.of_split(self.x[:n], self.y[:n], self.layer, self.seed, self.pairs.folds,
                                         self.batch_size)

    def digest(self):
        p = self.pairs
        return f"verification:{self.layer or ''}:{_digest(self.x, self.y, p.first, p.second, p.same, p.fold)}"


def validation_pairs(labels, seed=0, folds=FOLDS):
    """Seeded pairs of a held-out split (module docstring: one per image, whole folds, at most
    half of what the split offers of either kind); UserError when it cannot give one pair of each
    kind per fold."""
    labels = np.asarray(labels).reshape(-1)
    _, counts = np.unique(labels, return_counts=True)
    counts = counts.astype(np.int64)
    same = int((counts * (counts - 1) // 2).sum())
    different = int((len(labels) ** 2 - int((counts ** 2).sum())) // 2)
    per_kind = min(len(labels) // 2, same // 2, different // 2) // folds * folds
    if per_kind < folds:
        raise UserError(f"{len(labels):,} validation images in {len(counts)} classes are too few for "
                        f"verification pairs ({folds} folds need a same and a different pair each): hold "
                        f"out more (search.val_fraction) or sweep on more (search.sensitivity_images)")
    return make_pairs(labels, 2 * per_kind, seed, folds)


def search_metric(kind, net, x, y, layer=None, seed=0):
    """The metric a search of `kind` ("accuracy" or "verification") judges on the held-out
    images (x, y); verification draws its pairs from them (validation_pairs) and takes
    embeddings from `layer` of `net` (checked; None: the classifier's input)."""
    if kind == "accuracy":
        return TopOne(x, y)
    if kind != "verification":
        raise UserError(f"unknown metric {kind!r}; known: {', '.join(METRICS)}")
    return PairVerification.of_split(x, y, check_embedding(net, layer or default_embedding(net)), seed)


def judged(shared, batch_size=256):
    """(net, metric) of what a job shares: (net, metric) as it is, or (net, x, y), the form of
    npdc.io.job_inputs' recipes, judged by top-1 accuracy."""
    if len(shared) == 2:
        return shared
    net, x, y = shared
    return net, TopOne(x, y, batch_size)
