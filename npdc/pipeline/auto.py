"""The accuracy-budgeted search behind `compress`'s default mode: per-layer sparsity and bit widths
chosen on held-out validation images so that the compressed model stays within `max_drop`
points of the baseline there. The test split is never read here. What "accuracy" means is a
metric of npdc.engine.metrics, which holds the validation data: top-1 accuracy on the images,
or verification accuracy on pairs of them (LFW's protocol); every decision below goes through
its score, and the gate counts its units (images or pairs).

1. Pruning sensitivity (Han et al. 2015, "Learning both Weights and Connections"): each layer
   pruned alone at a sweep of sparsities, validation accuracy measured, nothing retrained.
2. Allocation (npdc.compress.allocate): for an overall sparsity, the per-layer sparsities the
   curves predict to cost the least accuracy (an exact multiple-choice knapsack).
3. The climb: iterative pruning (Han et al. 2015 prune and retrain, repeated), each step a
   gradual cut (Zhu & Gupta 2017) from the current per-layer sparsities to the next
   allocation's while retraining with distillation from the baseline (Hinton et al. 2015), then
   a validation check. A step that fails retrains further at the same masks (up to
   `recoveries` more rounds, each as long as the step); one that passes only so makes every
   later step twice as long (at most one pass over the training images). A step that still
   fails is dropped: the climb goes on from the last passing model with steps half as far, in
   log density (the back-off); a second failure ends it. The last passing model is kept.
   Before the first round, the climb's first targets are tried as one-shot cuts, nothing
   retrained, each kept while it passes the check: an over-parametrised model loses nothing at
   the first sparsities and spends no round on them; a compact one pays one validation pass.
   Departures from Han et al.: the per-layer levels come from the allocation, not one global s;
   the first cuts go unretrained while they pass, where they retrain after every cut.
4. Bits per layer (mixed precision): each layer's weights quantized alone (k-means, Han, Mao &
   Dally 2016) at each candidate width, validation accuracy measured; the layers' width steps
   are then taken together in order of insensitivity, and npdc.compress.backoff searches that
   ladder for the most aggressive candidate whose validation drop, after a brief centroid
   retraining, fits; the candidates of a round are independent jobs (npdc.jobs). Departure from
   a knapsack over the per-layer costs (as for pruning): the quantization costs of separate
   layers do not add up (layers harmless alone at 2 bits break the network together; see
   docs/perf.md), so every candidate is measured whole.

The pruning phase may spend `prune_share` of the budget; quantization the rest.
"""

import math
import time
from dataclasses import replace

import numpy as np

from npdc.compress.agp import LayerwisePruner
from npdc.compress.allocate import cheapest, drop_units
from npdc.compress.backoff import search
from npdc.compress.distill import Distillation
from npdc.compress.prune import (apply_masks, global_percentage_masks, masks_from_zeros, percentage_masks,
                                 prunable_layers, sparsity_table)
from npdc.compress.quantize import quantize_net
from npdc.compress.sensitivity import curves_of, sweep
from npdc.engine.resnet import clone_net
from npdc.engine.train import fit
from npdc.jobs import run_jobs
from npdc.progress import say
from npdc.pipeline.stages import quantize_stage, training_subset


class Gate:
    """Passing or not: a validation accuracy against the baseline's, within a drop in points,
    counted in whole units of what the accuracy is a fraction of (images, or pairs for
    verification): `correct` of `count` right for the baseline."""

    def __init__(self, correct, count, max_drop, units="images"):
        self.correct, self.count, self.max_drop, self.units = int(correct), int(count), float(max_drop), units

    @classmethod
    def of(cls, metric, baseline, max_drop):
        """The gate of a metric (npdc.engine.metrics) whose baseline score is `baseline`."""
        return cls(round(baseline * metric.count), metric.count, max_drop, metric.units)

    @property
    def baseline(self):
        return self.correct / self.count

    def allowed(self, share=1.0):
        """Units the model may lose against the baseline: floor(share * max_drop % of them)."""
        return int(math.floor(share * self.max_drop / 100 * self.count + 1e-9))

    def passes(self, accuracy, share=1.0):
        return self.correct - round(accuracy * self.count) <= self.allowed(share)

    def drop_points(self, accuracy):
        return 100 * (self.baseline - accuracy)


