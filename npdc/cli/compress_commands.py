"""Subcommands of compression: sensitivity, prune, compress, report. Each has `X_arguments(sub)`
and `cmd_X(args)`; the library is imported inside the commands so that --help stays fast (see
npdc.cli).
"""

import json
import sys

from npdc import __version__
from npdc.cli.common import (batch_size_arg, check_paths, data_arg, dataset_arg, executor_args,
                             executor_from_args, finite_float, floats, granularity_arg, image_args,
                             json_arg, non_negative_int, positive_int, print_json, seed_arg,
                             shared_inputs, table, threads_args, use_threads)
from npdc.cli.verify_commands import read_test_pairs, verification_args
from npdc.errors import UserError

DEFAULT_MODEL = "data/models/fmnist-resnet18.h5"


# -- sensitivity -------------------------------------------------------------------------------
def sensitivity_arguments(sub):
    s = sub.add_parser("sensitivity", help="per-layer pruning sensitivity sweep",
                       description="Prune each layer alone at a sweep of s (or sparsity), evaluate on "
                                   "held-out images, restore; suggest a per-layer s for a budget.")
    s.add_argument("model", help="model file (.h5, or .npdc: its decoded weights)")
    dataset_arg(s, "the dataset whose images (see --split) each pruned layer is evaluated on")
    s.add_argument("--by", choices=["s", "sparsity"], default="s",
                   help="sweep the threshold multiplier s (default) or the sparsity in percent")
    s.add_argument("--values", type=floats, default=None, help="comma-separated sweep values")
    s.add_argument("--layers", default=None, help="comma-separated layer names (default: all)")
    granularity_arg(s)
    s.add_argument("--split", choices=["train", "test"], default="train",
                   help="evaluate on the last --val-size training images (default) or the test split")
    s.add_argument("--val-size", type=positive_int, default=2000,
                   help="--split train: how many images, the last of the training split, every "
                        "point of the sweep is evaluated on (default %(default)s; --split test "
                        "takes the whole test split)")
    s.add_argument("--budget", type=finite_float, default=0.005,
                   help="accuracy drop allowed per layer for the suggestion (fraction, default 0.005)")
    s.add_argument("--out", default=None, help="write the sweep as JSON here")
    s.add_argument("--plot", default=None, help="draw the curves into this PNG file (needs npdc[plots])")
    json_arg(s, "the sweep and the suggestion (and no progress bar)")
    image_args(s)
    threads_args(s)
    executor_args(s)
    s.set_defaults(func=cmd_sensitivity)


def cmd_sensitivity(args):
    from npdc import api
    from npdc.atomic import write_text
    from npdc.compress.sensitivity import curves_of, format_table

    check_paths([args.model, args.data], [("--out", args.out), ("--plot", args.plot)])
    if args.plot:
        from npdc import plots

        if plots.missing():
            raise UserError(plots.missing())
    layers = [n.strip() for n in args.layers.split(",")] if args.layers else None
    use_threads(args.threads)
    with executor_from_args(args) as executor:
        result = api.sensitivity(args.model, data_arg(args), by=args.by, values=args.values, layers=layers,
                                 granularity=args.granularity, split=args.split, val_size=args.val_size,
                                 budget=args.budget, progress=not args.json, executor=executor,
                                 shared=shared_inputs(args, args.model, args.split, args.val_size))
    print(format_table(result))
    print("suggested per-layer " + args.by + ": " +
          ",".join(f"{k}={v:g}" for k, v in result["suggested"].items()))
    if args.out:
        write_text(args.out, json.dumps(result, indent=1, sort_keys=True))
        print(f"wrote {args.out}")
    if args.plot:
        plots.sensitivity_figure(curves_of(result), result["baseline"]["accuracy"], args.plot,
                                 f"Sensitivity by {args.by} (each layer alone)")
        print(f"wrote {args.plot}")
    if args.json:
        print_json(result)


