"""`python -m npdc SUBCOMMAND`: parse arguments, call one library function, print the result.

A user mistake (a UserError, or bad arguments) is one line on stderr and exit code 2.
"""

import argparse
import functools
import json
import sys
import time

from npdc import __version__
from npdc.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the full usage stays in --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _non_negative_int(text):
    return _positive_int(text) if text.strip() != "0" else 0


def _floats(text):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


GRANULARITY_CHOICES = ["element", "vector", "kernel", "filter"]


def _shape(text):
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W with three positive integers")
    return [int(p) for p in parts]


def _threads(value):
    from npdc.threads import set_threads

    return set_threads(value)


def _print_json(obj):
    print(json.dumps(obj, sort_keys=True))


def _table(rows, columns):
    """Plain-text table: columns is a list of (header, key, format)."""
    cells = [[h for h, _, _ in columns]] + [[fmt.format(r[k]) for _, k, fmt in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


# -- train ---------------------------------------------------------------------------------------
def cmd_train(args):
    from npdc.engine.resnet import ARCHITECTURES
    from npdc.engine.train import evaluate_model, train_model
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import save_model

    if args.arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {args.arch!r}; known: {', '.join(ARCHITECTURES)}")
    data = load_dataset(args.data)
    x, y = data.require("train")
    spec = {"arch": args.arch, "input_shape": list(data.image_shape), "num_classes": data.num_classes}
    if args.width is not None:
        if args.arch != "resnet18":
            raise UserError("--width applies to the resnet18 family only")
        spec["width"] = args.width
    threads = _threads(args.threads)
    hyper = dict(batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                 weight_decay=args.weight_decay, schedule=args.schedule,
                 augment_pad=args.augment_pad)
    t0 = time.time()
    net, history = train_model(spec, x, y, args.epochs, seed=args.seed, **hyper)
    meta = {"command": "python -m npdc " + " ".join(sys.argv[1:]), "npdc_version": __version__,
            "dataset": data.name, "seed": args.seed, "epochs": args.epochs, "threads": threads,
            "train_seconds": round(time.time() - t0, 1), "history": history, **hyper}
    if data.x_test is not None:
        result = evaluate_model(net, data.x_test, data.y_test, progress=True)
        meta["test_accuracy"] = result["accuracy"]
        print(f"test accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}")
    save_model(args.out, net, meta)
    print(f"wrote {args.out}")


# -- evaluate ------------------------------------------------------------------------------------
def cmd_evaluate(args):
    from npdc.engine.train import evaluate_model
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import load_model

    if str(args.model).endswith(".npdc"):
        return _evaluate_npdc(args)
    net = load_model(args.model)
    data = load_dataset(args.data)
    x, y = data.require("test")
    _check_images(net, x, y)
    _threads(args.threads)
    r = evaluate_model(net, x, y, args.batch_size, progress=not args.json)
    print(f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  on {r['images']} test images")
    print(f"parameters {r['params']:,}  float32 size {r['size_bytes']:,} B  MACs/image {r['macs']:,}")
    print(f"{r['images_per_s']:.0f} images/s")
    if args.json:
        _print_json(r)


def _evaluate_npdc(args):
    from npdc.codec.model import load_compressed
    from npdc.engine.train import evaluate
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import load_model
    from npdc.evaluate import evaluate_compressed

    data = load_dataset(args.data)
    x, y = data.require("test")
    net, codes = load_compressed(args.model)
    _check_images(net, x, y)
    _threads(args.threads)
    before = evaluate(load_model(args.baseline), x, y)["accuracy"] if args.baseline else None
    r = evaluate_compressed(args.model, net, codes, x, y, args.weights, args.batch_size, before)
    print(f"accuracy {r['accuracy']:.4f} on {r['images']} test images ({r['weights']} weights)")
    print(f"size {r['size_bytes']:,} B (float32 {r['size_before_bytes']:,} B)  peak memory "
          f"{r['peak_memory_bytes']:,} B (naive float32 {r['baseline_peak_memory_bytes']:,} B)  "
          f"peak RSS {r['peak_rss_bytes']:,} B")
    print(f"{r['images_per_s']:.0f} images/s at batch {args.batch_size}  batch-1 latency "
          f"{r['latency_ms_b1']:.2f} ms  score {r['score']:.2f} (accuracy reference: {r['accuracy_reference']})")
    if r["primitives"]:
        print("conv primitives: " + ", ".join(f"{n} {p}" for n, p in r["primitives"].items()))
    if args.json:
        _print_json({k: v for k, v in r.items() if k != "score_parts"})


# -- infer ---------------------------------------------------------------------------------------
def cmd_infer(args):
    from npdc.evaluate import predict_file

    _threads(args.threads)
    n = predict_file(args.model, args.input, args.out, args.weights, args.batch_size)
    print(f"wrote logits and classes of {n} images to {args.out}")


# -- info ----------------------------------------------------------------------------------------
def cmd_info(args):
    from npdc.io.modelfile import load_model, read_meta

    from npdc.compress.prune import sparsity_table

    net = load_model(args.model)
    meta = read_meta(args.model)
    pruned, total = sparsity_table(net)
    by_layer = {r["layer"]: r for r in pruned}
    rows = []
    for r in net.summary():
        p = by_layer.get(r["name"])
        rows.append({**r, "shape": "x".join(str(d) for d in r["shape"]),
                     "nonzero": f"{p['nonzero']:,}" if p else "",
                     "sparsity": f"{100 * p['sparsity']:.1f}%" if p else ""})
    print(_table(rows, [("layer", "name", "{}"), ("kind", "kind", "{}"), ("output", "shape", "{}"),
                        ("params", "params", "{:,}"), ("non-zero W", "nonzero", "{}"),
                        ("sparsity", "sparsity", "{}"), ("MACs", "macs", "{:,}")]))
    print(f"\n{net.spec['arch']}: {net.num_params():,} parameters, {net.macs():,} MACs per image; "
          f"conv/linear weights {total['nonzero']:,} of {total['weights']:,} non-zero "
          f"({100 * total['sparsity']:.1f}% sparse)")
    if "test_accuracy" in meta:
        print(f"test accuracy at save: {meta['test_accuracy']:.4f} ({meta.get('dataset', '?')})")


# -- sensitivity ---------------------------------------------------------------------------------
def _held_out(data, split, size):
    """The evaluation images of a sweep: the last `size` of the training split (default), or the
    test split."""
    if split == "test":
        return data.require("test")
    x, y = data.require("train")
    return x[-size:], y[-size:]


def cmd_sensitivity(args):
    from npdc.compress.prune import check_layer_names
    from npdc.compress.sensitivity import format_table, suggest, sweep
    from npdc.atomic import write_text
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import load_model

    net = load_model(args.model)
    x, y = _held_out(load_dataset(args.data), args.split, args.val_size)
    _check_images(net, x, y)
    layers = [n.strip() for n in args.layers.split(",")] if args.layers else None
    if layers:
        check_layer_names(net, layers)
    _threads(args.threads)
    result = sweep(net, x, y, args.values, args.by, layers, args.granularity, progress=not args.json)
    result["suggested"] = suggest(result, args.budget)
    result["budget"] = args.budget
    print(format_table(result))
    print("suggested per-layer " + args.by + ": " +
          ",".join(f"{k}={v:g}" for k, v in result["suggested"].items()))
    if args.out:
        write_text(args.out, json.dumps(result, indent=1, sort_keys=True))
        print(f"wrote {args.out}")
    if args.json:
        _print_json(result)


# -- prune ---------------------------------------------------------------------------------------
def cmd_prune(args):
    from npdc.compress.agp import GradualPruner
    from npdc.compress.distill import prune_and_retrain
    from npdc.compress.prune import (check_layer_names, filter_masks_complete, parse_layer_s,
                                     percentage_masks, sparsity_table, threshold_masks)
    from npdc.compress.thin import thin_filters
    from npdc.engine.train import evaluate
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import load_model, save_model

    teacher = load_model(args.model)
    data = load_dataset(args.data)
    x, y = data.require("train")
    _check_images(teacher, x, y)
    overrides = parse_layer_s(args.layer_s)
    check_layer_names(teacher, overrides)
    _threads(args.threads)
    masks, gradual = None, None
    if args.s is not None:
        masks = threshold_masks(teacher, args.s, overrides, args.granularity)
    elif args.sparsity is not None:
        masks = percentage_masks(teacher, args.sparsity, overrides, args.granularity)
    else:
        if args.target is None:
            raise UserError("--schedule agp needs --target P (the final sparsity in percent)")
        if not 0 < args.target < 100:
            raise UserError(f"--target must be between 0 and 100 (percent), not {args.target}")
        steps = args.epochs * -(-len(x) // args.batch_size)
        exclude = [n for n, (v, _) in overrides.items() if v == 0]
        gradual = functools.partial(GradualPruner, target=args.target / 100, total_steps=steps,
                                    per_layer=args.agp_scope == "layer", exclude=exclude,
                                    granularity=args.granularity)
    if masks is not None and args.granularity == "filter":
        masks = filter_masks_complete(teacher, masks)
    labels = None if args.unlabeled else y
    student, masks, history = prune_and_retrain(
        teacher, x, labels, masks, gradual, kd=None if args.kd == "none" else args.kd, tau=args.tau,
        hard_weight=args.hard_weight, on=args.on, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed)
    report = {}
    if args.granularity == "filter":
        student, report = thin_filters(student)
        for name, what in report.items():
            print(f"{name}: {what if isinstance(what, str) else f'{what[0]} of {what[1]} filters kept'}")
    rows, total = sparsity_table(student)
    print(_table([{**r, "pct": 100 * r["sparsity"]} for r in rows],
                 [("layer", "layer", "{}"), ("weights", "weights", "{:,}"), ("non-zero", "nonzero", "{:,}"),
                  ("sparsity", "pct", "{:.1f}%")]))
    print(f"overall: {total['nonzero']:,} of {total['weights']:,} weights non-zero "
          f"({100 * total['sparsity']:.2f}% sparse)")
    result = {"sparsity": total["sparsity"], "layers": rows, "thinned": report, "history": history}
    if data.x_test is not None:
        result["accuracy_before"] = evaluate(teacher, data.x_test, data.y_test)["accuracy"]
        result["accuracy_after"] = evaluate(student, data.x_test, data.y_test)["accuracy"]
        print(f"test accuracy: baseline {result['accuracy_before']:.4f}, "
              f"pruned {result['accuracy_after']:.4f}")
    meta = {"command": "python -m npdc " + " ".join(sys.argv[1:]), "npdc_version": __version__,
            "pruned_from": str(args.model), **{k: v for k, v in result.items() if k != "layers"}}
    save_model(args.out, student, meta)
    print(f"wrote {args.out}")
    if args.json:
        _print_json({k: v for k, v in result.items() if k != "history"})


def _check_images(net, x, y):
    if tuple(x.shape[1:]) != net.in_shape:
        raise UserError(f"dataset images are {tuple(x.shape[1:])}, the model expects {net.in_shape}")
    classes = net.shapes[net.output][0]
    if y is not None and len(y) and int(y.max()) >= classes:
        raise UserError(f"dataset has label {int(y.max())}, the model has {classes} classes")


# -- compress ------------------------------------------------------------------------------------
DEFAULT_MODEL = "data/models/fmnist-resnet18.h5"


def cmd_compress(args):
    from pathlib import Path

    from npdc.compress.pipeline import load_schedule, run
    from npdc.atomic import write_text
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import load_model
    from npdc.report import build_report, format_markdown

    model = Path(args.model)
    if args.model == DEFAULT_MODEL and not model.is_file():
        model = Path(__file__).resolve().parents[1] / DEFAULT_MODEL  # run from anywhere
    schedule = load_schedule(args.config, args.preset)
    data = load_dataset(args.data)
    report_dir = Path(args.report)
    out = Path(args.out) if args.out else report_dir / f"{model.stem}.npdc"
    _threads(args.threads)
    result = run(model, data, schedule, out, report_dir / f".work-{model.stem}")
    report = build_report(out, load_model(model), result["accuracy_before"], result["accuracy_after"])
    result.update(score=report["score"]["score"], layers=report["layers"], totals=report["totals"],
                  memory_method=report["memory_method"])
    report["schedule"] = result["schedule"]
    write_text(report_dir / "report.json", json.dumps(result, indent=1, sort_keys=True, default=float))
    write_text(report_dir / "report.md", format_markdown(report))
    print(format_markdown(report))
    print(f"accuracy {result['accuracy_before']:.4f} -> {result['accuracy_after']:.4f}; "
          f"size {result['size_before_bytes']:,} -> {result['size_after_bytes']:,} B "
          f"({result['ratio']:.1f}x smaller); score {result['score']:.1f}")
    print(f"wrote {out}, {report_dir / 'report.md'} and {report_dir / 'report.json'}")


# -- report --------------------------------------------------------------------------------------
def cmd_report(args):
    from npdc.io.modelfile import load_model
    from npdc.report import build_report, format_markdown

    baseline = load_model(args.baseline) if args.baseline else None
    _threads(args.threads)
    before = after = None
    if args.data:
        from npdc.codec.model import load_compressed
        from npdc.engine.train import evaluate
        from npdc.io.datasets import load_dataset

        x, y = load_dataset(args.data).require("test")
        after = evaluate(load_compressed(args.model)[0], x, y)["accuracy"]
        before = evaluate(baseline, x, y)["accuracy"] if baseline else None
    report = build_report(args.model, baseline, before, after, args.preset)
    print(format_markdown(report))
    if args.json:
        _print_json(report)


# -- decompress ----------------------------------------------------------------------------------
def cmd_decompress(args):
    from npdc.codec.model import load_compressed
    from npdc.io.modelfile import save_model

    net, _ = load_compressed(args.model)
    save_model(args.out, net, {"decompressed_from": str(args.model), "npdc_version": __version__})
    print(f"wrote {args.out}")


# -- speed ---------------------------------------------------------------------------------------
def cmd_speed(args):
    from npdc.engine.conv_plan import conv_layers
    from npdc.engine.resnet import build_net
    from npdc.engine.speed import measure_speed
    from npdc.io.modelfile import load_model

    if bool(args.arch) == bool(args.model):
        raise UserError("give either --arch or --model")
    spec = {"arch": args.arch}
    if args.input_shape:
        spec["input_shape"] = args.input_shape
    net = load_model(args.model) if args.model else build_net(spec)
    arch = net.spec["arch"]
    threads = _threads(args.threads)
    r = measure_speed(net, args.batch_size, args.repeats)
    r.update(arch=arch, threads=threads, primitives={n: layer.ran for n, layer in conv_layers(net)})
    print(f"{arch}, batch {args.batch_size}, {threads} threads")
    print(f"train {r['train_img_s']:.1f} images/s  inference {r['infer_img_s']:.1f} images/s  "
          f"batch-1 latency {r['b1_latency_ms']:.2f} ms")
    print("conv primitives: " + ", ".join(f"{n} {p}" for n, p in r["primitives"].items()))
    if args.json:
        _print_json(r)


# -- import / export -----------------------------------------------------------------------------
def cmd_import(args):
    from npdc.io.modelfile import save_model
    from npdc.io.torch_import import import_checkpoint

    net = import_checkpoint(args.checkpoint, args.arch, args.mean, args.std, args.input_shape)
    meta = {"command": "python -m npdc " + " ".join(sys.argv[1:]), "npdc_version": __version__,
            "imported_from": str(args.checkpoint)}
    print(f"{args.checkpoint} -> {net.spec['arch']}: {net.num_params():,} parameters, "
          f"input {'x'.join(map(str, net.in_shape))}, {net.shapes[net.output][0]} classes")
    if args.mean is None and args.std is None:
        print("no --mean/--std given: the model sees pixels scaled to [0, 1]")
    if args.data:
        from npdc.engine.train import evaluate
        from npdc.io.datasets import load_dataset

        x, y = load_dataset(args.data).require("test")
        _check_images(net, x, y)
        _threads(args.threads)
        meta["test_accuracy"] = evaluate(net, x, y)["accuracy"]
        print(f"test accuracy {meta['test_accuracy']:.4f} on {len(y)} images")
    save_model(args.out, net, meta)
    print(f"wrote {args.out}")


def cmd_export(args):
    from npdc.io.export import EXPORTERS
    from npdc.io.modelfile import load_model

    net = load_model(args.model)
    EXPORTERS[args.format](net, args.out)
    print(f"wrote {args.out} ({len(net.state_dict())} arrays)")


# -- tune ----------------------------------------------------------------------------------------
def cmd_tune(args):
    from npdc.engine.conv_plan import tune_net
    from npdc.io.modelfile import load_model, write_plan

    net = load_model(args.model)
    threads = _threads(args.threads)
    plan, timings = tune_net(net, args.batch_size, args.mode, cache=not args.no_cache)
    names = sorted({p for t in timings.values() for p in t})
    rows = [{"layer": n, "plan": plan[n], **{p: f"{1e3 * t[p]:.2f}" if p in t else "-" for p in names}}
            for n, t in timings.items()]
    print(f"{args.mode} time per layer (ms), batch {args.batch_size}, {threads} threads")
    print(_table(rows, [("layer", "layer", "{}")] + [(p, p, "{}") for p in names] + [("plan", "plan", "{}")]))
    write_plan(args.model, plan)
    print(f"wrote the plan into {args.model}")
    if args.json:
        _print_json({"plan": plan, "timings": timings})


# -- wiring --------------------------------------------------------------------------------------
def build_parser():
    p = _Parser(prog="npdc", description="NumPy Deep Compression: train, evaluate and compress "
                                         "ResNets without a deep-learning framework.")
    p.add_argument("--version", action="version", version=f"npdc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def threads_arg(s):
        s.add_argument("--threads", type=_positive_int, default=2, help="threads for kernels and BLAS (default 2)")
        s.add_argument("--primitive", default=None, help="run every engine conv that accepts it with "
                       "this primitive (direct, flat, polyphase, im2col, kn2row, winograd2, winograd4, fft); "
                       "the .npdc runtime runs engine primitives only with dense weights at batch > 1")

    s = sub.add_parser("train", help="train a model from scratch",
                       description="Train a ResNet with SGD; the same seed gives the same model.")
    s.add_argument("--arch", required=True, help="architecture name, e.g. resnet18, cifar-resnet20")
    s.add_argument("--data", required=True, help="shipped dataset name, IDX folder, .npz or .h5")
    s.add_argument("--out", required=True, help="model file to write (.h5)")
    s.add_argument("--epochs", type=_positive_int, default=10)
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    s.add_argument("--momentum", type=float, default=0.9)
    s.add_argument("--weight-decay", type=float, default=5e-4)
    s.add_argument("--schedule", choices=["cosine", "step"], default="cosine")
    s.add_argument("--augment-pad", type=int, default=None,
                   help="random-crop padding in pixels (default H/8; 0 disables crop and flip)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--width", type=_positive_int, default=None, help="resnet18 family: channels of stage 2")
    threads_arg(s)
    s.set_defaults(func=cmd_train)

    def weights_arg(s):
        s.add_argument("--weights", choices=["dense", "stream", "sparse"], default="sparse",
                       help=".npdc runtime: weights decoded to float32 once (dense), decoded layer by "
                            "layer as the pass reaches them (stream), or used as non-zeros and "
                            "codebook indices (sparse, default)")

    s = sub.add_parser("evaluate", help="accuracy and figures of a model on a test split",
                       description="A .h5 model runs in the engine; a .npdc file runs in the "
                                   "small-memory runtime and also reports size, peak memory, "
                                   "batch-1 latency and the score.")
    s.add_argument("model", help="model file (.h5 or .npdc)")
    s.add_argument("--data", required=True)
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    weights_arg(s)
    s.add_argument("--baseline", default=None,
                   help=".npdc: the uncompressed model (.h5) whose accuracy the score compares with")
    threads_arg(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("infer", help="logits and classes of images, from a .npdc file",
                       description="Run the compressed model on images (N x C x H x W or N x H x W, "
                                   "uint8 or float, in a .npz as x, x_test or images), normalised "
                                   "as the model stores; writes logits and classes to a .npz.")
    s.add_argument("model", help="compressed model (.npdc)")
    s.add_argument("input", help="images (.npz)")
    s.add_argument("--out", required=True, help="predictions to write (.npz)")
    s.add_argument("--batch-size", type=_positive_int, default=128)
    weights_arg(s)
    threads_arg(s)
    s.set_defaults(func=cmd_infer)

    s = sub.add_parser("info", help="per-layer table of a model file")
    s.add_argument("model")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("sensitivity", help="per-layer pruning sensitivity sweep",
                       description="Prune each layer alone at a sweep of s (or sparsity), evaluate on "
                                   "held-out images, restore; suggest a per-layer s for a budget.")
    s.add_argument("model")
    s.add_argument("--data", required=True)
    s.add_argument("--by", choices=["s", "sparsity"], default="s",
                   help="sweep the threshold multiplier s (default) or the sparsity in percent")
    s.add_argument("--values", type=_floats, default=None, help="comma-separated sweep values")
    s.add_argument("--layers", default=None, help="comma-separated layer names (default: all)")
    s.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="element")
    s.add_argument("--split", choices=["train", "test"], default="train",
                   help="evaluate on the last --val-size training images (default) or the test split")
    s.add_argument("--val-size", type=_positive_int, default=2000)
    s.add_argument("--budget", type=float, default=0.005,
                   help="accuracy drop allowed per layer for the suggestion (fraction, default 0.005)")
    s.add_argument("--out", default=None, help="write the sweep as JSON here")
    s.add_argument("--json", action="store_true")
    threads_arg(s)
    s.set_defaults(func=cmd_sensitivity)

    s = sub.add_parser("prune", help="prune a model and retrain it with distillation",
                       description="Prune by threshold std(W)*s, by percentage, or gradually (AGP), "
                                   "then retrain with the unpruned model as teacher.")
    s.add_argument("model")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    rule = s.add_mutually_exclusive_group(required=True)
    rule.add_argument("--s", type=float, help="threshold = std(W) * s in every layer")
    rule.add_argument("--sparsity", type=float, help="prune this percentage of every layer")
    rule.add_argument("--schedule", choices=["agp"], help="prune gradually during retraining")
    s.add_argument("--target", type=float, help="AGP: final sparsity in percent")
    s.add_argument("--agp-scope", choices=["layer", "global"], default="global",
                   help="AGP: every layer to the target, or one cut across layers (default)")
    s.add_argument("--layer-s", default="",
                   help="per-layer overrides, numbers or multiples: conv1=0,fc5=2x")
    s.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="element")
    s.add_argument("--kd", choices=["kl", "l2", "cosine", "none"], default="kl",
                   help="distillation loss (default kl; none = labels only)")
    s.add_argument("--tau", type=float, default=4.0, help="distillation temperature (default 4)")
    s.add_argument("--hard-weight", type=float, default=0.0, help="weight of the label loss")
    s.add_argument("--on", default="logits", help="distil on logits (default) or a layer, e.g. fc5")
    s.add_argument("--unlabeled", action="store_true", help="ignore the training labels")
    s.add_argument("--epochs", type=_non_negative_int, default=2)
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--lr", type=float, default=0.005, help="retraining learning rate (default 0.005)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    threads_arg(s)
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("compress", help="prune, quantize and encode a model into a .npdc file",
                       description="Deep Compression in one command: baseline -> gradual pruning with "
                                   "distillation -> k-means quantization with centroid retraining -> "
                                   "Huffman-coded .npdc -> decode and verify. Re-running the same "
                                   "command after a kill resumes after the last finished stage.")
    s.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model file (default {DEFAULT_MODEL})")
    s.add_argument("--data", default="fashion-mnist", help="dataset (default fashion-mnist)")
    s.add_argument("--config", default=None, help="TOML schedule overriding the preset")
    s.add_argument("--preset", choices=["fast", "full"], default="fast")
    s.add_argument("--out", default=None, help="compressed file (default REPORT/MODEL.npdc)")
    s.add_argument("--report", default="compressed", help="folder for the report and checkpoints")
    threads_arg(s)
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("report", help="per-layer table, sizes and score of a .npdc file")
    s.add_argument("model", help="compressed model (.npdc)")
    s.add_argument("--baseline", default=None, help="the uncompressed model (.h5)")
    s.add_argument("--data", default=None, help="evaluate both models on this dataset's test split")
    s.add_argument("--preset", choices=["relative", "zte"], default="relative", help="score preset")
    s.add_argument("--json", action="store_true")
    threads_arg(s)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("decompress", help="restore a dense .h5 model from a .npdc file")
    s.add_argument("model", help="compressed model (.npdc)")
    s.add_argument("--out", required=True, help="model file to write (.h5)")
    s.set_defaults(func=cmd_decompress)

    s = sub.add_parser("import", help="import a PyTorch ResNet checkpoint (.pt/.pth/.th) as a model",
                       description="Read a PyTorch checkpoint without PyTorch (zip or legacy format; "
                                   "only tensors and plain containers are unpickled, never code), "
                                   "map torchvision / CIFAR ResNet names onto ARCH, check every "
                                   "shape, and write an npdc model file.")
    s.add_argument("checkpoint", help="PyTorch checkpoint holding a state_dict (possibly nested)")
    s.add_argument("--arch", required=True, help="npdc architecture, e.g. cifar-resnet20")
    s.add_argument("--out", required=True, help="model file to write (.h5)")
    s.add_argument("--mean", type=_floats, default=None, help="input mean per channel, [0,1] scale: R,G,B")
    s.add_argument("--std", type=_floats, default=None, help="input std per channel, [0,1] scale: R,G,B")
    s.add_argument("--input-shape", type=_shape, default=None, help="C,H,W (default: 32x32 for CIFAR)")
    s.add_argument("--data", default=None, help="evaluate the imported model on this test split")
    threads_arg(s)
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("export", help="write a model's arrays for use outside npdc",
                       description="Export the parameters, BN statistics and input normalisation "
                                   "of a model file, one plain array per path (res2a_2a.W, ...).")
    s.add_argument("model", help="model file (.h5)")
    s.add_argument("--format", choices=["npz"], default="npz", help="output format (default npz)")
    s.add_argument("--out", required=True, help="file to write, e.g. MODEL.npz")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("speed", help="time a training step and inference on random data")
    s.add_argument("--arch", default=None)
    s.add_argument("--model", default=None, help="a model file instead of --arch (uses its conv plan)")
    s.add_argument("--input-shape", type=_shape, default=None, help="C,H,W (default: the architecture's)")
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--repeats", type=_positive_int, default=5, help="timed runs after warm-up (median)")
    s.add_argument("--json", action="store_true")
    threads_arg(s)
    s.set_defaults(func=cmd_speed)

    s = sub.add_parser("tune", help="time the conv primitives per layer and store the best plan in the model")
    s.add_argument("model", help="model file (.h5), rewritten with its conv plan")
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--mode", choices=("train", "infer"), default="train", help="what to optimise")
    s.add_argument("--no-cache", action="store_true", help="re-time instead of reading the timing cache")
    s.add_argument("--json", action="store_true")
    threads_arg(s)
    s.set_defaults(func=cmd_tune)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    primitive = getattr(args, "primitive", None)
    try:
        if primitive:
            _force_primitive(primitive)
        args.func(args)
    except UserError as e:
        print(f"npdc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if primitive:  # in-process callers (tests) must not inherit it
            _force_primitive(None)
    return 0


def _force_primitive(name):
    from npdc.kernels.conv import force_primitive

    try:
        force_primitive(name)
    except ValueError as e:
        raise UserError(str(e)) from None
