"""Verification accuracy: do two images show the same identity, judged by the cosine similarity
of their embeddings, measured by the 10-fold protocol of LFW.

Huang, Ramesh, Berg & Learned-Miller 2007, "Labeled Faces in the Wild" (View 2): pairs in ten
folds, each with equally many same-identity and different-identity pairs; for each fold the
decision threshold is the one that maximises accuracy on the other nine folds, and accuracy is
measured on the held-out fold; the figure is the mean over folds with its spread. Embeddings are
compared as face models (SphereFace, CosFace, ArcFace) compare them: L2-normalised, by cosine
similarity. Here classes stand for identities.

Choices the protocol leaves open, made here:
- a pair is judged "same" when its similarity is strictly above the threshold; the candidates are
  the midpoints between neighbouring distinct similarities of the training folds, and one below
  the smallest and one above the largest (similarity -/+ 1); of equally good candidates the
  lowest wins;
- the spread is the sample standard deviation over folds (divisor folds - 1, as LFW's README);
- `threshold` is chosen on all pairs at once (the one to deploy); each fold's own is in
  `fold_thresholds`;
- ROC AUC (Mann-Whitney: the chance that a random same pair scores above a random different one,
  ties counting a half) and TAR at FAR 1e-3 are over all pairs, not per fold. TAR at FAR f: the
  threshold is the (k+1)-th largest different-pair similarity with k = floor(f * different pairs),
  so at most k different pairs are accepted; 3,000 different pairs make k = 3, a noisy figure.

Departures from LFW in `make_pairs`: LFW keeps the identities of different folds apart; with a
handful of classes that is impossible, so folds share classes (never a pair, and no image is
paired with itself).
"""

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

from npdc.errors import UserError

FAR = 1e-3
MAX_DRAWS = 50  # draws per pair wanted before make_pairs gives up on finding new ones


class Pairs(NamedTuple):
    """Pairs of images by index into a split: first, second (int64), same (bool), fold (int64,
    0-based); arrays of one length."""
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    @property
    def folds(self):
        return int(self.fold.max()) + 1 if len(self.fold) else 0


