"""Weight quantization: linear min-max, k-means weight sharing, and exact 1-D k-means.

- Linear (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference"): q = round((w - min) / D), D = (max - min) / (2^b - 1).
- k-means weight sharing (Han, Mao & Dally 2016, "Deep Compression"): Lloyd's algorithm on one
  layer's surviving weights, initialised linearly over [min, max] (best in the paper), by density
  (quantiles of the weights' distribution) or at random weights (Forgy).
- Optimal 1-D quantizer: in one dimension the clusters of an optimal k-means are runs of the
  sorted values, so dynamic programming over the sorted weights finds the exact optimum
  (Wang & Song 2011, "Ckmeans.1d.dp"); the optimal split points move monotonically with the
  run's end, which lets each DP row be filled by divide and conquer in O(n log n).

A pruned layer keeps zero exact: only its surviving weights are clustered, and the stored value
index 0 means "pruned" (see npdc.codec.relindex), so b bits give 2^b - 1 centroids; a dense layer
gets 2^b.
"""

from dataclasses import dataclass, replace

import numba
import numpy as np

from npdc.compress.prune import prunable_layers
from npdc.engine.optim import SGD
from npdc.errors import UserError

INITS = ("linear", "density", "random")


@dataclass(frozen=True, eq=False)
class QuantizedLayer:
    """One quantized weight tensor, the same record from quantization through the .npdc file
    (npdc.codec.model) to the runtime (npdc.runtime.weights).

    indices: int64, one per position of W in C order; 0 = pruned (zero), i > 0 = codebook[i - 1].
    codebook: float32 (k,), the shared values. sparse: the layer is pruned, so the codec may store
    it by relative index (it keeps whichever coding is smaller); a dense layer is stored dense.
    """

    indices: np.ndarray
    codebook: np.ndarray
    sparse: bool = False

    @classmethod
    def from_assign(cls, assign, codebook, mask):
        """The record of a layer whose surviving weights W[mask] (C order) are codebook[assign]."""
        mask = np.asarray(mask, bool)
        indices = np.zeros(mask.size, np.int64)
        indices[mask.reshape(-1)] = np.asarray(assign) + 1
        return cls(indices, codebook, not mask.all())

    @property
    def assign(self):
        """Index into the codebook of every surviving weight, in C order."""
        return self.indices[self.indices > 0] - 1

    def mask(self, shape):
        """Keep-mask of W's shape: true where a weight survives."""
        return (self.indices > 0).reshape(shape)

    def with_codebook(self, codebook):
        return replace(self, codebook=np.asarray(codebook, np.float32))


def linear_quantize(w, bits):
    """(codes, codebook): codes in 0..2^b-1 with codebook[q] = min + q * D (float32)."""
    w = np.asarray(w, np.float64).reshape(-1)
    levels = 2 ** bits
    lo, hi = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    step = (hi - lo) / (levels - 1) if hi > lo else 1.0
    codes = np.clip(np.rint((w - lo) / step), 0, levels - 1).astype(np.int64)
    return codes, (lo + step * np.arange(levels)).astype(np.float32)


def assign(w, codebook):
    """Index of the nearest centroid for every weight (codebook need not be sorted)."""
    order = np.argsort(codebook, kind="stable")
    c = np.asarray(codebook, np.float64)[order]
    w = np.asarray(w, np.float64).reshape(-1)
    if c.size == 1:
        return np.zeros(w.size, np.int64)
    mid = (c[1:] + c[:-1]) / 2
    return order[np.searchsorted(mid, w, side="left")]


def _initial_centroids(w, k, init, rng):
    lo, hi = w.min(), w.max()
    if init == "linear":
        return np.linspace(lo, hi, k)
    if init == "density":
        return np.quantile(w, (np.arange(k) + 0.5) / k)
    if init == "random":
        return rng.choice(w, size=k, replace=w.size < k)
    raise UserError(f"unknown k-means initialisation {init!r}; known: {', '.join(INITS)}")


