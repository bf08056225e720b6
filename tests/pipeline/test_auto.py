"""The accuracy-budgeted search: the gate, the allocation ladder, the climb's back-off on a fake
evaluator, and a tiny searching run (decisions on validation images only, same seed same bytes,
a kill mid-climb resumed to the same bytes)."""

import json
import time
from dataclasses import replace
from types import SimpleNamespace

import numba
import numpy as np
import pytest

from npdc.compress.prune import percentage_masks, prunable_layers
from npdc.pipeline import auto
from npdc.engine.resnet import clone_net
from npdc.pipeline.auto_stages import Clock
from npdc.pipeline.auto import Gate, GlobalCut, Ladder, climb, fragile_layers, sparsity_of
from npdc.pipeline.run import run
from npdc.pipeline.schedule import PruneStage, SearchStage, load_schedule
from tests.conftest import tiny_model_and_data


def test_the_gate_counts_whole_images_within_the_budget():
    gate = Gate(correct=5400, count=6000, max_drop=0.3)  # 0.3 points of 6000 = 18 images
    assert gate.allowed() == 18 and gate.allowed(0.5) == 9
    assert gate.passes(5382 / 6000) and not gate.passes(5381 / 6000)
    assert gate.passes(5391 / 6000, 0.5) and not gate.passes(5390 / 6000, 0.5)
    assert gate.passes(5500 / 6000)  # better than the baseline passes
    assert gate.drop_points(5382 / 6000) == pytest.approx(0.3)


def test_a_verification_gate_counts_pairs_not_images(tiny):
    """30 images, 60 pairs: a 5-point budget is 3 pairs (it would be 1 image)."""
    from npdc.engine.metrics import PairVerification
    from npdc.engine.verification import make_pairs

    folder, data, net, _ = tiny
    x, y = data.x_train[:30], data.y_train[:30]
    metric = PairVerification(x, y, make_pairs(y, 60, seed=1))
    gate = Gate.of(metric, 48 / 60, max_drop=5.0)
    assert (gate.correct, gate.count, gate.units, gate.allowed()) == (48, 60, "pairs", 3)
    assert gate.passes(45 / 60) and not gate.passes(44 / 60)
    assert Gate.of(metric, metric.score(net), 5.0).baseline == pytest.approx(metric.score(net))


def test_the_ladder_spares_the_sensitive_layer_and_removes_what_is_asked():
    levels = [0.0, 0.5, 0.9]
    curves = {"tough": (levels, [1.0, 0.7, 0.2]), "easy": (levels, [1.0, 1.0, 0.99]),
              "flat": (levels, [1.0, 1.0, 1.0])}
    sizes = {"tough": 1000, "easy": 1000, "flat": 1000}
    ladder = Ladder(curves, 1.0, 100, sizes)
    for want in (0.3, 0.5, 0.6):
        got = ladder(want)
        removed = sum(got[n] * sizes[n] for n in sizes) / sum(sizes.values())
        assert want <= removed <= want + 0.025 / 3 + 1e-9  # not more than one grid step of a layer
        assert got["tough"] == 0.0  # the others reach it without touching the sensitive layer
    assert ladder(0.95) is None  # beyond the last swept level of every layer


def test_fragile_layers_are_those_hurt_at_the_lowest_level():
    curves = {"a": ([0.0, 0.5, 0.9], [0.9, 0.85, 0.5]), "b": ([0.0, 0.5, 0.9], [0.9, 0.895, 0.2])}
    assert fragile_layers(curves, 0.9, 1.0) == ["a"] and fragile_layers(curves, 0.9, 10.0) == []


