"""The public Python API: what the command line does, as functions (objects in, objects out).

This is npdc's stable surface, re-exported as `npdc.load_model`, `npdc.compress`, ... (see
npdc/__init__.py); every other module is internal and may change. Each subcommand of the command
line is a thin layer over one of these functions, so the two give the same results.

- A model is a Net (from `load_model`) or the path of a model file; `.npdc` files are read where
  a function can use one. Data is a Dataset (from `load_dataset`), anything `load_dataset`
  accepts (a shipped name, an IDX or CIFAR folder, a .npz or .h5 path) or, where one split is
  read, an (images, labels) pair.
- Nothing is printed unless `progress=True`; then progress and stage messages go to stderr
  (npdc/progress.py decides how: bars on a terminal, one line per stage or epoch elsewhere).
- A user mistake raises npdc.UserError with the one-line message the command line prints;
  anything else is a bug.
- Files are written atomically and never over an input (npdc/paths.py).
"""

import json
import os
from dataclasses import replace
from pathlib import Path

from npdc import __version__, plots
from npdc.atomic import write_text
from npdc.codec.model import load_compressed
from npdc.compress.prune import check_layer_names
from npdc.compress.sensitivity import suggest, sweep
from npdc.engine.images import check_fits
from npdc.engine.net import Net
from npdc.engine.train import evaluate as accuracy_of, evaluate_model
from npdc.engine.verification import check_embedding, check_pairs, verify_net
from npdc.errors import UserError
from npdc.evaluate import evaluate_compressed, int8_scales, verification_before_after
from npdc.io import datasets, modelfile, onnx_import, torch_import
from npdc.io.export import EXPORTERS
from npdc.io.pairs import read_pairs
from npdc.paths import check_paths
from npdc.pipeline.run import run
from npdc.pipeline.schedule import PruneStage, Schedule, load_schedule, validate_schedule
from npdc.pipeline.stages import prune_stage
from npdc.progress import shown
from npdc.report import build_report, format_markdown, standard_error


# -- models and data ---------------------------------------------------------------------------
def load_model(path):
    """The Net stored at `path`: a model file (.h5), or a .npdc file decoded to dense weights."""
    if _is_npdc(path):
        return load_compressed(path)[0]
    return modelfile.load_model(path)


def save_model(path, model, meta=None):
    """Write the Net `model` to `path` (.h5, atomically); `meta`: a JSON-able dict kept with it."""
    modelfile.save_model(path, _net(model), meta)
    return Path(path)


def load_dataset(spec, *, shape=None, resize=None):
    """A Dataset (x_train, y_train, x_test, y_test; a missing split is None) from a shipped name,
    an image folder (train/CLASS/*.jpg|png, val/..., needs npdc[images]), an IDX or CIFAR-10
    folder, or a .npz / .h5 file; a Dataset is returned as it is. For an image folder, shape
    (C, H, W) fixes the channels and centre crop and resize the shorter side before the crop;
    left out, they follow the model each function is given (its input, crop * 256/224)."""
    if isinstance(spec, datasets.Dataset):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise UserError(f"a dataset is a name, a path or a Dataset, not {type(spec).__name__}")
    return datasets.load_dataset(str(spec), shape, resize)