# -- making and checking pairs ---------------------------------------------------------------------
def make_pairs(labels, n=6000, seed=0, folds=10):
    """n balanced pairs of images of a labelled split, in `folds` folds of n/folds pairs, half
    same-class and half different-class in each; pairs are distinct (unordered) and never an
    image with itself. Same seed, same pairs. UserError if n is not a multiple of 2 * folds or the
    split cannot give that many pairs."""
    labels = np.asarray(labels).reshape(-1)
    if folds < 2:
        raise UserError(f"the protocol needs at least 2 folds, not {folds}")
    if n < 2 * folds or n % (2 * folds):
        raise UserError(f"the number of pairs must be a positive multiple of {2 * folds} "
                        f"({folds} folds of equally many same and different pairs), not {n}")
    classes, counts = np.unique(labels, return_counts=True)
    possible_same = int(sum(c * (c - 1) // 2 for c in counts))
    possible_diff = int((len(labels) ** 2 - int((counts.astype(np.int64) ** 2).sum())) // 2)
    if min(possible_same, possible_diff) < n // 2:
        raise UserError(f"a split of {len(labels):,} images in {len(classes)} classes gives "
                        f"{possible_same:,} same and {possible_diff:,} different pairs; "
                        f"{n // 2:,} of each are needed")
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    anchors_same = np.concatenate([members[c] for c, k in zip(classes, counts) if k > 1])
    seen, rows = set(), []
    for same in (True, False):
        rows.append(_draw(rng, labels, members, anchors_same if same else np.arange(len(labels)),
                          n // 2, same, seen))
    fold = np.repeat(np.arange(folds), n // (2 * folds))  # of the same pairs, and of the different
    (same_pairs, diff_pairs), fold = rows, np.concatenate([fold, fold])
    first = np.concatenate([same_pairs[:, 0], diff_pairs[:, 0]])
    second = np.concatenate([same_pairs[:, 1], diff_pairs[:, 1]])
    same = np.repeat([True, False], n // 2)
    sort = np.lexsort((~same, fold))  # fold by fold, same pairs first (LFW's order)
    return Pairs(first[sort], second[sort], same[sort], fold[sort].astype(np.int64))


def _draw(rng, labels, members, anchors, wanted, same, seen):
    """`wanted` new unordered pairs (i, j), i != j, same class or not, added to `seen`."""
    out = []
    for _ in range(MAX_DRAWS * wanted):
        if len(out) == wanted:
            break
        i = int(anchors[rng.integers(len(anchors))])
        if same:
            pool = members[labels[i]]
            j = int(pool[rng.integers(len(pool))])
        else:
            j = int(rng.integers(len(labels)))
        key = (min(i, j), max(i, j))
        if i == j or (labels[i] == labels[j]) != same or key in seen:
            continue
        seen.add(key)
        out.append((i, j))
    if len(out) < wanted:
        raise UserError(f"could not draw {wanted:,} distinct {'same' if same else 'different'} pairs")
    return np.array(out, np.int64).reshape(-1, 2)


def check_pairs(pairs, images=None, labels=None, where=None):
    """UserError unless every index is in range(images) (when given), no pair is an image with itself, every
    fold 0..F-1 has both kinds of pair, and (given the split's labels) every same pair has equal
    labels and every different pair unequal ones. where(k): how to name pair k in a message."""
    where = where or (lambda k: f"pair {k + 1}")
    if len(pairs.same) == 0:
        raise UserError("no pairs")
    images = np.iinfo(np.int64).max if images is None else images
    for k in np.flatnonzero((pairs.first < 0) | (pairs.first >= images) |
                            (pairs.second < 0) | (pairs.second >= images))[:1]:
        bad = pairs.first[k] if not 0 <= pairs.first[k] < images else pairs.second[k]
        raise UserError(f"{where(k)}: image {bad} is out of range for a split of {images:,} images")
    for k in np.flatnonzero(pairs.first == pairs.second)[:1]:
        raise UserError(f"{where(k)}: pairs image {pairs.first[k]} with itself")
    for f in range(pairs.folds):
        kinds = pairs.same[pairs.fold == f]
        for kind, name in ((True, "same"), (False, "different")):
            if not (kinds == kind).any():
                raise UserError(f"fold {f + 1} has no {name} pairs; each fold needs both kinds")
    if labels is not None:
        labels = np.asarray(labels)
        wrong = np.flatnonzero((labels[pairs.first] == labels[pairs.second]) != pairs.same)
        for k in wrong[:1]:
            kind = "same" if pairs.same[k] else "different"
            raise UserError(f"{where(k)}: a {kind} pair of images labelled {labels[pairs.first[k]]} and "
                            f"{labels[pairs.second[k]]} (were the pairs made from another split?)")


# -- the protocol -------------------------------------------------------------------------------------
def best_threshold(similarity, same):
    """The threshold t maximising the accuracy of "same iff similarity > t" on these pairs
    (candidates and ties as in the module docstring)."""
    order = np.argsort(similarity, kind="stable")
    s, positive = np.asarray(similarity, np.float64)[order], np.asarray(same, bool)[order]
    # correct when the first k (lowest) are called different: different among them + same after
    below_diff = np.concatenate([[0], np.cumsum(~positive)])
    above_same = positive.sum() - np.concatenate([[0], np.cumsum(positive)])
    correct = below_diff + above_same
    k = np.arange(len(s) + 1)
    legal = (k == 0) | (k == len(s))
    legal[1:-1] = s[1:] > s[:-1]  # a cut only between distinct values
    best = int(np.flatnonzero(legal & (correct == correct[legal].max()))[0])
    if best == 0:
        return float(s[0] - 1.0)
    if best == len(s):
        return float(s[-1] + 1.0)
    return float((s[best - 1] + s[best]) / 2)


def roc_auc(similarity, same):
    """Area under the ROC curve: P(a same pair scores above a different pair), ties a half."""
    same = np.asarray(same, bool)
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if not n_same or not n_diff:
        raise UserError("ROC AUC needs both same and different pairs")
    ranks = rankdata(np.asarray(similarity, np.float64))
    return float((ranks[same].sum() - n_same * (n_same + 1) / 2) / (n_same * n_diff))


def tar_at_far(similarity, same, far=FAR):
    """(true accept rate, threshold) at a false accept rate of at most `far` (module docstring)."""
    similarity, same = np.asarray(similarity, np.float64), np.asarray(same, bool)
    diff = np.sort(similarity[~same])[::-1]
    k = int(np.floor(far * len(diff) + 1e-9))
    if k >= len(diff):
        return 1.0, float(diff[-1] - 1.0)
    t = float(diff[k])
    return float((similarity[same] > t).mean()), t


def protocol(similarity, pairs):
    """The LFW figures of per-pair similarities: verification_accuracy (mean over folds),
    verification_std, fold_accuracies, fold_thresholds, threshold, auc, tar_at_far_1e-3, pairs."""
    similarity = np.asarray(similarity, np.float64)
    if not np.isfinite(similarity).all():
        raise UserError("the embeddings give similarities that are not finite (NaN or inf)")
    accuracies, thresholds = [], []
    for f in range(pairs.folds):
        test = pairs.fold == f
        t = best_threshold(similarity[~test], pairs.same[~test])  # never on the fold itself
        accuracies.append(float(((similarity[test] > t) == pairs.same[test]).mean()))
        thresholds.append(t)
    tar, _ = tar_at_far(similarity, pairs.same)
    return {"verification_accuracy": float(np.mean(accuracies)),
            "verification_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
            "fold_accuracies": accuracies, "fold_thresholds": thresholds,
            "threshold": best_threshold(similarity, pairs.same),
            "auc": roc_auc(similarity, pairs.same), "tar_at_far_1e-3": tar,
            "pairs": int(len(similarity)), "folds": pairs.folds}


# -- embeddings -------------------------------------------------------------------------------------------
def default_embedding(net):
    """The node whose output the classifier (the last node) reads: fc5_bn in resnet18."""
    return net.nodes[-1][2][0]


def check_embedding(net, layer):
    if layer not in net.layers:
        raise UserError(f"no layer {layer!r} to take embeddings from; the model has "
                        f"{', '.join(n for n, _, _ in net.nodes[-4:])} at its end")
    return layer


def cosine_similarity(embeddings, pairs):
    """Cosine similarity of each pair: embeddings (N, D) by image index, L2-normalised here."""
    e = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", e[pairs.first], e[pairs.second])


def used_images(pairs):
    """The image indices the pairs use, sorted, and the pairs re-indexed into that list."""
    used, inverse = np.unique(np.concatenate([pairs.first, pairs.second]), return_inverse=True)
    n = len(pairs.first)
    return used, pairs._replace(first=inverse[:n].astype(np.int64), second=inverse[n:].astype(np.int64))


def embed(net, x, layer, batch_size=256):
    """Outputs of node `layer` for raw images x, flattened to (N, D), in eval mode and batches."""
    check_embedding(net, layer)
    outs = [net.forward(net.preprocess(x[i:i + batch_size]), keep=(layer,))[1][layer]
            for i in range(0, len(x), batch_size)]
    return np.concatenate([o.reshape(len(o), -1) for o in outs])


def verify_net(net, x, pairs, layer=None, batch_size=256):
    """The protocol's figures (see `protocol`) for a Net on raw images x of the split the pairs
    index; embeddings from `layer` (default: the classifier's input), only of the images used."""
    layer = layer or default_embedding(net)
    used, local = used_images(pairs)
    result = protocol(cosine_similarity(embed(net, x[used], layer, batch_size), local), pairs)
    return {**result, "embedding": layer}

