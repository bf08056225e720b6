"""`python -m npdc SUBCOMMAND`: parse arguments, call one library function, print the result.

A user mistake (a UserError, or bad arguments) is one line on stderr and exit code 2.
"""

import argparse
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

    net = load_model(args.model)
    data = load_dataset(args.data)
    x, y = data.require("test")
    if tuple(x.shape[1:]) != net.in_shape:
        raise UserError(f"dataset images are {tuple(x.shape[1:])}, the model expects {net.in_shape}")
    classes = net.shapes[net.output][0]
    if len(y) and int(y.max()) >= classes:
        raise UserError(f"dataset has label {int(y.max())}, the model has {classes} classes")
    _threads(args.threads)
    r = evaluate_model(net, x, y, args.batch_size, progress=not args.json)
    print(f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  on {r['images']} test images")
    print(f"parameters {r['params']:,}  float32 size {r['size_bytes']:,} B  MACs/image {r['macs']:,}")
    print(f"{r['images_per_s']:.0f} images/s")
    if args.json:
        _print_json(r)


# -- info ----------------------------------------------------------------------------------------
def cmd_info(args):
    from npdc.io.modelfile import load_model, read_meta

    net = load_model(args.model)
    meta = read_meta(args.model)
    rows = []
    for r in net.summary():
        rows.append({**r, "shape": "x".join(str(d) for d in r["shape"])})
    print(_table(rows, [("layer", "name", "{}"), ("kind", "kind", "{}"), ("output", "shape", "{}"),
                        ("params", "params", "{:,}"), ("MACs", "macs", "{:,}")]))
    print(f"\n{net.spec['arch']}: {net.num_params():,} parameters, {net.macs():,} MACs per image")
    if "test_accuracy" in meta:
        print(f"test accuracy at save: {meta['test_accuracy']:.4f} ({meta.get('dataset', '?')})")


# -- speed ---------------------------------------------------------------------------------------
def cmd_speed(args):
    from npdc.engine.resnet import build_net
    from npdc.engine.speed import measure_speed

    spec = {"arch": args.arch}
    if args.input_shape:
        spec["input_shape"] = args.input_shape
    net = build_net(spec)
    threads = _threads(args.threads)
    r = measure_speed(net, args.batch_size, args.repeats)
    r.update(arch=args.arch, threads=threads)
    print(f"{args.arch}, batch {args.batch_size}, {threads} threads")
    print(f"train {r['train_img_s']:.1f} images/s  inference {r['infer_img_s']:.1f} images/s  "
          f"batch-1 latency {r['b1_latency_ms']:.2f} ms")
    if args.json:
        _print_json(r)


# -- wiring --------------------------------------------------------------------------------------
def build_parser():
    p = _Parser(prog="npdc", description="NumPy Deep Compression: train, evaluate and compress "
                                         "ResNets without a deep-learning framework.")
    p.add_argument("--version", action="version", version=f"npdc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def threads_arg(s):
        s.add_argument("--threads", type=_positive_int, default=2, help="threads for kernels and BLAS (default 2)")

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

    s = sub.add_parser("evaluate", help="accuracy and figures of a model on a test split")
    s.add_argument("model", help="model file (.h5)")
    s.add_argument("--data", required=True)
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    threads_arg(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("info", help="per-layer table of a model file")
    s.add_argument("model")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("speed", help="time a training step and inference on random data")
    s.add_argument("--arch", required=True)
    s.add_argument("--input-shape", type=_shape, default=None, help="C,H,W (default: the architecture's)")
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--repeats", type=_positive_int, default=5, help="timed runs after warm-up (median)")
    s.add_argument("--json", action="store_true")
    threads_arg(s)
    s.set_defaults(func=cmd_speed)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"npdc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