def test_the_global_cut_keeps_protected_layers_dense_and_cuts_the_smallest_weights(tiny):
    folder, data, net, _ = tiny
    layers = prunable_layers(net)
    cut = GlobalCut(layers, protect=["conv1"])
    targets = cut(0.6, net)
    assert "conv1" not in targets and set(targets) == set(layers) - {"conv1"}
    sizes = {n: net.layers[n].params["W"].size for n in layers}
    overall = sum(targets[n] * sizes[n] for n in targets) / sum(sizes.values())
    assert overall == pytest.approx(0.6, abs=0.01)
    # one threshold: every weight kept in any layer is at least as large as any weight cut
    kept_min = min(np.sort(np.abs(net.layers[n].params["W"]).ravel())[int(round(t * sizes[n]))]
                   for n, t in targets.items() if t < 1)
    cut_max = max(np.sort(np.abs(net.layers[n].params["W"]).ravel())[int(round(t * sizes[n])) - 1]
                  for n, t in targets.items() if t > 0)
    assert cut_max <= kept_min
    assert cut(0.999, net) is None


def test_the_global_cut_never_empties_a_layer(tiny):
    """A layer of small weights falls whole under a deep cut's threshold: that sparsity is out
    of reach, not a target of 100 % for the layer (which would disconnect the network)."""
    folder, data, net, _ = tiny
    net = clone_net(net)
    layers = prunable_layers(net)
    small = layers[-1]
    net.layers[small].params["W"] *= 1e-6
    cut = GlobalCut(layers, protect=["conv1"])
    size = net.layers[small].params["W"].size
    share = size / sum(net.layers[n].params["W"].size for n in layers)
    reachable = cut(0.5 * share, net)
    assert reachable is not None and 0 < reachable[small] < 1
    assert cut(share + 0.05, net) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto")
    net, data = tiny_model_and_data(folder, 240, 60)
    schedule = folder / "s.toml"
    schedule.write_text("batch_size = 16\n[search]\nmax_drop = 5.0\nval_fraction = 0.1\nlevels = [50.0, 90.0]\n"
                        "bits = [3, 8]\nstep_images = 48\nsensitivity_images = 24\nmax_steps = 3\n"
                        "[quantize]\nepochs = 0\n")
    return folder, data, net, load_schedule(schedule)


class SparsityMetric:
    """A metric (npdc.engine.metrics' interface) that scores 1.0 while a net is at most `limit`
    sparse and loses one unit in ten beyond it."""
    name, units = "fake", "images"

    def __init__(self, limit, count=10):
        self.limit, self.count = limit, count

    def score(self, net):
        return 1.0 if sparsity_of(net, prunable_layers(net)) <= self.limit else 0.9


def _fake_training(monkeypatch):
    """retrain_step prunes straight to the targets."""
    def retrain(student, teacher, x, y, targets, settings, batch_size, seed, progress, teacher_outputs=None):
        masks = percentage_masks(student, 0.0, {n: (100 * t, False) for n, t in targets.items()})
        for path, keep in masks.items():
            student.params()[path] *= keep
    monkeypatch.setattr(auto, "retrain_step", retrain)


def _flat_ladder(net):
    layers = prunable_layers(net)
    sizes = {n: net.layers[n].params["W"].size for n in layers}
    return Ladder({n: ([0.0, 0.5, 0.98], [1.0, 1.0, 1.0]) for n in layers}, 1.0, 100, sizes)