def kmeans(w, k, init="linear", iters=50, seed=0, tol=1e-7):
    """Lloyd's k-means in 1-D: float32 centroids (sorted). An empty cluster keeps its centroid."""
    w = np.asarray(w, np.float64).reshape(-1)
    if w.size == 0:
        return np.zeros(k, np.float32)
    c = np.sort(_initial_centroids(w, k, init, np.random.default_rng(seed)).astype(np.float64))
    for _ in range(iters):
        idx = assign(w, c)
        sums = np.bincount(idx, weights=w, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        shift = np.abs(new - c).max()
        c = np.sort(new)
        if shift <= tol * max(1.0, np.abs(c).max()):
            break
    return c.astype(np.float32)


@numba.njit(cache=True)
def _cost(ps, ps2, i, j):
    """Sum of squared deviations of sorted values i..j-1 from their mean, via prefix sums."""
    n = j - i
    s = ps[j] - ps[i]
    v = ps2[j] - ps2[i] - s * s / n
    return v if v > 0.0 else 0.0


@numba.njit(cache=True)
def _fill_row(prev, cur, split, ps, ps2, lo, hi, opt_lo, opt_hi):
    """cur[j] = min over t in [opt_lo, opt_hi] of prev[t] + cost(t, j) for j in lo..hi, by
    divide and conquer on the monotone argmin (iterative, with an explicit stack)."""
    stack = [(lo, hi, opt_lo, opt_hi)]
    while len(stack) > 0:
        a, b, oa, ob = stack.pop()
        if a > b:
            continue
        mid = (a + b) // 2
        best, arg = np.inf, oa
        for t in range(oa, min(ob, mid - 1) + 1):
            v = prev[t] + _cost(ps, ps2, t, mid)
            if v < best:
                best, arg = v, t
        cur[mid], split[mid] = best, arg
        stack.append((a, mid - 1, oa, arg))
        stack.append((mid + 1, b, arg, ob))


@numba.njit(cache=True)
def _optimal_1d(values, k):
    n = values.size
    ps = np.zeros(n + 1)
    ps2 = np.zeros(n + 1)
    for i in range(n):
        ps[i + 1] = ps[i] + values[i]
        ps2[i + 1] = ps2[i] + values[i] * values[i]
    # row m of D: best cost of the first j values in m clusters (two rows kept);
    # S[m, j]: where the last of those m clusters starts (kept whole for the backtrack)
    prev = np.full(n + 1, np.inf)
    prev[0] = 0.0
    cur = np.full(n + 1, np.inf)
    S = np.zeros((k + 1, n + 1), np.int32)
    for m in range(1, k + 1):
        cur[:] = np.inf
        _fill_row(prev, cur, S[m], ps, ps2, m, n, m - 1, n - 1)
        prev, cur = cur, prev
    centroids = np.empty(k)
    j = n
    for m in range(k, 0, -1):
        t = S[m, j]
        centroids[m - 1] = (ps[j] - ps[t]) / (j - t)
        j = t
    return centroids


def optimal_kmeans(w, k):
    """Exact 1-D k-means (minimum squared error) centroids, float32, sorted."""
    values = np.sort(np.asarray(w, np.float64).reshape(-1))
    if values.size == 0:
        return np.zeros(k, np.float32)
    distinct = np.unique(values)
    if distinct.size <= k:  # every distinct value its own centroid; pad with copies of the last
        return np.concatenate([distinct, np.full(k - distinct.size, distinct[-1])]).astype(np.float32)
    return _optimal_1d(values, k).astype(np.float32)


def squared_error(w, codebook):
    """Total squared quantization error of w against its nearest centroids."""
    w = np.asarray(w, np.float64).reshape(-1)
    c = np.asarray(codebook, np.float64)
    return float(np.sum((w - c[assign(w, c)]) ** 2))


METHODS = ("linear", "kmeans", "optimal")


def quantize_weights(W, bits, method="kmeans", mask=None, init="linear", seed=0):
    """(assign, codebook) for one layer: codebook float32 (k,), assign int64 per surviving weight
    (in the flat order of W[mask]); k = 2^b - 1 when the layer is pruned, else 2^b."""
    if not 1 <= bits <= 16:
        raise UserError(f"bits must be between 1 and 16, not {bits}")
    pruned = mask is not None and not np.all(mask)
    w = np.asarray(W, np.float64)[mask] if mask is not None else np.asarray(W, np.float64).reshape(-1)
    k = 2 ** bits - (1 if pruned else 0)
    if method == "linear":
        if pruned:
            codebook = np.linspace(w.min(), w.max(), k).astype(np.float32) if w.size else np.zeros(k, np.float32)
        else:
            _, codebook = linear_quantize(w, bits)
    elif method == "kmeans":
        codebook = kmeans(w, k, init, seed=seed)
    elif method == "optimal":
        codebook = optimal_kmeans(w, k)
    else:
        raise UserError(f"unknown quantizer {method!r}; known: {', '.join(METHODS)}")
    return assign(w, codebook), codebook


class CentroidSGD:
    """SGD for trained quantization (Han, Mao & Dally 2016, section 3.3): the weights of a
    quantized layer share its codebook; each centroid moves by the *sum* of the gradients of the
    weights assigned to it (with momentum), assignments stay fixed, pruned weights stay zero.
    Every other parameter takes an ordinary npdc.engine.optim.SGD step.

    Build with functools.partial(CentroidSGD, shared=...) and hand it to fit(optimizer=...);
    shared: {path: QuantizedLayer}. Weight decay is not applied to centroids.
    """

    def __init__(self, params, grads, lr, momentum, nesterov, weight_decay, masks=None, shared=None):
        self.shared = {}
        for path, q in (shared or {}).items():
            self.shared[path] = (q.assign, np.array(q.codebook, np.float64), q.mask(params[path].shape),
                                 np.zeros(len(q.codebook)))
        rest = {k: v for k, v in params.items() if k not in self.shared}
        self.inner = SGD(rest, {k: grads[k] for k in rest}, lr, momentum, nesterov, weight_decay,
                         {k: m for k, m in (masks or {}).items() if k in rest})
        self.params, self.grads, self.masks = params, grads, self.inner.masks
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        for path in self.shared:
            self._write(path)

    def _write(self, path):
        idx, codebook, mask, _ = self.shared[path]
        W = self.params[path]
        W[...] = 0
        W[mask] = codebook[idx]

    def codebooks(self):
        """{path: float32 codebook} as trained so far."""
        return {p: c.astype(np.float32) for p, (_, c, _, _) in self.shared.items()}

    def apply_masks(self):
        self.inner.apply_masks()

    def step(self):
        self.inner.lr = self.lr
        self.inner.step()
        for path, (idx, codebook, mask, velocity) in self.shared.items():
            g = np.bincount(idx, weights=self.grads[path][mask], minlength=len(codebook))
            velocity *= self.momentum
            velocity += g
            codebook -= self.lr * (g + self.momentum * velocity if self.nesterov else velocity)
            self._write(path)


def quantize_net(net, bits, method="kmeans", masks=None, default_bits=8, layers=None):
    """Quantize every prunable layer's weights in place (weights become their centroids).

    bits: {layer name: bits}, others get default_bits; masks: {path: keep} of a pruned net (a
    layer without one is taken as dense unless it has exact zeros). Returns {path:
    QuantizedLayer}, what npdc.codec.model stores.
    """
    out = {}
    for name in prunable_layers(net) if layers is None else layers:
        path = f"{name}.W"
        W = net.layers[name].params["W"]
        keep = masks.get(path) if masks else None
        if keep is None:
            keep = W != 0
        sparse = not np.all(keep)
        idx, codebook = quantize_weights(W, bits.get(name, default_bits), method, keep if sparse else None)
        W[...] = 0
        W[keep] = codebook[idx]
        out[path] = QuantizedLayer.from_assign(idx, codebook, keep)
    return out
