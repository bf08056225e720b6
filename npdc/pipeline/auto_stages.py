"""The searching stages of a compress run (prune.method = "auto", quantize.widths = "auto"):
npdc.pipeline.auto's search wired to the run's splits, checkpoints and clock.

The pruning sensitivity sweep is cached in the work folder under a name made of what it depends
on (the model's bytes, the validation images, the levels), so a second run on the same model,
with another budget or schedule, does not sweep again. The climb saves every passing step's
model and its state, so a killed run goes on from its last step.
"""

import hashlib
import json
import time
from dataclasses import replace

import numpy as np
from numba.core import event

from npdc.atomic import write_text
from npdc.compress.prune import prunable_layers
from npdc.io.modelfile import load_model, save_model
from npdc.pipeline.auto import (Gate, GlobalCut, Ladder, bits_ladder, choose_bits, climb, equivalent_s,
                               fragile_layers, pruning_curves)
from npdc.pipeline.stages import quantize_stage, training_subset


def searching(schedule):
    return schedule.prune.method == "auto" or schedule.quantize.widths == "auto"


class CompileSeconds(event.Listener):
    """Seconds Numba has held its compiler lock in this process (typing, compiling, writing and
    reading its cache), outermost holds only (a kernel compiles the kernels it calls inside its
    own), from Numba's event API."""

    def __init__(self):
        self.depth, self.total, self.opened = 0, 0.0, 0.0

    def on_start(self, ev):
        if self.depth == 0:
            self.opened = time.monotonic()
        self.depth += 1

    def on_end(self, ev):
        self.depth -= 1
        if self.depth == 0:
            self.total += time.monotonic() - self.opened

    def now(self):
        """The total, with a compilation still going counted up to now."""
        return self.total + (time.monotonic() - self.opened if self.depth else 0.0)


_COMPILING = []


def compile_seconds():
    """The process's CompileSeconds, registered with Numba on first use."""
    if not _COMPILING:
        _COMPILING.append(CompileSeconds())
        event.register("numba:compiler_lock", _COMPILING[0])
    return _COMPILING[0]


class Clock:
    """The run's time against schedule.search.time_budget (minutes, 0 = none), counted across
    resumed runs: the time already spent is kept with the checkpoints. Numba's compilation is not
    counted (it is paid once per installation, on a first run): a first run and a later one make
    the same decisions on the same machine; `compiling()` gives what was left out."""

    def __init__(self, budget_minutes, ck):
        self.budget, self.ck = 60.0 * budget_minutes, ck
        self.before = float(ck.partial.get("_clock", {}).get("elapsed", 0.0))
        self.compile = compile_seconds()
        self.start, self.compiled = time.monotonic(), self.compile.now()

    def compiling(self):
        """Seconds of Numba compilation since this clock started."""
        return self.compile.now() - self.compiled

    def elapsed(self):
        return self.before + time.monotonic() - self.start - self.compiling()

    def left(self):
        return self.budget - self.elapsed() if self.budget else float("inf")

    def save(self):
        self.ck.mark_partial("_clock", {"elapsed": self.elapsed()})


def _gate(r):
    return Gate.of(r.metric, r.ck.done["baseline"]["val_accuracy"], r.schedule.search.max_drop)


def _searched_layers(r):
    return [n for n in prunable_layers(r.teacher) if n not in set(r.schedule.keep)]


def _digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def cached_curves(r, layers):
    """The pruning sensitivity of `layers` by the run's metric on the first
    search.sensitivity_images validation images (for verification, on pairs drawn from them),
    from the work folder's cache when it holds this sweep. Returns (curves, baseline score,
    units counted)."""
    cfg = r.schedule.search
    metric = r.metric.subset(cfg.sensitivity_images)
    key = _digest(r.ck.key["model"], metric.digest(), sorted(cfg.levels), layers)
    path = r.work / f"sensitivity-{key}.json"
    try:
        cached = json.loads(path.read_text())
        curves = {n: (list(map(float, c[0])), list(map(float, c[1]))) for n, c in cached["curves"].items()}
        values = [float(cached["baseline"])] + [v for c in curves.values() for part in c for v in part]
        if list(curves) == layers and all(0.0 <= v <= 1.0 for v in values):  # NaN fails too
            return curves, float(cached["baseline"]), metric.count
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass  # no cache, or one that cannot be trusted: sweep again
    curves, baseline = pruning_curves(r.teacher, metric, sorted(cfg.levels), layers, r.progress, r.executor)
    write_text(path, json.dumps({"curves": curves, "baseline": baseline}))
    return curves, baseline, metric.count