def test_the_climb_keeps_the_last_passing_step_and_halves_a_failing_one(tiny, monkeypatch):
    folder, data, net, _ = tiny
    _fake_training(monkeypatch)
    cfg = SearchStage(max_drop=1.0, first_sparsity=0.5, density_ratio=0.5, max_steps=10)
    saved = []
    best, state = climb(net, data.x_train, data.y_train, SparsityMetric(0.85),
                        _flat_ladder(net), Gate(10, 10, 1.0), cfg, PruneStage(), {},
                        lambda s, b: saved.append(b is not None), lambda: 1.0, progress=False)
    t = state["tried"]
    # about 0.5 and 0.75 pass, 0.875 fails, then half the way in log density from 0.75
    assert t[0]["target"] == 0.5
    assert t[1]["target"] == pytest.approx(1 - (1 - t[0]["sparsity"]) * 0.5)
    assert t[2]["target"] == pytest.approx(1 - (1 - t[1]["sparsity"]) * 0.5)
    assert t[3]["target"] == pytest.approx(1 - (1 - t[1]["sparsity"]) * 0.5 ** 0.5)
    assert [t["passed"] for t in state["tried"]][:4] == [True, True, False, True]
    assert state["stopped"] == "accuracy" and state["failures"] == 2
    passed = [t["sparsity"] for t in state["tried"] if t["passed"]]
    assert sparsity_of(best, prunable_layers(best)) == pytest.approx(max(passed)) and max(passed) <= 0.85
    assert saved == [t["passed"] for t in state["tried"]] + [False] * (len(saved) - len(state["tried"]))


def test_a_failing_step_retrains_further_and_the_later_steps_grow_longer(tiny, monkeypatch):
    """A step beyond 60 % passes only on its second round of retraining at the same sparsity:
    the climb retrains it again instead of backing off, and every later step gets twice the
    images (never more than the training images); with no recoveries allowed, the same step
    backs off."""
    folder, data, net, _ = tiny
    rounds = []

    def retrain(student, teacher, x, y, targets, settings, batch_size, seed, progress, teacher_outputs=None):
        masks = percentage_masks(student, 0.0, {n: (100 * t, False) for n, t in targets.items()})
        for path, keep in masks.items():
            student.params()[path] *= keep
        rounds.append((round(sparsity_of(student, prunable_layers(student)), 3), len(x)))

    class SecondRoundMetric(SparsityMetric):
        def score(self, net):
            s = round(sparsity_of(net, prunable_layers(net)), 3)
            return 1.0 if s <= self.limit or [r[0] for r in rounds].count(s) >= 2 else 0.9
    monkeypatch.setattr(auto, "retrain_step", retrain)
    args = (net, data.x_train, data.y_train, SecondRoundMetric(0.6), _flat_ladder(net), Gate(10, 10, 1.0))
    cfg = SearchStage(first_sparsity=0.5, density_ratio=0.5, max_steps=3, step_images=24, one_shot=False)
    _, state = climb(*args, cfg, PruneStage(), {}, lambda s, b: None, lambda: 1.0, progress=False)
    t = state["tried"]
    assert [x["passed"] for x in t] == [True, True, True] and state["stopped"] == "steps"
    assert [len(x["checks"]) for x in t] == [1, 2, 2] and t[1]["checks"][0] < t[1]["checks"][1]
    assert [n for _, n in rounds] == [24, 24, 24, 48, 48]  # doubled after the recovered step
    assert [x["images"] for x in t] == [24, 48, 96]
    rounds.clear()
    n = len(data.x_train)  # a doubled step never asks for more than one pass over them
    _, state = climb(*args, replace(cfg, step_images=n - 1), PruneStage(), {}, lambda s, b: None,
                     lambda: 1.0, progress=False)
    assert [m for _, m in rounds] == [n - 1, n - 1, n - 1, n, n]
    assert [x["images"] for x in state["tried"]] == [n - 1, 2 * (n - 1), 2 * n]
    rounds.clear()
    _, state = climb(*args, replace(cfg, recoveries=0), PruneStage(), {}, lambda s, b: None,
                     lambda: 1.0, progress=False)
    assert [x["passed"] for x in state["tried"]][:2] == [True, False]
    assert state["tried"][2]["target"] < state["tried"][1]["target"]  # backed off