# -- prune -------------------------------------------------------------------------------------
def prune_arguments(sub):
    s = sub.add_parser("prune", help="prune a model and retrain it with distillation",
                       description="Prune by threshold std(W)*s, by percentage, or gradually (AGP), "
                                   "then retrain with the unpruned model as teacher.")
    s.add_argument("model", help="model file to prune (.h5, or .npdc: its decoded weights), "
                                 "also the teacher of the retraining")
    dataset_arg(s, "the dataset whose training split retrains the pruned model (and whose test "
                   "split, if any, reports accuracy before and after)")
    s.add_argument("--out", required=True, help="pruned model file to write (.h5)")
    rule = s.add_mutually_exclusive_group(required=True)
    rule.add_argument("--s", type=finite_float, help="threshold = std(W) * s in every layer")
    rule.add_argument("--sparsity", type=finite_float, help="prune this percentage of every layer")
    rule.add_argument("--schedule", choices=["agp"], help="prune gradually during retraining")
    s.add_argument("--target", type=finite_float, help="AGP: final sparsity in percent")
    s.add_argument("--agp-scope", choices=["layer", "global"], default="global",
                   help="AGP: every layer to the target, or one cut across layers (default)")
    s.add_argument("--layer-s", default="",
                   help="per-layer overrides, numbers or multiples: conv1=0,fc5=2x")
    granularity_arg(s, "; filters left empty are then removed from the model")
    s.add_argument("--kd", choices=["kl", "l2", "cosine", "none"], default="kl",
                   help="distillation loss (default kl; none = labels only)")
    s.add_argument("--tau", type=finite_float, default=4.0, help="distillation temperature (default 4)")
    s.add_argument("--hard-weight", type=finite_float, default=0.0, help="weight of the label loss")
    s.add_argument("--on", default="logits", help="distil on logits (default) or a layer, e.g. fc5")
    s.add_argument("--kd-layer", default="",
                   help="also distil this layer's output (e.g. fc5, the embedding) beside --kd; "
                        "with --kd none, alone")
    s.add_argument("--kd-layer-loss", choices=["l2", "cosine"], default="cosine",
                   help="loss of the --kd-layer term (default cosine)")
    s.add_argument("--kd-layer-weight", type=finite_float, default=1.0,
                   help="weight of the --kd-layer term (default 1)")
    s.add_argument("--unlabeled", action="store_true", help="ignore the training labels")
    s.add_argument("--epochs", type=non_negative_int, default=2,
                   help="retraining epochs after pruning (default %(default)s; 0 prunes without "
                        "retraining, --schedule agp then going straight to --target)")
    batch_size_arg(s, 128, "images per retraining step")
    s.add_argument("--lr", type=finite_float, default=0.005, help="retraining learning rate (default 0.005)")
    seed_arg(s, "the retraining's shuffling, crops and flips")
    json_arg(s, "the per-layer sparsity, the filters removed and the accuracies")
    image_args(s)
    threads_args(s)
    s.set_defaults(func=cmd_prune)


def cmd_prune(args):
    from npdc import api

    check_paths([args.model, args.data], [("--out", args.out)])
    use_threads(args.threads)
    student, result = api.prune(args.model, data_arg(args), s=args.s, sparsity=args.sparsity, schedule=args.schedule,
                                target=args.target, layer_s=args.layer_s, granularity=args.granularity,
                                agp_scope=args.agp_scope, kd=args.kd, tau=args.tau, hard_weight=args.hard_weight,
                                on=args.on, labels=not args.unlabeled, kd_layer=args.kd_layer,
                                kd_layer_loss=args.kd_layer_loss, kd_layer_weight=args.kd_layer_weight,
                                epochs=args.epochs,
                                batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=True)
    for name, what in result["thinned"].items():
        print(f"{name}: {what if isinstance(what, str) else f'{what[0]} of {what[1]} filters kept'}")
    print(sparsity_lines(result))
    if "accuracy_after" in result:
        print(f"test accuracy: baseline {result['accuracy_before']:.4f}, "
              f"pruned {result['accuracy_after']:.4f}")
    meta = {"command": "python -m npdc " + " ".join(sys.argv[1:]), "npdc_version": __version__,
            "pruned_from": str(args.model), **{k: v for k, v in result.items() if k != "layers"}}
    api.save_model(args.out, student, meta)
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
                       description="Deep Compression in one command: baseline -> pruning with "
                                   "distillation -> k-means quantization with centroid retraining -> "
                                   "Huffman-coded .npdc -> decode and verify. The default preset "
                                   "(auto) chooses each layer's sparsity and bit width itself on "
                                   "images held out of the training split, so that their accuracy "
                                   "stays within --max-drop points of the baseline; the test split "
                                   "only reports. Re-running the same command after a kill resumes "
                                   "where it stopped.")
    s.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model file (default {DEFAULT_MODEL})")
    s.add_argument("--data", default="fashion-mnist", help="dataset (default fashion-mnist)")
    s.add_argument("--config", default=None, help="TOML schedule overriding the preset")
    s.add_argument("--preset", choices=["auto", "fast", "full"], default="auto",
                   help="auto (default): search per-layer sparsity and bits within --max-drop; "
                        "fast and full: fixed recipes (80 %% or 91 %% gradual pruning, conv 7 or 5 "
                        "bits, fc 4 bits)")
    s.add_argument("--max-drop", type=finite_float, default=None,
                   help="accuracy points the compressed model may lose on the validation images "
                        "(default 0.3; auto preset or [search] schedules)")
    s.add_argument("--time-budget", type=finite_float, default=None,
                   help="minutes the search may take before it settles for the best found "
                        "(default: the preset's, 10 for auto; 0 = no limit); Numba's one-off "
                        "compilation on a first run is not counted")
    s.add_argument("--metric", choices=["accuracy", "verification"], default=None,
                   help="what the search's budget is in: top-1 accuracy on the validation images "
                        "(default), or verification accuracy by LFW's protocol on pairs drawn "
                        "from them (the budget then counts pairs); with --pairs the report also "
                        "gives verification on the test pairs")
    s.add_argument("--out", default=None, help="compressed file (default REPORT/MODEL.npdc)")
    s.add_argument("--report", default="compressed", help="folder for the report and checkpoints")
    verification_args(s, "--pairs or --metric verification")
    image_args(s)
    threads_args(s)
    executor_args(s)
    s.set_defaults(func=cmd_compress)



