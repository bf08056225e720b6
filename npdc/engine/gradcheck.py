"""The one finite-difference gradient checker every test uses (float64, central differences).

Error of an entry is |a - n| / max(|a| + |n|, s) with s = max(1e-3 * max|n|, 1e-7): relative,
except that entries far smaller than the array's largest gradient (or than the ~1e-8 rounding
noise of a float64 central difference) are judged against that scale instead. At a kink (ReLU at 0, a max-pool tie) a
central difference straddles two branches and means nothing, so with kinks=True an entry whose
differences with eps and eps/10 disagree is skipped; the number skipped is returned. A kink is
a point: random inputs put few entries within eps of one, so when more than `max_skipped` (a
fraction, default 10 %) of an array's checked entries would be skipped the check refuses with
TooManyKinks instead of passing on the few entries left (a function non-smooth almost everywhere,
or a loss too noisy for its eps, would otherwise pass unchecked).
Large arrays are checked on a random sample of entries (`max_entries`) to keep tests quick.
"""

import numpy as np

MAX_SKIPPED = 0.1


class TooManyKinks(AssertionError):
    """More entries of an array sat at kinks than the checker may skip: nothing was verified."""


def numeric_grad(loss, arr, eps, index):
    """d loss() / d arr at flat positions `index`, perturbing arr in place and restoring it."""
    flat = arr.reshape(-1)
    out = np.empty(len(index))
    for k, i in enumerate(index):
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        out[k] = (up - down) / (2 * eps)
    return out


def compare(loss, arr, analytic, eps=1e-6, kinks=False, max_entries=None, rng=None,
            max_skipped=MAX_SKIPPED):
    """(max error, entries skipped as kinks) of `analytic` (d loss / d arr) against finite
    differences. Raises TooManyKinks when more than max_skipped of the checked entries are kinks."""
    index = np.arange(arr.size)
    if max_entries is not None and arr.size > max_entries:
        index = np.sort((rng or np.random.default_rng(0)).choice(arr.size, max_entries, replace=False))
    a = analytic.reshape(-1)[index]
    num = numeric_grad(loss, arr, eps, index)
    scale = max(1e-3 * np.abs(num).max(initial=0.0), 1e-7)
    err = np.abs(a - num) / np.maximum(np.abs(a) + np.abs(num), scale)
    skipped = 0
    if kinks:
        fine = numeric_grad(loss, arr, eps / 10, index)
        at_kink = np.abs(fine - num) > 1e-4 * np.maximum(np.abs(fine) + np.abs(num), scale)
        skipped = int(at_kink.sum())
        if skipped > max_skipped * len(index):
            raise TooManyKinks(f"{skipped} of {len(index)} entries are at kinks (central differences "
                               f"with eps and eps/10 disagree), more than {max_skipped:.0%}: "
                               "the gradient would go unchecked")
        err = np.where(at_kink, 0.0, err)
    return float(err.max(initial=0.0)), skipped


def check_module(forward, backward, x, params, seed=0, eps=1e-6, kinks=False, max_entries=None,
                 max_skipped=MAX_SKIPPED):
    """Check a forward/backward pair: the loss is <forward(x), r> for a fixed random r.

    forward(x) -> y and backward(dy) -> dx; `params` maps names to (array, grad array) pairs that
    backward adds into. Returns ({"x": err, name: err, ...}, kink entries skipped).
    """
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(forward(x).shape)

    def loss():
        return float(np.sum(forward(x) * r))

    for _, g in params.values():
        g[...] = 0
    forward(x)
    dx = backward(r.copy())
    errors, skipped = {}, 0
    for name, (arr, grad) in {"x": (x, dx), **params}.items():
        errors[name], s = compare(loss, arr, grad.copy(), eps, kinks, max_entries, rng, max_skipped)
        skipped += s
    return errors, skipped


def check_layer(layer, x, train=True, seed=0, kinks=False, max_entries=None, max_skipped=MAX_SKIPPED):
    """check_module for a built npdc layer, in float64."""
    layer.astype(np.float64)
    params = {k: (layer.params[k], layer.grads[k]) for k in layer.params}
    return check_module(lambda a: layer.forward(a, train), layer.backward, x, params, seed,
                        kinks=kinks, max_entries=max_entries, max_skipped=max_skipped)


def check_net(net, x, train=True, seed=0, kinks=False, max_entries=None, max_skipped=MAX_SKIPPED):
    """check_module for a whole npdc Net, parameters addressed by path."""
    net.astype(np.float64)
    grads = net.grads()
    params = {k: (p, grads[k]) for k, p in net.params().items()}
    return check_module(lambda a: net.forward(a, train), lambda d: net.backward(d, input_grad=True), x,
                        params, seed, kinks=kinks, max_entries=max_entries, max_skipped=max_skipped)