def test_the_first_steps_are_one_shot_cuts_while_they_pass(tiny, monkeypatch):
    """Before any retraining the climb's targets are cut one-shot and kept while they pass; the
    first that fails is retrained as a step of its own. Without the option every step retrains."""
    folder, data, net, _ = tiny
    rounds = []

    def retrain(student, teacher, x, y, targets, settings, batch_size, seed, progress, teacher_outputs=None):
        rounds.append(max(targets.values()))
        masks = percentage_masks(student, 0.0, {n: (100 * t, False) for n, t in targets.items()})
        for path, keep in masks.items():
            student.params()[path] *= keep

    class RetrainedMetric(SparsityMetric):  # beyond 60 % only a retrained net passes
        def score(self, net):
            s = sparsity_of(net, prunable_layers(net))
            return 1.0 if s <= 0.6 or (s <= self.limit and rounds) else 0.9
    monkeypatch.setattr(auto, "retrain_step", retrain)
    args = (net, data.x_train, data.y_train, RetrainedMetric(0.8), _flat_ladder(net), Gate(10, 10, 1.0))
    cfg = SearchStage(first_sparsity=0.5, density_ratio=0.5, max_steps=4)
    saved = []
    best, state = climb(*args, cfg, PruneStage(), {}, lambda s, b: saved.append(b is not None), lambda: 1.0,
                        progress=False)
    t = state["tried"]
    assert [x["images"] for x in t][:2] == [0, len(data.x_train)] and len(rounds) >= 1
    assert t[0]["target"] == 0.5 and t[1]["target"] == pytest.approx(1 - (1 - t[0]["sparsity"]) * 0.5)
    assert [x["passed"] for x in t][:2] == [True, True] and saved[0] is True
    rounds.clear()
    _, state = climb(*args, replace(cfg, one_shot=False), PruneStage(), {}, lambda s, b: None, lambda: 1.0,
                     progress=False)
    assert all(x["images"] > 0 for x in state["tried"]) and len(rounds) >= len(state["tried"])


def test_the_climb_stops_on_time_and_on_its_step_count(tiny, monkeypatch):
    folder, data, net, _ = tiny
    _fake_training(monkeypatch)
    args = (net, data.x_train, data.y_train, SparsityMetric(0.99), _flat_ladder(net), Gate(10, 10, 1.0))
    _, state = climb(*args, SearchStage(max_steps=2), PruneStage(), {}, lambda s, b: None, lambda: 1.0,
                     progress=False)
    assert len(state["tried"]) == 2 and state["stopped"] == "steps"
    _, state = climb(*args, SearchStage(), PruneStage(), {}, lambda s, b: None, lambda: 0.0, progress=False)
    assert state["tried"] == [] and state["stopped"] == "time"


@pytest.mark.parametrize("metric", ["accuracy", "verification"])
def test_a_searching_run_decides_on_validation_images_only(tiny, monkeypatch, metric):
    """Every evaluation the search makes (sensitivity, climb, bits) reads training images held
    out from retraining, by the metric asked for; the test split is only read for the report.
    Verification's gate counts pairs drawn from the validation images, not the images."""
    import dataclasses

    from npdc.engine import metrics
    from npdc.pipeline import auto_stages

    folder, data, net, schedule = tiny
    schedule = dataclasses.replace(schedule, search=dataclasses.replace(schedule.search, metric=metric))
    test_rows = {row.tobytes() for row in data.x_test}
    seen = {"evaluate": [], "verify_net": []}

    def spy(name):
        real = getattr(metrics, name)

        def wrapped(net, x, *a, **k):
            seen[name].append(any(row.tobytes() in test_rows for row in x))
            return real(net, x, *a, **k)
        monkeypatch.setattr(metrics, name, wrapped)
    spy("evaluate")
    spy("verify_net")
    result = run(folder / "m.h5", data, schedule, folder / f"v-{metric}.npdc", folder / f"wv-{metric}",
                 progress=False, log=lambda *_: None)
    used, unused = ("verify_net", "evaluate") if metric == "verification" else ("evaluate", "verify_net")
    assert len(seen[used]) > 10 and not any(seen[used]) and not seen[unused]
    assert auto_stages.searching(schedule)
    search = result["search"]
    assert search["metric"] == metric and search["val_images"] == 24
    # 24 validation images in 3 classes: one pair per image, in whole folds of a same and a different pair
    assert (search["val_count"], search["val_units"]) == ((20, "pairs") if metric == "verification" else (24, "images"))