# -- measuring ---------------------------------------------------------------------------------
def evaluate(model, data, *, batch_size=256, weights="sparse", baseline=None, pairs=None, embedding=None,
             progress=False, executor=None, shared=None, walk=None, precision="float", calibration=256,
             calibration_method="minmax"):
    """Figures of a model on a test split, as a dict.

    A Net or .h5 file runs in the engine: accuracy, loss, images, params, size_bytes, macs,
    images_per_s. A .npdc file runs in the small-memory runtime with `weights` (dense, stream,
    sparse, or auto: each layer dense or sparse, whichever measured faster), walked by `walk`
    (compiled or python; npdc.runtime.infer.choose_walk) and also gives size, peak memory (M and
    m), batch-1 latency, the score (against the accuracy of `baseline`, a Net or .h5 file, when
    given), each layer's kernel, the layers that ran sparse and the conv primitives it ran.
    pairs (a pairs file of the test split, or Pairs) adds verification accuracy by LFW's 10-fold
    protocol on the embeddings of layer `embedding` (default: the classifier's input), and
    makes it the score's z. executor (npdc.cluster) shares a Net's test set out over a cluster,
    with `shared` (a npdc.jobs.Loaded recipe) in place of the arrays when given.
    precision "int8" runs a .npdc file in integers (npdc.runtime.int8) with the activation scales
    the file stores (`[encode] int8 = true`), else scales calibrated on `calibration` training
    images of `data` by `calibration_method` (minmax or percentile).
    """
    if _is_npdc(model):
        net, codes = load_compressed(model)
    else:
        if precision != "float":
            raise UserError("--precision int8 runs a .npdc file; a .h5 model runs in the engine in float")
        net = _net(model)
    x, y = _split(data, "test", net.in_shape)
    check_fits(net, x, y)
    pairs = _test_pairs(pairs, embedding, x, y)
    with shown(progress):
        if not _is_npdc(model):
            r = evaluate_model(net, x, y, batch_size, progress=progress, executor=executor, shared=shared)
            return {**r, **verify_net(net, x, pairs, embedding, batch_size)} if pairs is not None else r
        before = None
        if baseline is not None:
            base = _net(baseline)
            check_fits(base, x, y)
            before = accuracy_of(base, x, y)["accuracy"] if pairs is None else \
                verify_net(base, x, pairs, embedding)["verification_accuracy"]
        scales = source = None
        if precision == "int8":
            scales, source = int8_scales(model, net, data, calibration, calibration_method)
        return evaluate_compressed(str(model), net, codes, x, y, weights, batch_size, before,
                                   pairs=pairs, layer=embedding, walk=walk, precision=precision,
                                   scales=scales, scales_source=source)


def _test_pairs(pairs, embedding, x, y):
    """Pairs as given, or read from a pairs file and checked against the test split; None
    without pairs (when an embedding without pairs is a mistake)."""
    if pairs is None:
        if embedding is not None:
            raise UserError("--embedding needs --pairs")
        return None
    if isinstance(pairs, (str, os.PathLike)):
        return read_pairs(pairs, len(x), y)
    check_pairs(pairs, len(x), y)
    return pairs


def sensitivity(model, data, *, by="s", values=None, layers=None, granularity="element", split="train",
                val_size=2000, budget=0.005, progress=False, executor=None, shared=None):
    """Prune each layer alone at each of `values` (of s, or of sparsity in percent: `by`),
    evaluate, restore; returns {"baseline", "by", "layers": {name: [{value, sparsity, accuracy,
    loss}]}, "suggested": {name: largest value within `budget`}, "budget"}.

    Evaluated on the last `val_size` training images (split="train") or the test split; executor
    (npdc.cluster) runs the sweep's points as jobs on a cluster, shared a Loaded recipe for them.
    """
    net = _net(model)
    if isinstance(data, tuple) or split == "test":
        x, y = _split(data, split, net.in_shape)
    else:
        x, y = load_dataset(data).fit_to(net.in_shape).require("train")
        x, y = x[-val_size:], y[-val_size:]
    check_fits(net, x, y)
    if layers:
        check_layer_names(net, layers)
    with shown(progress):
        result = sweep(net, x, y, values, by, layers, granularity, progress=progress, executor=executor,
                       shared=shared)
    result["suggested"] = suggest(result, budget)
    result["budget"] = budget
    return result


