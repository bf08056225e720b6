"""Losses as (value, gradient w.r.t. the logits) pairs, averaged over the batch."""

import numpy as np


def log_softmax(z):
    """Row-wise log-softmax of z: (N, K), shifted by the row max for stability."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits, labels):
    """Softmax cross-entropy: logits (N, K), integer labels (N,) -> (mean loss, dlogits)."""
    n = logits.shape[0]
    logp = log_softmax(logits)
    loss = -logp[np.arange(n), labels].mean()
    d = np.exp(logp)
    d[np.arange(n), labels] -= 1
    return float(loss), d / n