@pytest.mark.parametrize("metric", ["accuracy", "verification"])
def test_a_searching_run_is_reproducible_and_resumes_mid_climb_to_the_same_bytes(tiny, monkeypatch, metric):
    import dataclasses

    from npdc.pipeline import auto_stages

    folder, data, net, schedule = tiny
    schedule = dataclasses.replace(schedule, search=dataclasses.replace(schedule.search, metric=metric))
    folder = folder / f"resume-{metric}"
    folder.mkdir()
    model = folder.parent / "m.h5"
    whole = folder / "whole.npdc"
    result = run(model, data, schedule, whole, folder / "ww", progress=False, log=lambda *_: None)
    again = folder / "again.npdc"
    run(model, data, schedule, again, folder / "wa", progress=False, log=lambda *_: None)
    assert whole.read_bytes() == again.read_bytes()
    steps = result["search"]["prune"]["climb"]["tried"]
    assert steps and result["search"]["bits"]["layer_bits"] and result["search"]["metric"] == metric

    calls = []
    real_climb = auto_stages.climb

    def killed_after_one_step(*a, **k):
        save = a[9]

        def save_then_die(s, best):
            save(s, best)
            calls.append(len(s["tried"]))
            if len(s["tried"]) == 1:
                raise KeyboardInterrupt
        return real_climb(*a[:9], save_then_die, *a[10:], **k)
    monkeypatch.setattr(auto_stages, "climb", killed_after_one_step)
    cut = folder / "cut.npdc"
    with pytest.raises(KeyboardInterrupt):
        run(model, data, schedule, cut, folder / "wc", progress=False, log=lambda *_: None)
    assert calls == [1]  # killed right after the first step was saved
    state = json.loads((folder / "wc" / "state.json").read_text())
    assert len(state["partial"]["prune"]["tried"]) == 1 and "prune" not in state["done"]
    monkeypatch.setattr(auto_stages, "climb", real_climb)
    resumed = run(model, data, schedule, cut, folder / "wc", progress=False, log=lambda *_: None)
    assert cut.read_bytes() == whole.read_bytes()

    def measured(tried):  # what was measured, without how long it took
        return [{k: v for k, v in t.items() if k != "seconds"} for t in tried]
    assert measured(resumed["search"]["prune"]["climb"]["tried"]) == measured(steps)


def test_max_drop_and_time_budget_reach_the_schedule_and_bad_values_are_refused(tmp_path, capsys):
    from tests.conftest import assert_one_line_error, run_cli

    s = load_schedule(None, "auto", {"search": {"max_drop": 1.0, "time_budget": 3.0}})
    assert s.search.max_drop == 1.0 and s.search.time_budget == 3.0 and s.prune.method == "auto"
    assert load_schedule(None, "auto").search.max_drop == 0.3
    for flag, value in (("--max-drop", "-1"), ("--time-budget", "-5"), ("--max-drop", "nan")):
        code, _, err = run_cli(["compress", flag, value, "--report", str(tmp_path / "r")], capsys)
        assert assert_one_line_error(code, err)