# -- compressing -------------------------------------------------------------------------------
def prune(model, data, *, s=None, sparsity=None, schedule=None, target=None, layer_s="",
          granularity="element", agp_scope="global", kd="kl", tau=4.0, hard_weight=0.0, on="logits",
          labels=True, kd_layer="", kd_layer_loss="cosine", kd_layer_weight=1.0, epochs=2, batch_size=128,
          lr=0.005, seed=0, progress=False):
    """Prune a copy of `model` and retrain it with the original as teacher; returns (pruned Net,
    record). The rule is one of: s (threshold std(W)*s per layer), sparsity (that percentage of
    every layer), schedule="agp" with target (gradual pruning to `target` percent). kd_layer
    (e.g. "fc5") adds a distillation term on that layer's output (kd_layer_loss l2 or cosine,
    weighted by kd_layer_weight) beside the logit loss. The record
    has the per-layer sparsity and, when the data has a test split, accuracy_before and
    accuracy_after on it."""
    if sum(v is not None for v in (s, sparsity, schedule)) != 1:
        raise UserError("give exactly one pruning rule: s, sparsity or schedule='agp'")
    if schedule is not None and schedule != "agp":
        raise UserError(f"unknown pruning schedule {schedule!r}; known: agp")
    if schedule == "agp":
        if target is None:
            raise UserError("--schedule agp needs --target P (the final sparsity in percent)")
        if not 0 < target < 100:
            raise UserError(f"--target must be between 0 and 100 (percent), not {target}")
    teacher = _net(model)
    data = load_dataset(data).fit_to(teacher.in_shape)
    x, y = data.require("train")
    check_fits(teacher, x, y)
    method = "std" if s is not None else "percent" if sparsity is not None else "agp"
    stage = PruneStage(method=method, target=sparsity if method == "percent" else target or 0.0,
                       s=s or 0.0, layer_s=layer_s, granularity=granularity, agp_scope=agp_scope,
                       epochs=epochs, lr=lr, kd=kd, tau=tau, hard_weight=hard_weight, on=on,
                       kd_layer=kd_layer, kd_layer_loss=kd_layer_loss, kd_layer_weight=kd_layer_weight,
                       labels=labels, keep_first=False)
    with shown(progress):
        student, record = prune_stage(teacher, x, y, stage, batch_size, seed, progress=progress)
        if data.x_test is not None:
            record["accuracy_before"] = accuracy_of(teacher, data.x_test, data.y_test)["accuracy"]
            record["accuracy_after"] = accuracy_of(student, data.x_test, data.y_test)["accuracy"]
    return student, record


def compress(model, data="fashion-mnist", *, schedule=None, preset="auto", out=None, report="compressed",
             progress=False, max_drop=None, time_budget=None, metric=None, pairs=None, embedding=None,
             executor=None):
    """Deep Compression of `model` (a model file, or a Net, which is first written to
    REPORT/model.h5): pruning with distillation, quantization, Huffman coding into the .npdc file
    `out` (default REPORT/MODEL.npdc), then decoding and evaluating that file.

    schedule: a TOML schedule file overriding `preset` ("auto", the accuracy-budgeted search,
    or the fixed "fast" and "full") key by key, or a Schedule. max_drop (points) and time_budget
    (minutes) override the schedule's [search] settings, and so do metric ("accuracy", top-1 on
    the validation images, or "verification", LFW's protocol on pairs drawn from them: the budget
    is then points of verification accuracy) and embedding (the layer verification compares;
    default the classifier's input). pairs: a pairs file of the test split (or Pairs) that the
    report measures verification on, before and after, and scores by; it never decides anything.
    Each finished stage is checkpointed in
    REPORT/.work-MODEL/, so the same call after a kill resumes. Writes REPORT/report.json and
    REPORT/report.md (and the search's PNG figures when matplotlib is installed) and returns the
    report.json dict (accuracies before, pruned and after, sizes, ratio, score, per-layer table,
    totals, schedule, the search's record under "search", `file`, the .npdc written, and with
    pairs "verification": the test pairs' figures before and after).
    """
    report_dir = Path(report)
    model_path = report_dir / "model.h5" if isinstance(model, Net) else Path(model)
    out = Path(out) if out else report_dir / f"{model_path.stem}.npdc"
    config = schedule if isinstance(schedule, (str, os.PathLike)) else None
    pairs_path = pairs if isinstance(pairs, (str, os.PathLike)) else None
    check_paths([model_path, data if isinstance(data, (str, os.PathLike)) else None, config, pairs_path],
                [("--out", out)] + [("--report", report_dir / n) for n in ("report.json", "report.md")],
                [("--report", report_dir)])
    if isinstance(model, Net):
        save_model(model_path, model)
    search = {k: v for k, v in (("max_drop", max_drop), ("time_budget", time_budget), ("metric", metric),
                                ("embedding", embedding)) if v is not None}
    if not isinstance(schedule, Schedule):
        schedule = load_schedule(config, preset, {"search": search} if search else None)
    elif search:
        schedule = replace(schedule, search=replace(schedule.search, **search))
        validate_schedule(schedule)
    teacher = modelfile.load_model(model_path)
    data = load_dataset(data).fit_to(teacher.in_shape)
    for split in ("train", "test"):
        check_fits(teacher, *data.require(split))
    x_test, y_test = data.require("test")
    layer = schedule.search.embedding or None
    if layer is not None:
        check_embedding(teacher, layer)
        if pairs is None and schedule.search.metric != "verification":
            raise UserError("--embedding needs --pairs or --metric verification")
    test_pairs = _test_pairs(pairs, None, x_test, y_test)
    with shown(progress):
        result = run(model_path, data, schedule, out, report_dir / f".work-{model_path.stem}",
                     progress=progress, executor=executor)
        verification = None if test_pairs is None else \
            verification_before_after(out, teacher, x_test, test_pairs, layer)
    n = len(y_test)
    result.update(accuracy_images=n, accuracy_before_se=standard_error(result["accuracy_before"], n),
                  accuracy_after_se=standard_error(result["accuracy_after"], n))
    if verification is None:
        page = build_report(out, teacher, result["accuracy_before"], result["accuracy_after"], images=n)
    else:
        verification.update(top1_before=result["accuracy_before"], top1_after=result["accuracy_after"])
        page = build_report(out, teacher, verification["before"]["verification_accuracy"],
                            verification["after"]["verification_accuracy"], images=verification["pairs"],
                            metric="verification")
        result["verification"] = page["verification"] = verification
    result.update(score=page["score"]["score"], score_accuracy=page["accuracy_metric"], layers=page["layers"],
                  totals=page["totals"], memory_method=page["memory_method"], file=str(out))
    page["schedule"], page["stage_seconds"] = result["schedule"], result["stage_seconds"]
    page["compile_seconds"] = result.get("compile_seconds")
    if "search" in result:
        result["search"]["figures"] = plots.search_figures(result["search"], report_dir)
        if plots.missing():
            result["search"]["figures_missing"] = plots.missing()
        page["search"] = result["search"]
    write_text(report_dir / "report.json", json.dumps(result, indent=1, sort_keys=True, default=float))
    write_text(report_dir / "report.md", format_markdown(page))
    return result