# -- 1. and 2.: sensitivity and allocation -------------------------------------------------------
def pruning_curves(teacher, metric, levels, layers, progress=True, executor=None):
    """The sensitivity sweep (percent levels) as {layer: (sparsity fractions from 0, accuracies)}
    plus the baseline's score, all by `metric`; its points are jobs on `executor`."""
    result = sweep(teacher, values=levels, by="sparsity", layers=layers, progress=progress,
                   executor=executor, metric=metric)
    return curves_of(result), result["baseline"]["accuracy"]


class Ladder:
    """Overall sparsity -> {layer: sparsity} (None when out of reach): the cheapest allocation on
    a grid of levels, each layer's measured accuracy interpolated between its swept levels
    (never beyond the last). Where the curves leave several allocations equally cheap (flat
    stretches), the one returned removes about what was asked, not more: levels are lowered,
    highest first, while the allocation still reaches the sparsity."""

    def __init__(self, curves, baseline, count, sizes, grid_step=0.025):
        self.layers, self.sizes = list(curves), dict(sizes)
        self.curves = {}
        for name, (levels, accs) in curves.items():
            grid = np.union1d(np.arange(0.0, max(levels) + 1e-9, grid_step), levels)
            self.curves[name] = (grid, drop_units(np.interp(grid, levels, accs), baseline, count))

    def __call__(self, sparsity, net=None):
        """(`net` is not read: the curves decide; GlobalCut's signature.)"""
        want = sparsity * sum(self.sizes.values())
        picks = cheapest(self.curves, self.sizes, [want])[0]
        if picks is None:
            return None
        gain = sum(self.curves[n][0][j] * self.sizes[n] for n, j in picks.items())
        while True:
            movable = [n for n, j in picks.items() if j > 0 and
                       gain - (self.curves[n][0][j] - self.curves[n][0][j - 1]) * self.sizes[n] >= want]
            if not movable:
                break
            n = max(movable, key=lambda n: (self.curves[n][0][picks[n]], -self.layers.index(n)))
            gain -= (self.curves[n][0][picks[n]] - self.curves[n][0][picks[n] - 1]) * self.sizes[n]
            picks[n] -= 1
        return {name: float(self.curves[name][0][j]) for name, j in picks.items()}


class GlobalCut:
    """Overall sparsity -> {layer: sparsity}: one magnitude threshold across the layers (the cut
    of global magnitude pruning), on the weights `net` holds when asked, so weights pruned
    before (zero) go first. Layers in `protect` stay dense and do not count towards the cut; a
    sparsity whose cut would leave a layer without weights is out of reach (None).
    The sweep decides what to protect (fragile_layers); the retraining decides the rest, which
    one-shot curves do not foresee: a large fully-connected layer whose curve falls fast alone
    recovers from a deep global cut in retraining, where the knapsack over the curves spares it
    and cuts the convolutions instead (the comparison that made this the default is in
    docs/perf.md)."""

    def __init__(self, layers, protect=()):
        self.layers, self.protect = list(layers), [n for n in layers if n in set(protect)]

    def __call__(self, sparsity, net):
        free = [n for n in self.layers if n not in self.protect]
        sizes = {n: net.layers[n].params["W"].size for n in self.layers}
        share = sparsity * sum(sizes.values()) / max(1, sum(sizes[n] for n in free))
        if not free or share >= 0.995:
            return None
        others = [n for n in prunable_layers(net) if n not in free]
        masks = global_percentage_masks(net, 100 * share, others)
        if any(not masks[f"{n}.W"].any() for n in free):
            return None  # the cut would empty a layer and disconnect the network: out of reach
        return {n: float(1.0 - masks[f"{n}.W"].mean()) for n in free}