def test_the_bits_ladder_takes_the_cheapest_steps_first_and_only_narrows(tiny, monkeypatch):
    """Layers alone: 'res5b_2b' costs nothing down to 2 bits, 'conv1' loses images at every
    step. The candidates narrow monotonically, the first all at 8 bits, the last all at 2, and
    the harmless layer reaches 2 bits before conv1 leaves 8."""
    folder, data, net, _ = tiny
    layers = ["conv1", "res5b_2b", "fc6"]
    cost = {"conv1": {6: 3, 5: 6, 4: 9, 3: 12, 2: 15}, "res5b_2b": {b: 0 for b in (2, 3, 4, 5, 6)},
            "fc6": {6: 0, 5: 0, 4: 1, 3: 2, 2: 8}}
    monkeypatch.setattr(auto, "run_jobs", lambda fn, shared, jobs, *a, **k: [100 - cost[n][b] for n, b in jobs])
    candidates, table = auto.bits_ladder(net, SparsityMetric(1.0, count=100), layers, [2, 3, 4, 5, 6, 8],
                                         progress=False)
    assert candidates[0] == {n: 8 for n in layers} and candidates[-1] == {n: 2 for n in layers}
    for before, after in zip(candidates, candidates[1:]):
        assert all(after[n] <= before[n] for n in layers) and after != before
    first_conv1_step = next(i for i, c in enumerate(candidates) if c["conv1"] < 8)
    assert candidates[first_conv1_step - 1]["res5b_2b"] == 2 and candidates[first_conv1_step - 1]["fc6"] <= 3
    assert table["conv1"]["6"] == 97 and table["conv1"]["8"] == 100


def test_the_sweep_cache_is_reused_and_a_damaged_one_is_swept_again(tiny, monkeypatch):
    """A second run with another budget reads the cached sweep; a cache holding NaN (or anything
    out of [0, 1]) is not trusted and the layers are swept again."""
    import dataclasses

    from npdc.pipeline import auto_stages

    folder, data, net, schedule = tiny
    sweeps = []
    real = auto_stages.pruning_curves
    monkeypatch.setattr(auto_stages, "pruning_curves", lambda *a, **k: sweeps.append(1) or real(*a, **k))
    work = folder / "wcache"

    def compress(max_drop):
        s = dataclasses.replace(schedule, search=dataclasses.replace(schedule.search, max_drop=max_drop))
        run(folder / "m.h5", data, s, folder / "c.npdc", work, progress=False, log=lambda *_: None)
    compress(5.0)
    compress(4.0)
    assert len(sweeps) == 1
    cache = next(work.glob("sensitivity-*.json"))
    text = json.loads(cache.read_text())
    first = next(iter(text["curves"]))
    text["curves"][first][1][1] = float("nan")
    cache.write_text(json.dumps(text))
    compress(3.0)
    assert len(sweeps) == 2
    assert all(v == v for c in json.loads(cache.read_text())["curves"].values() for v in c[1])


def test_rounds_on_all_training_images_share_the_teachers_outputs(tiny, monkeypatch):
    """Without augmentation, every round that retrains on the whole training split reads the
    teacher's outputs computed once for the climb: the teacher sees each image once in all, and
    the climb ends with the model of rounds that each ask the teacher themselves."""
    folder, data, net, _ = tiny
    x, y = data.x_train[:64], data.y_train[:64]
    settings = PruneStage(augment=False, lr=0.01)
    cfg = SearchStage(first_sparsity=0.3, density_ratio=0.7, max_steps=2, step_images=len(x), one_shot=False)
    args = (net, x, y, SparsityMetric(0.99), _flat_ladder(net), Gate(10, 10, 1.0), cfg, settings)
    seen = []
    forward = net.forward

    def counted(inputs, *a, **k):
        if not k.get("train"):
            seen.append(len(inputs))
        return forward(inputs, *a, **k)
    monkeypatch.setattr(net, "forward", counted)
    shared, state = climb(*args, {}, lambda s, b: None, lambda: 1e9, batch_size=16, progress=False)
    assert [t["passed"] for t in state["tried"]] == [True, True]
    assert sum(seen) == len(x)  # once, though two rounds retrained on all 64 images
    real = auto.retrain_step

    def asking(*a, teacher_outputs=None, **k):
        return real(*a, **k)
    monkeypatch.setattr(auto, "retrain_step", asking)
    seen.clear()
    alone, _ = climb(*args, {}, lambda s, b: None, lambda: 1e9, batch_size=16, progress=False)
    assert sum(seen) == 3 * len(x)  # the climb's once, and each round's own
    for path, value in shared.params().items():
        np.testing.assert_array_equal(value, alone.params()[path], err_msg=path)