def cmd_compress(args):
    from pathlib import Path

    from npdc import api

    model = Path(args.model)
    if args.model == DEFAULT_MODEL and not model.is_file():
        model = Path(__file__).resolve().parents[2] / DEFAULT_MODEL  # run from anywhere
    if args.share == "files" and (args.workers or args.scheduler):
        raise UserError("compress sends its model and images to the workers itself: use --share scatter")
    use_threads(args.threads)
    with executor_from_args(args) as executor:
        result = api.compress(model, data_arg(args), schedule=args.config, preset=args.preset, out=args.out,
                              report=args.report, progress=True, max_drop=args.max_drop,
                              time_budget=args.time_budget, metric=args.metric, pairs=args.pairs,
                              embedding=args.embedding, executor=executor)
    report_dir = Path(args.report)
    print((report_dir / "report.md").read_text())
    if "verification" in result:
        v = result["verification"]
        print(f"verification accuracy on {v['pairs']:,} test pairs {v['before']['verification_accuracy']:.4f} -> "
              f"{v['after']['verification_accuracy']:.4f} (the score's z)")
    print(f"accuracy {result['accuracy_before']:.4f} -> {result['accuracy_after']:.4f}; "
          f"size {result['size_before_bytes']:,} -> {result['size_after_bytes']:,} B "
          f"({result['ratio']:.1f}x smaller); score {result['score']:.1f}")
    print(f"wrote {result['file']}, {report_dir / 'report.md'} and {report_dir / 'report.json'}")


# -- report ------------------------------------------------------------------------------------
def report_arguments(sub):
    s = sub.add_parser("report", help="per-layer table, sizes and score of a .npdc file")
    s.add_argument("model", help="compressed model (.npdc)")
    s.add_argument("--baseline", default=None, help="the uncompressed model (.h5)")
    dataset_arg(s, "evaluate both models on this dataset's test split", required=False)
    s.add_argument("--preset", choices=["relative", "zte"], default="relative", help="score preset")
    json_arg(s, "the report (per-layer rows, totals, accuracies, memory and score)")
    verification_args(s)
    image_args(s)
    threads_args(s)
    s.set_defaults(func=cmd_report)


def cmd_report(args):
    from npdc.io.modelfile import load_model
    from npdc.report import build_report, format_markdown

    baseline = load_model(args.baseline) if args.baseline else None
    use_threads(args.threads)
    before = after = pairs = None
    if (args.pairs or args.embedding) and not args.data:
        raise UserError("--pairs and --embedding need --data (the split the pairs index)")
    if args.data:
        from npdc.codec.model import load_compressed
        from npdc.engine.images import check_fits
        from npdc.engine.train import evaluate
        from npdc.engine.verification import verify_net
        from npdc.io.datasets import load_dataset

        compressed = load_compressed(args.model)[0]
        x, y = load_dataset(args.data, resize=args.resize).fit_to(compressed.in_shape).require("test")
        check_fits(compressed, x, y)
        if baseline is not None:
            check_fits(baseline, x, y)
        pairs = read_test_pairs(args, x, y)
        if pairs is None:
            def accuracy(net):
                return evaluate(net, x, y)["accuracy"]
        else:
            def accuracy(net):
                return verify_net(net, x, pairs, args.embedding)["verification_accuracy"]
        after = accuracy(compressed)
        before = accuracy(baseline) if baseline else None
    report = build_report(args.model, baseline, before, after, args.preset,
                          images=(len(y) if pairs is None else len(pairs.same)) if args.data else None,
                          metric="top-1" if pairs is None else "verification")
    print(format_markdown(report))
    if args.json:
        print_json(report)
