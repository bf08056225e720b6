"""Training and evaluation loops: seeded shuffling and augmentation, SGD, a progress bar."""

import math
import time

import numpy as np

from npdc.engine.losses import cross_entropy
from npdc.engine.optim import SCHEDULES, SGD
from npdc.engine.resnet import build_net
from npdc.engine.images import channel_stats, set_normalisation
from npdc.errors import UserError
from npdc.jobs import run_jobs
from npdc.progress import progress_bar


def augment(x, rng, pad):
    """Random crop after zero padding by `pad` pixels, and random horizontal flip; x: (N, C, H, W)."""
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    out = np.empty_like(x)
    for i in range(n):
        out[i] = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, :, ::-1]
    return out


def evaluate(net, x, y, batch_size=256, progress=False, executor=None, shard_batches=4,
             shared=None):
    """Accuracy and mean cross-entropy of `net` (eval mode) on raw images x and labels y.

    With an `executor` (npdc.jobs), the batches are shared out as jobs of `shard_batches`
    batches each; the shards' correct counts are summed and their per-batch losses added in
    batch order, so the result is the in-process one bit for bit. `shared` replaces (net, x, y)
    as what the jobs receive (a npdc.jobs.Loaded recipe that gives the same arrays).
    """
    if executor is None:
        return _combine(len(x), [_count(net, x, y, (0, len(x), batch_size), progress)])
    step = batch_size * shard_batches
    shards = [(i, min(i + step, len(x)), batch_size) for i in range(0, len(x), step)]
    shared = (net, x, y) if shared is None else shared
    return _combine(len(x), run_jobs(evaluate_shard, shared, shards, executor, progress,
                                     desc="evaluate"))


def evaluate_shard(shared, shard):
    """One job of a sharded evaluation: shared = (net, x, y), shard = (start, stop, batch_size)."""
    net, x, y = shared
    return _count(net, x, y, shard)


def _count(net, x, y, shard, progress=False):
    """(correct, [loss × images of each batch]) on the batches of x[start:stop]."""
    start, stop, batch_size = shard
    correct, losses = 0, []
    for i in progress_bar(range(start, stop, batch_size), desc="evaluate", unit="batch",
                          enabled=progress, leave=False):
        j = min(i + batch_size, stop)
        logits = net.forward(net.preprocess(x[i:j]))
        losses.append(cross_entropy(logits, y[i:j])[0] * (j - i))
        correct += int((logits.argmax(axis=1) == y[i:j]).sum())
    return correct, losses


def _combine(n, parts):
    """Accuracy and mean loss from the shards' counts, the losses added in batch order."""
    correct, total_loss = 0, 0.0
    for shard_correct, losses in parts:
        correct += shard_correct
        for loss in losses:
            total_loss += loss
    n = max(n, 1)
    return {"accuracy": correct / n, "loss": total_loss / n}


def cross_entropy_objective(net, x, y):
    """The default training objective: forward, softmax cross-entropy, backward."""
    logits = net.forward(x, train=True)
    loss, dlogits = cross_entropy(logits, y)
    net.backward(dlogits)
    return logits, {"loss": loss}


def fit(net, x, y, epochs, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", seed=0, augment_pad=None, masks=None, objective=None, hook=None,
        optimizer=SGD, progress=True, targets=None):
    """Train `net` with SGD on raw images x (N, C, H, W) and labels y (or None); returns the
    per-epoch history.

    objective(net, x_normalised, y_batch) runs forward and backward and returns (logits, {name:
    value}) — cross-entropy by default, distillation in npdc.compress.distill. hook(step,
    optimizer) runs after every optimizer step (gradual pruning updates the masks there).
    Everything random (shuffling, crops, flips) comes from one generator seeded with `seed`, so
    the same seed gives the same model. `augment_pad` defaults to H // 8; 0 turns augmentation off.
    targets: {name: array aligned with x}, per-image values computed once (a teacher's outputs,
    npdc.compress.distill.Distillation.outputs_of); the objective then gets the batch's rows as a
    fourth argument. Rows of unaugmented images cannot stand for augmented ones, so with
    targets augmentation is off unless asked for, and asking for it is refused.
    """
    rng = np.random.default_rng(seed)
    if targets is not None and augment_pad:
        raise ValueError("per-image targets need unaugmented images (augment_pad=0)")
    pad = 0 if targets is not None else x.shape[2] // 8 if augment_pad is None else augment_pad
    objective = objective or cross_entropy_objective
    opt = optimizer(net.params(), net.grads(), lr, momentum, nesterov, weight_decay, masks)
    lr_at = SCHEDULES[schedule]
    steps_per_epoch = -(-len(x) // batch_size)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        seen, correct, sums, t0 = 0, 0, {}, time.perf_counter()
        bar = progress_bar(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", enabled=progress,
                           unit="batch")
        for step in bar:
            opt.lr = lr_at(lr, (epoch + step / steps_per_epoch) / epochs)
            idx = order[step * batch_size:(step + 1) * batch_size]
            xb = augment(x[idx], rng, pad) if pad else x[idx]
            yb = None if y is None else y[idx]
            net.zero_grad()
            if targets is None:
                logits, terms = objective(net, net.preprocess(xb), yb)
            else:
                logits, terms = objective(net, net.preprocess(xb), yb, {k: v[idx] for k, v in targets.items()})
            if not all(math.isfinite(v) for v in terms.values()):
                bar.close()
                raise UserError(f"training stopped at epoch {epoch + 1}, step {step + 1}: the loss is not "
                                f"finite ({', '.join(f'{k} {v}' for k, v in terms.items())}); try a lower "
                                "learning rate")
            opt.step()
            if hook is not None:
                hook(epoch * steps_per_epoch + step + 1, opt)
            seen += len(idx)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            shown = {k: f"{v / seen:.4f}" for k, v in sums.items()}
            if yb is not None:
                correct += int((logits.argmax(axis=1) == yb).sum())
                shown["acc"] = f"{correct / seen:.4f}"
            bar.set_postfix(**shown, lr=f"{opt.lr:.4g}")
        record = {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()},
                  "seconds": time.perf_counter() - t0}
        if y is not None:
            record["accuracy"] = correct / seen
        history.append(record)
    return history


def model_figures(net):
    """Static figures of a net: parameters, float32 parameter bytes, MACs per image."""
    params = net.num_params()
    return {"params": int(params), "size_bytes": int(params) * 4, "macs": int(net.macs())}


def evaluate_model(net, x, y, batch_size=256, progress=False, executor=None, shared=None):
    """Accuracy and loss on (x, y) with the static figures and the measured images/s (of the
    whole cluster when `executor` shares the test set out)."""
    t0 = time.perf_counter()
    result = evaluate(net, x, y, batch_size, progress, executor, shared=shared)
    seconds = time.perf_counter() - t0
    return {**result, **model_figures(net), "images": int(len(x)),
            "images_per_s": len(x) / seconds if seconds > 0 else 0.0}


def train_model(spec, x, y, epochs, seed=0, progress=True, mean=None, std=None, **hyper):
    """Build the net from `spec` (seeded), set its input normalisation (mean and std per channel
    on the [0, 1] scale, measured on x when not given), train it.

    Returns (net, history). hyper: the keyword arguments of fit (batch_size, lr, ...).
    """
    net = build_net(spec, seed=seed)
    if mean is None or std is None:
        net.mean, net.std = channel_stats(x)
    set_normalisation(net, mean, std)
    history = fit(net, x, y, epochs, seed=seed, progress=progress, **hyper)
    return net, history