@pytest.mark.parametrize("augment", [True, False])
def test_centroid_retraining_augments_only_when_asked(tiny, monkeypatch, augment):
    """[quantize] augment = false (the auto preset, like its climb) retrains the centroids on
    the images as stored; the quantized weights still share their centroids afterwards."""
    from npdc.pipeline import stages
    from npdc.pipeline.schedule import QuantizeStage
    folder, data, net, _ = tiny
    seen = []
    real = stages.fit

    def spy(*a, **k):
        seen.append(k.get("augment_pad"))
        return real(*a, **k)
    monkeypatch.setattr(stages, "fit", spy)
    student, quantized, _ = stages.quantize_stage(clone_net(net), net, data.x_train[:32], data.y_train[:32],
                                                  QuantizeStage(augment=augment, conv_bits=3, fc_bits=3),
                                                  batch_size=16, progress=False)
    assert seen == [None if augment else 0]
    for path, q in quantized.items():
        assert len(np.unique(student.params()[path])) <= len(q.codebook) + 1


def test_the_clock_leaves_numba_compilation_out():
    """The budget's clock does not count Numba compiling (a first run decides as a later one),
    and a kernel compiled inside another's compilation is counted once."""
    @numba.njit  # a new function each run: it has to compile (nothing cached)
    def inner(x):
        return np.sqrt(x) + np.sin(x)

    @numba.njit
    def outer(x):
        total = 0.0
        for i in range(x.size):
            total += inner(x[i])
        return total

    clock = Clock(1.0, SimpleNamespace(partial={}))
    outer(np.arange(4.0))
    compiled = clock.compiling()
    assert 0 < compiled <= time.monotonic() - clock.start  # counted, and nested holds once
    outer(np.arange(4.0))  # compiled: nothing more is left out
    assert clock.compiling() == compiled
    before = time.monotonic() - clock.start - compiled  # the clock's account, bracketed: no speed asserted
    counted = clock.elapsed()
    assert before <= counted <= time.monotonic() - clock.start - compiled


def test_a_centroid_retraining_that_leaves_the_budget_gives_way_to_the_measured_candidate(tiny, monkeypatch):
    """When the quantize stage's long centroid retraining ends outside the budget on validation,
    the file holds the chosen candidate quantized and retrained as the bit search measured it
    (its few images, seed 0), not the model of the long retraining."""
    import dataclasses

    from npdc.pipeline import auto_stages

    folder, data, net, schedule = tiny
    schedule = dataclasses.replace(schedule, quantize=dataclasses.replace(schedule.quantize, epochs=1))
    real_gate, calls = auto_stages._gate, []

    def strict_gate(r):  # the long retraining's model is judged against a baseline no model reaches
        gate = real_gate(r)  # (a perfect one can be matched: 24 validation images can all be right)
        return Gate(gate.count + 1, gate.count, 0.0) if not calls else gate
    real_stage = auto_stages.quantize_stage

    def recorded(student, teacher, x, y, stage, **k):
        calls.append((len(x), stage.train_images, k["seed"]))
        return real_stage(student, teacher, x, y, stage, **k)
    monkeypatch.setattr(auto_stages, "_gate", strict_gate)
    monkeypatch.setattr(auto_stages, "quantize_stage", recorded)
    logged = []
    result = run(folder / "m.h5", data, schedule, folder / "guard.npdc", folder / "wguard", progress=False,
                 log=logged.append)
    assert any("over the budget" in line for line in logged)
    images = min(schedule.search.bits_train_images, len(data.x_train) - 24)
    assert calls == [(images, 0, 0)]  # the candidate's brief retraining, as measured
    assert (folder / "guard.npdc").exists() and result["size_after_bytes"] > 0
