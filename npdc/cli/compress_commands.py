"""Subcommands of compression: sensitivity, prune, compress, report. Each has `X_arguments(sub)`
and `cmd_X(args)`; the library is imported inside the commands so that --help stays fast (see
npdc.cli).
"""

import json
import sys

from npdc import __version__
from npdc.cli.common import (GRANULARITY_CHOICES, check_paths, executor_args, executor_from_args,
                             finite_float, floats, non_negative_int, positive_int, print_json,
                             shared_inputs, table, threads_args, use_threads)
from npdc.errors import UserError

DEFAULT_MODEL = "data/models/fmnist-resnet18.h5"


# -- sensitivity -------------------------------------------------------------------------------
def sensitivity_arguments(sub):
    s = sub.add_parser("sensitivity", help="per-layer pruning sensitivity sweep",
                       description="Prune each layer alone at a sweep of s (or sparsity), evaluate on "
                                   "held-out images, restore; suggest a per-layer s for a budget.")
    s.add_argument("model")
    s.add_argument("--data", required=True)
    s.add_argument("--by", choices=["s", "sparsity"], default="s",
                   help="sweep the threshold multiplier s (default) or the sparsity in percent")
    s.add_argument("--values", type=floats, default=None, help="comma-separated sweep values")
    s.add_argument("--layers", default=None, help="comma-separated layer names (default: all)")
    s.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="element")
    s.add_argument("--split", choices=["train", "test"], default="train",
                   help="evaluate on the last --val-size training images (default) or the test split")
    s.add_argument("--val-size", type=positive_int, default=2000)
    s.add_argument("--budget", type=finite_float, default=0.005,
                   help="accuracy drop allowed per layer for the suggestion (fraction, default 0.005)")
    s.add_argument("--out", default=None, help="write the sweep as JSON here")
    s.add_argument("--json", action="store_true")
    threads_args(s)
    executor_args(s)
    s.set_defaults(func=cmd_sensitivity)


def cmd_sensitivity(args):
    from npdc.engine.images import check_fits
    from npdc.compress.prune import check_layer_names
    from npdc.compress.sensitivity import format_table, suggest, sweep
    from npdc.atomic import write_text
    from npdc.io.datasets import load_dataset
    from npdc.io.job_inputs import evaluation_images
    from npdc.io.modelfile import load_model

    check_paths([args.model, args.data], [("--out", args.out)])
    net = load_model(args.model)
    x, y = evaluation_images(load_dataset(args.data), args.split, args.val_size)
    check_fits(net, x, y)
    layers = [n.strip() for n in args.layers.split(",")] if args.layers else None
    if layers:
        check_layer_names(net, layers)
    use_threads(args.threads)
    with executor_from_args(args) as executor:
        result = sweep(net, x, y, args.values, args.by, layers, args.granularity,
                       progress=not args.json, executor=executor,
                       shared=shared_inputs(args, args.model, args.split, args.val_size))
    result["suggested"] = suggest(result, args.budget)
    result["budget"] = args.budget
    print(format_table(result))
    print("suggested per-layer " + args.by + ": " +
          ",".join(f"{k}={v:g}" for k, v in result["suggested"].items()))
    if args.out:
        write_text(args.out, json.dumps(result, indent=1, sort_keys=True))
        print(f"wrote {args.out}")
    if args.json:
        print_json(result)


# -- prune -------------------------------------------------------------------------------------
def prune_arguments(sub):
    s = sub.add_parser("prune", help="prune a model and retrain it with distillation",
                       description="Prune by threshold std(W)*s, by percentage, or gradually (AGP), "
                                   "then retrain with the unpruned model as teacher.")
    s.add_argument("model")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    rule = s.add_mutually_exclusive_group(required=True)
    rule.add_argument("--s", type=finite_float, help="threshold = std(W) * s in every layer")
    rule.add_argument("--sparsity", type=finite_float, help="prune this percentage of every layer")
    rule.add_argument("--schedule", choices=["agp"], help="prune gradually during retraining")
    s.add_argument("--target", type=finite_float, help="AGP: final sparsity in percent")
    s.add_argument("--agp-scope", choices=["layer", "global"], default="global",
                   help="AGP: every layer to the target, or one cut across layers (default)")
    s.add_argument("--layer-s", default="",
                   help="per-layer overrides, numbers or multiples: conv1=0,fc5=2x")
    s.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="element")
    s.add_argument("--kd", choices=["kl", "l2", "cosine", "none"], default="kl",
                   help="distillation loss (default kl; none = labels only)")
    s.add_argument("--tau", type=finite_float, default=4.0, help="distillation temperature (default 4)")
    s.add_argument("--hard-weight", type=finite_float, default=0.0, help="weight of the label loss")
    s.add_argument("--on", default="logits", help="distil on logits (default) or a layer, e.g. fc5")
    s.add_argument("--unlabeled", action="store_true", help="ignore the training labels")
    s.add_argument("--epochs", type=non_negative_int, default=2)
    s.add_argument("--batch-size", type=positive_int, default=128)
    s.add_argument("--lr", type=finite_float, default=0.005, help="retraining learning rate (default 0.005)")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--json", action="store_true")
    threads_args(s)
    s.set_defaults(func=cmd_prune)