def fragile_layers(curves, baseline, drop_points):
    """Layers that lose more than `drop_points` of one-shot accuracy at their lowest swept level."""
    return [n for n, (levels, accs) in curves.items() if 100 * (baseline - accs[1]) > drop_points]


# -- 3.: the climb -------------------------------------------------------------------------------
def retrain_step(student, teacher, x, y, targets, settings, batch_size, seed, progress,
                 teacher_outputs=None):
    """Prune `student` in place gradually from its current per-layer sparsity to `targets`
    while it retrains on (x, y) for one pass with distillation from `teacher`. When
    settings.augment is false, on the images as stored, with the teacher's outputs on them
    (`teacher_outputs`, Distillation.outputs_of; computed here when not given)."""
    rows, _ = sparsity_table(student)
    now = {r["layer"]: r["sparsity"] for r in rows}
    targets = {name: max(t, now[name]) for name, t in targets.items()}
    steps = -(-len(x) // batch_size)
    hook = LayerwisePruner(student, targets, steps, initial=now)
    objective = Distillation(teacher, settings.kd, settings.tau, hard_weight=settings.hard_weight)
    if not settings.augment and teacher_outputs is None:
        teacher_outputs = objective.outputs_of(x)
    fit(student, x, y if settings.labels else None, 1, batch_size=batch_size, lr=settings.lr,
        masks=masks_from_zeros(student), hook=hook, progress=progress, seed=seed, objective=objective,
        targets=None if settings.augment else teacher_outputs)
    final = hook.masks_at(hook.start + hook.n * hook.interval)
    for path, keep in final.items():
        student.params()[path] *= keep


def equivalent_s(W, sparsity):
    """The seed's per-layer s that prunes this fraction of W: the magnitude cut over std(W)."""
    std = float(np.std(W))
    if sparsity <= 0 or std == 0:
        return 0.0
    return float(np.quantile(np.abs(W), sparsity)) / std


def sparsity_of(net, layers):
    """The share of zeros among the weights of `layers` (sparsity_table's count, on a subset)."""
    rows = [r for r in sparsity_table(net)[0] if r["layer"] in set(layers)]
    return 1.0 - sum(r["nonzero"] for r in rows) / max(1, sum(r["weights"] for r in rows))


def _step_ratio(s, state, cfg):
    """The share of the weights left at sparsity `s` that the next step keeps: the first step's,
    the climb's, or the back-off's after a failure."""
    return state.get("ratio") or (1.0 - cfg.first_sparsity if s == 0 else cfg.density_ratio)


def _record(state, target, reached, gate, targets, checks, passed, seconds, images):
    """Append one climb step to state["tried"]: its target and reached sparsity, its validation
    checks (the last one decides), per-layer targets, time and retraining images."""
    accuracy = checks[-1]
    state["tried"].append({"target": target, "sparsity": reached, "val_accuracy": accuracy,
                           "drop_points": gate.drop_points(accuracy), "passed": passed, "seconds": seconds,
                           "layers": targets, "images": images, "checks": checks})


def _one_shot(best, metric, allocation, gate, cfg, state, save, time_left, timer, log):
    """The climb's first steps as one-shot cuts of `best` (no retraining), kept while each passes
    `gate`; marks the state (saved with the next step) so that a resumed run goes on from there.
    Returns the best net."""
    layers = allocation.layers
    while len(state["tried"]) < cfg.max_steps and time_left() > 0:
        started = timer()
        target = 1.0 - (1.0 - state["sparsity"]) * _step_ratio(state["sparsity"], state, cfg)
        targets = allocation(target, best) if target < 0.995 else None
        if targets is None:
            break
        candidate = clone_net(best)
        apply_masks(candidate, percentage_masks(candidate, 0.0, {n: (100 * t, False) for n, t in targets.items()}))
        accuracy = metric.score(candidate)
        if not gate.passes(accuracy, cfg.prune_share):
            log(f"one-shot cut to {100 * target:.1f} %: validation accuracy {accuracy:.4f} "
                f"({gate.drop_points(accuracy):+.2f} points); the climb retrains from here")
            break
        reached = sparsity_of(candidate, layers)
        _record(state, target, reached, gate, targets, [accuracy], True, timer() - started, 0)
        log(f"climb step {len(state['tried'])}: {100 * reached:.1f} % sparse by a one-shot cut, validation "
            f"accuracy {accuracy:.4f} ({gate.drop_points(accuracy):+.2f} points), kept")
        best, state["sparsity"] = candidate, reached
        save(state, best)
    state["one_shot"] = "done"
    return best


def climb(teacher, x, y, metric, allocation, gate, cfg, settings, state, save, time_left,
          best=None, batch_size=128, seed=0, log=say, progress=True, timer=time.perf_counter):
    """The climb of step 3 on training images (x, y), each step checked by `metric`'s score
    on the validation data it holds (npdc.engine.metrics) against `gate`. `state` (a
    JSON-able dict, {} to start) records every step; `save(state, best)` is called after each,
    with the best model so far (None when unchanged), so that a killed run resumes from `state`
    and `best`. Steps are timed by `timer` (seconds; the run's clock, which leaves Numba's
    compilation out, so that a first run prices its steps as a later one). Returns (best net,
    state with "stopped" saying why)."""
    layers = allocation.layers
    best = best or clone_net(teacher)
    whole = []  # the teacher's outputs on all of x, for rounds on all of it (without augmentation
    # they are the same in every such round: computed once, a fifth of a round saved each time)
    state.setdefault("tried", [])
    state.setdefault("failures", 0)
    state.setdefault("sparsity", sparsity_of(best, layers))
    if cfg.one_shot and "one_shot" not in state and "stopped" not in state:
        best = _one_shot(best, metric, allocation, gate, cfg, state, save, time_left, timer, log)
    while "stopped" not in state:
        step = len(state["tried"])
        s = state["sparsity"]
        ratio = _step_ratio(s, state, cfg)
        target = 1.0 - (1.0 - s) * ratio
        targets = allocation(target, best)
        # every step that passed only on a further round doubles the steps after it, up to one
        # pass over the training images
        images = min(len(x), cfg.step_images * 2 ** sum(t["passed"] and len(t["checks"]) > 1
                                                         for t in state["tried"]))
        trained = [t for t in state["tried"] if t["images"]]  # one-shot steps retrain nothing
        last = trained[-1]["seconds"] / trained[-1]["images"] * images if trained else 0.0
        why = ("steps" if step >= cfg.max_steps else "time" if time_left() <= last else
               "curves" if targets is None or target >= 0.995 else None)
        if why:
            state["stopped"] = why
            save(state, None)
            break
        started = timer()
        candidate = clone_net(best)
        checks = []
        while True:  # the step, then recovery rounds at the same masks while it fails
            rounds = len(checks)
            xs, ys = training_subset(x, y, images, seed + 1000 + step + 7919 * rounds)
            if xs is x and not settings.augment and not whole:
                whole.append(Distillation(teacher, settings.kd, settings.tau).outputs_of(x))
            retrain_step(candidate, teacher, xs, ys, targets, settings, batch_size,
                         seed + step + 7919 * rounds, progress,
                         teacher_outputs=whole[0] if xs is x and whole else None)
            accuracy = metric.score(candidate)
            checks.append(accuracy)
            ok = gate.passes(accuracy, cfg.prune_share)
            spent = (timer() - started) / len(checks)
            if ok or len(checks) > cfg.recoveries or time_left() <= spent:
                break
            log(f"climb step {step + 1}: validation accuracy {accuracy:.4f} "
                f"({gate.drop_points(accuracy):+.2f} points); retraining further")
        reached = sparsity_of(candidate, layers)
        _record(state, target, reached, gate, targets, checks, ok, timer() - started, images * len(checks))
        log(f"climb step {step + 1}: {100 * reached:.1f} % sparse, validation accuracy "
            f"{accuracy:.4f} ({gate.drop_points(accuracy):+.2f} points), {'kept' if ok else 'backed off'}")
        if ok:
            best, state["sparsity"] = candidate, reached
            save(state, best)
            continue
        state["failures"] += 1
        state["ratio"] = math.sqrt(ratio)  # half the way, in log density
        if state["failures"] >= 2:
            state["stopped"] = "accuracy"
        save(state, None)
    return best, state


# -- 4.: bits per layer ---------------------------------------------------------------------------
def _layer_at_bits(shared, job):
    """A job: the metric's units (images, pairs) right with layer `name` alone quantized to `bits`."""
    net, metric = shared
    name, bits = job
    copy = clone_net(net)
    quantize_net(copy, {name: bits}, layers=[name])
    return round(metric.score(copy) * metric.count)


def _candidate(shared, layer_bits):
    """A job: the metric's units right on the validation data once every layer is quantized as
    `layer_bits` says and the centroids are retrained briefly (one pass over the few training
    images in `shared`) with distillation, as the quantize stage will do at length."""
    net, teacher, x, y, metric, settings, batch_size = shared
    copy = clone_net(net)
    quantize_stage(copy, teacher, x, y, replace(settings, layer_bits=dict(layer_bits), train_images=0),
                   batch_size=batch_size, seed=0, progress=False)
    return round(metric.score(copy) * metric.count)


def bits_ladder(net, metric, layers, options, executor=None, progress=True, most=32):
    """Per-layer bit sensitivity by `metric` and the candidates it suggests, gentlest first.

    Each layer's width can step down the options (8 -> 6 -> 5 -> ...). The steps of all layers
    are put in order of how little each cost when its layer was quantized alone (ties: the step
    that saves the most bits first); candidate k takes the first k steps together. Costs
    measured one layer at a time do not add up (many layers each harmless alone can break the
    network together), so the ladder only orders the steps; the back-off (choose_bits) measures
    the candidates whole. At most `most` candidates, evenly spread over the steps, the first
    with every layer at the widest option. Returns (candidates, {layer: {bits: units right}})."""
    options = sorted(set(options), reverse=True)
    top, n = options[0], metric.count
    jobs = [(name, b) for name in layers for b in options[1:]]  # the widest is taken as lossless
    right = run_jobs(_layer_at_bits, (net, metric), jobs, executor, progress, desc="bit widths")
    baseline = round(metric.score(net) * n)
    table = {name: {top: baseline} for name in layers}
    for (name, b), r in zip(jobs, right):
        table[name][b] = r
    nonzero = {name: int(np.count_nonzero(net.layers[name].params["W"])) for name in layers}
    steps = []
    for name in layers:
        drops = drop_units([table[name][b] / n for b in options], baseline / n, n)
        for k in range(1, len(options)):
            saved = (options[k - 1] - options[k]) * nonzero[name]
            steps.append((int(drops[k]), -options[k], -saved, layers.index(name), name, options[k]))
    steps.sort()
    picks = sorted({round(i * len(steps) / (most - 1)) for i in range(most)}) if len(steps) >= most \
        else list(range(len(steps) + 1))
    candidates, bits = [], {name: top for name in layers}
    done = 0
    for k in picks:
        for *_, name, b in steps[done:k]:
            bits[name] = min(bits[name], b)
        done = k
        candidates.append(dict(bits))
    return candidates, {name: {str(b): r for b, r in t.items()} for name, t in table.items()}


def choose_bits(net, teacher, x, y, metric, candidates, gate, share, settings, batch_size=128,
                executor=None):
    """The most aggressive candidate whose score by `metric`, after a brief centroid
    retraining on (x, y) (settings: the QuantizeStage; none when its epochs are 0), passes the
    gate: a back-off search over the ladder, two candidates a round. Returns (index or None,
    Backoff)."""
    shared = (net, teacher, x, y, metric, settings, batch_size)

    def measure(indices):
        started = time.perf_counter()
        right = run_jobs(_candidate, shared, [candidates[i] for i in indices], executor)
        seconds = (time.perf_counter() - started) / max(1, len(indices))
        return [(r / metric.count, seconds) for r in right]
    found = search(len(candidates), measure, lambda result: gate.passes(result[0], share), width=2)
    return found.best, found
