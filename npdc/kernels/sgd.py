"""The SGD update of one parameter in one parallel pass (Sutskever et al. 2013, "On the importance
of initialization and momentum in deep learning"; Nesterov's form as PyTorch writes it).

Per element: g' = g + decay * p, v = momentum * v + g', p -= lr * (g' + momentum * v if nesterov
else v). The NumPy form made about six passes over each parameter and two temporaries; at
ResNet-50's 25 million parameters that was a visible share of a training step. The arithmetic is
NumPy's, operation for operation in the parameter's type (the scalars come in that type, and
nothing is contracted into a fused multiply-add), so the results are the same bits. Each choice
(decay or not, Nesterov or not) has its own loop, so no loop tests a flag per element.

Small parameters (biases, batch-norm scales, most of a network's arrays by count) take the
single-threaded build: waking the other thread for a few thousand elements costs more than it
saves, much more on a loaded machine.
"""

import numba

PARALLEL_FROM = 1 << 18  # elements from which the update runs on all threads


def _update(p, g, v, lr, momentum, decay, use_decay, nesterov):
    """Update flat contiguous p and v in place from g; the scalars in p's type."""
    if use_decay and nesterov:
        for i in numba.prange(p.size):
            gi = g[i] + decay * p[i]
            v[i] = v[i] * momentum + gi
            p[i] -= lr * (gi + momentum * v[i])
    elif use_decay:
        for i in numba.prange(p.size):
            v[i] = v[i] * momentum + (g[i] + decay * p[i])
            p[i] -= lr * v[i]
    elif nesterov:
        for i in numba.prange(p.size):
            v[i] = v[i] * momentum + g[i]
            p[i] -= lr * (g[i] + momentum * v[i])
    else:
        for i in numba.prange(p.size):
            v[i] = v[i] * momentum + g[i]
            p[i] -= lr * v[i]


_parallel = numba.njit(parallel=True, cache=True)(_update)
_serial = numba.njit(cache=True)(_update)


def sgd_update(p, g, v, lr, momentum, decay, use_decay, nesterov):
    """Update flat contiguous p and v in place from g; the scalars in p's type."""
    run = _parallel if p.size >= PARALLEL_FROM else _serial
    run(p, g, v, lr, momentum, decay, use_decay, nesterov)