def auto_prune(r):
    """(pruned student, record): the sensitivity sweep, then the climb, resumed if it was cut."""
    cfg, layers = r.schedule.search, _searched_layers(r)
    curves, baseline, count = cached_curves(r, layers)
    if cfg.allocation == "knapsack":
        sizes = {n: r.teacher.layers[n].params["W"].size for n in layers}
        allocation = Ladder(curves, baseline, count, sizes)
    else:
        allocation = GlobalCut(layers, fragile_layers(curves, baseline, cfg.protect_drop))
    state = dict(r.ck.partial.get("prune", {}))
    best = load_model(r.work / state["best_file"]) if state.get("best_file") else None

    def save(state, net):
        if net is not None:
            state["best_file"] = f"climb-{len(state['tried'])}.h5"
            save_model(r.work / state["best_file"], net, {"stage": "climb"})
        r.ck.mark_partial("prune", state)
        r.clock.save()

    def time_left():  # the climb leaves a quarter of the budget to the stages after it
        return r.clock.left() - 0.25 * r.clock.budget

    student, state = climb(r.teacher, r.x, r.y, r.metric, allocation, _gate(r), cfg,
                           r.schedule.prune, state, save, time_left, best, r.schedule.batch_size,
                           r.schedule.seed, r.log, r.progress, timer=r.clock.elapsed)
    return student, {"curves": curves, "curve_count": count, "curve_units": r.metric.units, "climb": state,
                     "protected": list(getattr(allocation, "protect", []))}


def mean_bits(layer_bits, nonzero):
    """Bits per surviving weight, weighted by how many survive in each layer."""
    return sum(layer_bits[n] * nonzero[n] for n in layer_bits) / max(1, sum(nonzero.values()))


def layer_choices(teacher, student, layer_bits, keep):
    """The seed's per-layer table of a searched run: sparsity, the equivalent s and bits."""
    rows = []
    for name in prunable_layers(teacher):
        W, kept = teacher.layers[name].params["W"], student.layers[name].params["W"]
        sparsity = 1.0 - np.count_nonzero(kept) / kept.size
        rows.append({"layer": name, "sparsity": sparsity, "s": equivalent_s(W, sparsity),
                     "bits": None if name in keep else layer_bits.get(name)})
    return rows


def brief_retraining(r, stage):
    """(settings, x, y) of the centroid retraining a bit-width candidate is judged after: `stage`
    (none when search.bits_train_images is 0) on the search's few training images."""
    n = r.schedule.search.bits_train_images
    xs, ys = training_subset(r.x, r.y, n or 1, r.schedule.seed + 2)
    return (stage if n else replace(stage, epochs=0)), xs, ys


def auto_bits(r):
    """{"layer_bits": the chosen bits, "candidates": the ladder, "tried": measured candidates}."""
    cfg = r.schedule.search
    student = load_model(r.work / "pruned.h5")
    read = r.metric.reads(student)  # layers the metric cannot see (a classifier after the
    # embedding it verifies on) keep the widest width: the search could not protect them
    fixed = {**{n: max(cfg.bits) for n in _searched_layers(r) if n not in read}, **r.schedule.quantize.layer_bits}
    layers = [n for n in _searched_layers(r) if n not in fixed]
    candidates, table = bits_ladder(student, r.metric.subset(cfg.sensitivity_images), layers, cfg.bits,
                                    r.executor, r.progress)
    candidates = [{**c, **fixed} for c in candidates]
    gate = _gate(r)
    settings, xs, ys = brief_retraining(r, r.schedule.quantize)
    index, found = choose_bits(student, r.teacher, xs, ys, r.metric, candidates, gate,
                               1.0 - cfg.margin, settings, r.schedule.batch_size, r.executor)
    nonzero = {n: int(np.count_nonzero(student.layers[n].params["W"])) for n in candidates[0]}
    tried = [{"candidate": c, "mean_bits": mean_bits(candidates[c], nonzero), "val_accuracy": acc,
              "drop_points": gate.drop_points(acc), "passed": ok, "seconds": seconds}
             for c, (acc, seconds), ok in found.tried]
    if index is None:
        r.log(f"no bit allocation passed on validation; keeping the widest ({max(cfg.bits)} bits)")
        index = 0
    chosen = candidates[index]
    r.log(f"bit widths: candidate {index + 1} of {len(candidates)} "
          f"({', '.join(f'{b} bits x{list(chosen.values()).count(b)}' for b in sorted(set(chosen.values())))})")
    return {"layer_bits": chosen, "candidates": candidates, "tried": tried, "curves": table,
            "chosen": index}


def guarded_quantize(r, stage, student, quantized, record):
    """The quantize stage's result, unless its long centroid retraining left the model outside
    the budget on validation (at 2-3 bits it can diverge); then the chosen candidate as the bit
    search measured it, passing (its brief retraining on the same images and seed), in its place."""
    gate = _gate(r)
    accuracy = r.metric.score(student)
    if gate.passes(accuracy):
        return student, quantized, record
    r.log(f"centroid retraining ended {gate.drop_points(accuracy):+.2f} points from the baseline on "
          f"validation, over the budget: keeping the bit search's briefly retrained model instead")
    settings, xs, ys = brief_retraining(r, stage)
    student, quantized, brief = quantize_stage(load_model(r.work / "pruned.h5"), r.teacher, xs, ys,
                                               replace(settings, train_images=0), batch_size=r.schedule.batch_size,
                                               seed=0, progress=False, keep=tuple(r.schedule.keep))
    return student, quantized, {**brief, "retraining_over_budget": accuracy}