def decompress(path, out=None):
    """The dense Net of the .npdc file at `path`; also written to `out` (.h5) when given."""
    if out is not None:
        check_paths([path], [("--out", out)])
    net, _ = load_compressed(path)
    if out is not None:
        modelfile.save_model(out, net, {"decompressed_from": str(path), "npdc_version": __version__})
    return net


# -- other formats -----------------------------------------------------------------------------
def import_checkpoint(path, arch=None, *, mean=None, std=None, input_shape=None):
    """A Net of architecture `arch` (None: recognised from the checkpoint's names and shapes)
    from a PyTorch checkpoint (zip or legacy; only tensors and plain containers are unpickled),
    or, for a path ending in .onnx, the graph net of an ONNX model (needs npdc[onnx]; no arch).
    mean and std (per channel, images on the [0, 1] scale) become its input normalisation;
    input_shape is (C, H, W)."""
    if str(path).lower().endswith(".onnx"):
        if arch is not None:
            raise UserError("an ONNX model brings its own graph: leave out --arch")
        return onnx_import.import_onnx(path, mean, std, input_shape)
    return torch_import.import_checkpoint(path, arch, mean, std, input_shape)


def export(model, out, format="npz"):
    """Write `model` (a Net, a model file, or a .npdc file, decoded to its quantized weights) to
    `out` as `format` says: "npz", one plain array per path (`res2a_2a.W`, ...); "onnx", a graph
    ONNX Runtime and other runtimes load (needs npdc[onnx]); "torch", a state_dict with
    torchvision's names in PyTorch's zip format. Returns the number of arrays."""
    if format not in EXPORTERS:
        raise UserError(f"unknown export format {format!r}; known: {', '.join(EXPORTERS)}")
    check_paths([model if isinstance(model, (str, os.PathLike)) else None], [("--out", out)])
    net = _net(model)
    EXPORTERS[format](net, out)
    return len(net.state_dict())


# -- helpers -----------------------------------------------------------------------------------
def _is_npdc(model):
    return isinstance(model, (str, os.PathLike)) and str(model).endswith(".npdc")


def _net(model):
    if isinstance(model, Net):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise UserError(f"a model is a Net or the path of a model file, not {type(model).__name__}")
    return load_compressed(model)[0] if _is_npdc(model) else load_model(model)


def _split(data, split, shape):
    """(images, labels) of one split, an image folder's made for a model taking `shape`; a
    pair is taken as it is."""
    if isinstance(data, tuple) and len(data) == 2:
        return data
    return load_dataset(data).fit_to(shape).require(split)