def cmd_prune(args):
    from npdc.engine.images import check_fits
    from npdc.engine.train import evaluate
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import load_model, save_model
    from npdc.pipeline.schedule import PruneStage
    from npdc.pipeline.stages import prune_stage

    check_paths([args.model, args.data], [("--out", args.out)])
    teacher = load_model(args.model)
    data = load_dataset(args.data)
    x, y = data.require("train")
    check_fits(teacher, x, y)
    if args.schedule == "agp":
        if args.target is None:
            raise UserError("--schedule agp needs --target P (the final sparsity in percent)")
        if not 0 < args.target < 100:
            raise UserError(f"--target must be between 0 and 100 (percent), not {args.target}")
    method = "std" if args.s is not None else "percent" if args.sparsity is not None else "agp"
    stage = PruneStage(method=method, target=args.sparsity if method == "percent" else args.target or 0.0,
                       s=args.s or 0.0, layer_s=args.layer_s, granularity=args.granularity,
                       agp_scope=args.agp_scope, epochs=args.epochs, lr=args.lr, kd=args.kd, tau=args.tau,
                       hard_weight=args.hard_weight, on=args.on, labels=not args.unlabeled)
    use_threads(args.threads)
    student, result = prune_stage(teacher, x, y, stage, args.batch_size, args.seed)
    for name, what in result["thinned"].items():
        print(f"{name}: {what if isinstance(what, str) else f'{what[0]} of {what[1]} filters kept'}")
    print(sparsity_lines(result))
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
        print_json({k: v for k, v in result.items() if k != "history"})


def sparsity_lines(record):
    """The per-layer sparsity table of a prune record and its overall line."""
    rows = [{**r, "pct": 100 * r["sparsity"]} for r in record["layers"]]
    nonzero, weights = sum(r["nonzero"] for r in rows), sum(r["weights"] for r in rows)
    return (table(rows, [("layer", "layer", "{}"), ("weights", "weights", "{:,}"),
                         ("non-zero", "nonzero", "{:,}"), ("sparsity", "pct", "{:.1f}%")]) +
            f"\noverall: {nonzero:,} of {weights:,} weights non-zero "
            f"({100 * record['sparsity']:.2f}% sparse)")


# -- compress ----------------------------------------------------------------------------------
def compress_arguments(sub):
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
    threads_args(s)
    s.set_defaults(func=cmd_compress)



def cmd_compress(args):
    from pathlib import Path

    from npdc.pipeline.run import run
    from npdc.pipeline.schedule import load_schedule
    from npdc.atomic import write_text
    from npdc.engine.images import check_fits
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import load_model
    from npdc.report import build_report, format_markdown

    model = Path(args.model)
    if args.model == DEFAULT_MODEL and not model.is_file():
        model = Path(__file__).resolve().parents[2] / DEFAULT_MODEL  # run from anywhere
    report_dir = Path(args.report)
    out = Path(args.out) if args.out else report_dir / f"{model.stem}.npdc"
    check_paths([model, args.data, args.config],
                [("--out", out)] + [("--report", report_dir / n) for n in ("report.json", "report.md")],
                [("--report", report_dir)])
    schedule = load_schedule(args.config, args.preset)
    data = load_dataset(args.data)
    teacher = load_model(model)
    for split in ("train", "test"):
        check_fits(teacher, *data.require(split))
    use_threads(args.threads)
    result = run(model, data, schedule, out, report_dir / f".work-{model.stem}")
    report = build_report(out, teacher, result["accuracy_before"], result["accuracy_after"],
                          images=len(data.require("test")[1]))
    result.update(score=report["score"]["score"], layers=report["layers"], totals=report["totals"],
                  memory_method=report["memory_method"],
                  **{k: report[k] for k in ("accuracy_images", "accuracy_before_se", "accuracy_after_se")})
    report["schedule"] = result["schedule"]
    write_text(report_dir / "report.json", json.dumps(result, indent=1, sort_keys=True, default=float))
    write_text(report_dir / "report.md", format_markdown(report))
    print(format_markdown(report))
    print(f"accuracy {result['accuracy_before']:.4f} -> {result['accuracy_after']:.4f}; "
          f"size {result['size_before_bytes']:,} -> {result['size_after_bytes']:,} B "
          f"({result['ratio']:.1f}x smaller); score {result['score']:.1f}")
    print(f"wrote {out}, {report_dir / 'report.md'} and {report_dir / 'report.json'}")


# -- report ------------------------------------------------------------------------------------
def report_arguments(sub):
    s = sub.add_parser("report", help="per-layer table, sizes and score of a .npdc file")
    s.add_argument("model", help="compressed model (.npdc)")
    s.add_argument("--baseline", default=None, help="the uncompressed model (.h5)")
    s.add_argument("--data", default=None, help="evaluate both models on this dataset's test split")
    s.add_argument("--preset", choices=["relative", "zte"], default="relative", help="score preset")
    s.add_argument("--json", action="store_true")
    threads_args(s)
    s.set_defaults(func=cmd_report)


def cmd_report(args):
    from npdc.io.modelfile import load_model
    from npdc.report import build_report, format_markdown

    baseline = load_model(args.baseline) if args.baseline else None
    use_threads(args.threads)
    before = after = None
    if args.data:
        from npdc.codec.model import load_compressed
        from npdc.engine.images import check_fits
        from npdc.engine.train import evaluate
        from npdc.io.datasets import load_dataset

        x, y = load_dataset(args.data).require("test")
        compressed = load_compressed(args.model)[0]
        check_fits(compressed, x, y)
        if baseline is not None:
            check_fits(baseline, x, y)
        after = evaluate(compressed, x, y)["accuracy"]
        before = evaluate(baseline, x, y)["accuracy"] if baseline else None
    report = build_report(args.model, baseline, before, after, args.preset,
                          images=len(y) if args.data else None)
    print(format_markdown(report))
    if args.json:
        print_json(report)
