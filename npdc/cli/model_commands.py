"""Subcommands that work on one model file: train, evaluate, infer, info, speed, tune, import,
export, decompress. Each has `X_arguments(sub)` and `cmd_X(args)`; the library is imported inside
the commands so that --help stays fast (see npdc.cli).
"""

import sys
import time

from npdc import __version__
from npdc.cli.common import (batch_size_arg, check_paths, data_arg, dataset_arg, executor_args,
                             executor_from_args, finite_float, floats, image_args, json_arg,
                             non_negative_int, positive_int, print_json, seed_arg, shape,
                             precision_args, shared_inputs, table, threads_args, use_threads,
                             weights_arg)
from npdc.cli.verify_commands import verification_args, verification_lines
from npdc.errors import UserError


# -- train -------------------------------------------------------------------------------------
def train_arguments(sub):
    s = sub.add_parser("train", help="train a model from scratch",
                       description="Train a ResNet with SGD; the same seed gives the same model.")
    s.add_argument("--arch", required=True, help="architecture name, e.g. resnet18, cifar-resnet20")
    dataset_arg(s, "the dataset whose training split trains the model (and whose test split, if "
                   "any, reports its accuracy)")
    s.add_argument("--out", required=True, help="model file to write (.h5)")
    s.add_argument("--epochs", type=positive_int, default=10,
                   help="passes over the training images (default %(default)s)")
    batch_size_arg(s, 128, "images per SGD step")
    s.add_argument("--lr", type=finite_float, default=0.1, help="peak learning rate (default 0.1)")
    s.add_argument("--momentum", type=finite_float, default=0.9,
                   help="Nesterov momentum of SGD (default %(default)s)")
    s.add_argument("--weight-decay", type=finite_float, default=5e-4,
                   help="L2 weight decay on conv and linear weights, not on biases or batch norm "
                        "(default %(default)s)")
    s.add_argument("--schedule", choices=["cosine", "step"], default="cosine",
                   help="learning rate over training: cosine (default) anneals --lr to 0; step "
                        "multiplies it by 0.1 after 50%% and again after 75%% of the steps")
    s.add_argument("--augment-pad", type=non_negative_int, default=None,
                   help="random-crop padding in pixels (default H/8; 0 disables crop and flip)")
    seed_arg(s, "the initial weights, the shuffling and the crops and flips",
             "; the --val-fraction images do not depend on it")
    s.add_argument("--val-fraction", type=finite_float, default=0.0,
                   help="hold out this fraction of the training split (seeded, the images "
                        "`compress` validates on by default, 0.1) and report accuracy on it; "
                        "default 0: train on every image")
    s.add_argument("--width", type=positive_int, default=None, help="resnet18 family: channels of stage 2")
    s.add_argument("--mean", type=floats, default=None,
                   help="input mean per channel, [0,1] scale (default: measured on the training images)")
    s.add_argument("--std", type=floats, default=None,
                   help="input std per channel, [0,1] scale (default: measured on the training images)")
    image_args(s, with_shape=True)
    threads_args(s)
    s.set_defaults(func=cmd_train)


def cmd_train(args):
    from npdc.engine.resnet import ARCHITECTURES
    from npdc.engine.train import evaluate_model, train_model
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import save_model

    if args.arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {args.arch!r}; known: {', '.join(ARCHITECTURES)}")
    check_paths([args.data], [("--out", args.out)])
    data = load_dataset(args.data, args.input_shape, args.resize)
    data = data.fit_to(data.image_shape)  # an image folder's images as given (or 3x224x224)
    x, y, x_val, y_val = data.held_out(args.val_fraction)
    spec = {"arch": args.arch, "input_shape": list(data.image_shape), "num_classes": data.num_classes}
    if args.width is not None:
        if args.arch != "resnet18":
            raise UserError("--width applies to the resnet18 family only")
        spec["width"] = args.width
    threads = use_threads(args.threads)
    hyper = dict(batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                 weight_decay=args.weight_decay, schedule=args.schedule,
                 augment_pad=args.augment_pad)
    t0 = time.time()
    net, history = train_model(spec, x, y, args.epochs, seed=args.seed, mean=args.mean, std=args.std,
                               **hyper)
    meta = {"command": "python -m npdc " + " ".join(sys.argv[1:]), "npdc_version": __version__,
            "dataset": data.name, "seed": args.seed, "epochs": args.epochs, "threads": threads,
            "train_seconds": round(time.time() - t0, 1), "history": history, **hyper}
    if len(x_val):
        result = evaluate_model(net, x_val, y_val, progress=True)
        meta.update(val_fraction=args.val_fraction, val_accuracy=result["accuracy"])
        print(f"held-out accuracy {result['accuracy']:.4f} on {len(y_val)} training images")
    if data.x_test is not None:
        result = evaluate_model(net, data.x_test, data.y_test, progress=True)
        meta["test_accuracy"] = result["accuracy"]
        print(f"test accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}")
    save_model(args.out, net, meta)
    print(f"wrote {args.out}")


# -- evaluate ----------------------------------------------------------------------------------
def evaluate_arguments(sub):
    s = sub.add_parser("evaluate", help="accuracy and figures of a model on a test split",
                       description="A .h5 model runs in the engine; a .npdc file runs in the "
                                   "small-memory runtime and also reports size, peak memory, "
                                   "batch-1 latency and the score.")
    s.add_argument("model", help="model file (.h5 or .npdc)")
    dataset_arg(s, "the dataset whose test split the model is measured on")
    batch_size_arg(s, 256, "images per forward pass; for a .npdc file also the batch its images/s "
                           "are measured at, while peak memory and latency are taken at batch 1")
    json_arg(s, "the figures")
    weights_arg(s)
    precision_args(s)
    s.add_argument("--baseline", default=None,
                   help=".npdc: the uncompressed model (.h5) whose accuracy the score compares with")
    verification_args(s)
    image_args(s)
    threads_args(s)
    executor_args(s)
    s.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    from npdc import api

    if str(args.model).endswith(".npdc") and (args.workers or args.scheduler):
        raise UserError("--workers and --scheduler share out a .h5 model's test set; a .npdc "
                        "file is measured on this machine")
    use_threads(args.threads)
    with executor_from_args(args) as executor:
        r = api.evaluate(args.model, data_arg(args), batch_size=args.batch_size, weights=args.weights,
                         walk=args.walk, precision=args.precision, calibration=args.calibration,
                         calibration_method=args.calibration_method,
                         baseline=args.baseline, pairs=args.pairs, embedding=args.embedding,
                         progress=not args.json, executor=executor,
                         shared=shared_inputs(args, args.model, "test"))
    if str(args.model).endswith(".npdc"):
        return _print_npdc_figures(r, args)
    print(f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  on {r['images']} test images")
    if "verification_accuracy" in r:
        print(verification_lines(r))
    print(f"parameters {r['params']:,}  float32 size {r['size_bytes']:,} B  MACs/image {r['macs']:,}")
    print(f"{r['images_per_s']:.0f} images/s")
    if args.json:
        print_json(r)


def _print_npdc_figures(r, args):
    what = "int8" if r["precision"] == "int8" else f"{r['weights']} weights"
    print(f"accuracy {r['accuracy']:.4f} on {r['images']} test images ({what})")
    if "verification_accuracy" in r:
        print(verification_lines(r) + f"  (embeddings from the {r['embedding_source']}; the score's z)")
    print(f"size {r['size_bytes']:,} B (float32 {r['size_before_bytes']:,} B)  peak memory "
          f"{r['peak_memory_bytes']:,} B (naive float32 {r['baseline_peak_memory_bytes']:,} B)  "
          f"peak RSS {r['peak_rss_bytes']:,} B")
    print(f"{r['images_per_s']:.0f} images/s at batch {args.batch_size}  batch-1 latency "
          f"{r['latency_ms_b1']:.2f} ms  score {r['score']:.2f} (accuracy reference: {r['accuracy_reference']})")
    if r["primitives"]:
        print("conv primitives: " + ", ".join(f"{n} {p}" for n, p in r["primitives"].items()))
    if r["precision"] == "int8":
        kinds = sorted(set(r["kernels"].values()))
        print(f"integer-only int8: {', '.join(kinds)}; activation scales {r['int8_scales']}")
    else:
        print(f"{r['walk']} walk; " + sparse_line(r["sparse_layers"], len(r["kernels"])))
    if args.json:
        print_json({k: v for k, v in r.items() if k != "score_parts"})


def sparse_line(names, steps):
    """Which layers ran with sparse weights, in one line."""
    return f"ran sparse: {', '.join(names)}" if names else f"ran sparse: none of {steps} steps"


# -- infer -------------------------------------------------------------------------------------
def infer_arguments(sub):
    s = sub.add_parser("infer", help="logits and classes of images, from a .npdc file",
                       description="Run the compressed model on images (N x C x H x W or N x H x W, "
                                   "uint8 or float, in a .npz as x, x_test or images), normalised "
                                   "as the model stores; writes logits and classes to a .npz.")
    s.add_argument("model", help="compressed model (.npdc)")
    s.add_argument("input", help="images (.npz)")
    s.add_argument("--out", required=True, help="predictions to write (.npz)")
    batch_size_arg(s, 128, "images per pass of the runtime, whose activation memory is sized "
                           "for one batch")
    weights_arg(s)
    precision_args(s, data_flag=True)
    threads_args(s)
    s.set_defaults(func=cmd_infer)


def cmd_infer(args):
    from npdc.evaluate import predict_file

    check_paths([args.model, args.input], [("--out", args.out)])
    use_threads(args.threads)
    n, sparse = predict_file(args.model, args.input, args.out, args.weights, args.batch_size, args.walk,
                             args.precision, args.data, args.calibration, args.calibration_method)
    print(f"wrote logits and classes of {n} images to {args.out}; " + sparse_line(sparse, "its"))


# -- info --------------------------------------------------------------------------------------
def info_arguments(sub):
    s = sub.add_parser("info", help="per-layer table of a model file")
    s.add_argument("model", help="model file (.h5): its layers, output shapes, parameters, "
                                 "non-zero weights and MACs")
    s.set_defaults(func=cmd_info)


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
    print(table(rows, [("layer", "name", "{}"), ("kind", "kind", "{}"), ("output", "shape", "{}"),
                        ("params", "params", "{:,}"), ("non-zero W", "nonzero", "{}"),
                        ("sparsity", "sparsity", "{}"), ("MACs", "macs", "{:,}")]))
    print(f"\n{net.spec['arch']}: {net.num_params():,} parameters, {net.macs():,} MACs per image; "
          f"conv/linear weights {total['nonzero']:,} of {total['weights']:,} non-zero "
          f"({100 * total['sparsity']:.1f}% sparse)")
    if "test_accuracy" in meta:
        print(f"test accuracy at save: {meta['test_accuracy']:.4f} ({meta.get('dataset', '?')})")


# -- speed -------------------------------------------------------------------------------------
def speed_arguments(sub):
    s = sub.add_parser("speed", help="time a training step and inference on random data")
    s.add_argument("--arch", default=None, help="architecture to build with random weights, e.g. "
                                                "resnet18, cifar-resnet20 (or --model)")
    s.add_argument("--model", default=None, help="a model file instead of --arch (uses its conv plan)")
    s.add_argument("--input-shape", type=shape, default=None, help="C,H,W (default: the architecture's)")
    batch_size_arg(s, 128, "images per timed training step and inference pass; the latency "
                           "is timed at batch 1")
    s.add_argument("--repeats", type=positive_int, default=5, help="timed runs after warm-up (median)")
    json_arg(s, "images/s, latency and the conv primitives that ran")
    threads_args(s)
    s.set_defaults(func=cmd_speed)


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
    threads = use_threads(args.threads)
    r = measure_speed(net, args.batch_size, args.repeats)
    r.update(arch=arch, threads=threads, primitives={n: layer.ran for n, layer in conv_layers(net)})
    print(f"{arch}, batch {args.batch_size}, {threads} threads")
    print(f"train {r['train_img_s']:.1f} images/s  inference {r['infer_img_s']:.1f} images/s  "
          f"batch-1 latency {r['b1_latency_ms']:.2f} ms")
    print("conv primitives: " + ", ".join(f"{n} {p}" for n, p in r["primitives"].items()))
    if args.json:
        print_json(r)


# -- tune --------------------------------------------------------------------------------------
def tune_arguments(sub):
    s = sub.add_parser("tune", help="time the conv primitives per layer and store the best plan in the model")
    s.add_argument("model", help="model file (.h5), rewritten with its conv plan")
    batch_size_arg(s, 128, "the batch each layer's primitives are timed at: the one the model "
                           "will train (--mode train) or infer (--mode infer) with")
    s.add_argument("--mode", choices=("train", "infer"), default="train",
                   help="what to optimise: a forward and both backward passes (train, default) "
                        "or a forward pass (infer)")
    s.add_argument("--no-cache", action="store_true", help="re-time instead of reading the timing cache")
    json_arg(s, "the plan and each layer's time per primitive in seconds")
    threads_args(s)
    s.set_defaults(func=cmd_tune)


def cmd_tune(args):
    from npdc.engine.conv_plan import tune_net
    from npdc.io.modelfile import load_model, write_plan

    net = load_model(args.model)
    threads = use_threads(args.threads)
    plan, timings = tune_net(net, args.batch_size, args.mode, cache=not args.no_cache)
    names = sorted({p for t in timings.values() for p in t})
    rows = [{"layer": n, "plan": plan[n], **{p: f"{1e3 * t[p]:.2f}" if p in t else "-" for p in names}}
            for n, t in timings.items()]
    print(f"{args.mode} time per layer (ms), batch {args.batch_size}, {threads} threads")
    print(table(rows, [("layer", "layer", "{}")] + [(p, p, "{}") for p in names] + [("plan", "plan", "{}")]))
    write_plan(args.model, plan)
    print(f"wrote the plan into {args.model}")
    if args.json:
        print_json({"plan": plan, "timings": timings})


# -- import ------------------------------------------------------------------------------------
def import_arguments(sub):
    s = sub.add_parser("import", help="import a PyTorch checkpoint (.pt/.pth/.th) or an ONNX model as a model",
                       description="Read a PyTorch checkpoint without PyTorch (zip or legacy format; "
                                   "only tensors and plain containers are unpickled, never code), "
                                   "map torchvision / CIFAR ResNet names onto ARCH (recognised from "
                                   "the names and shapes when --arch is left out), check every "
                                   "shape, and write an npdc model file. A .onnx file becomes a "
                                   "graph net of its own layers (needs npdc[onnx]).")
    s.add_argument("checkpoint", help="PyTorch checkpoint holding a state_dict (possibly nested), or MODEL.onnx")
    s.add_argument("--arch", default=None, help="npdc architecture, e.g. cifar-resnet20, tv-resnet50, "
                   "mobilenet_v2, squeezenet1_1 (default: recognised from the checkpoint)")
    s.add_argument("--out", required=True, help="model file to write (.h5)")
    s.add_argument("--mean", type=floats, default=None, help="input mean per channel, [0,1] scale: R,G,B")
    s.add_argument("--std", type=floats, default=None, help="input std per channel, [0,1] scale: R,G,B")
    s.add_argument("--input-shape", type=shape, default=None, help="C,H,W (default: 32x32 for CIFAR, 224x224 for ImageNet nets)")
    dataset_arg(s, "evaluate the imported model on this dataset's test split", required=False)
    image_args(s)
    threads_args(s)
    s.set_defaults(func=cmd_import)


def cmd_import(args):
    from npdc import api

    check_paths([args.checkpoint, args.data], [("--out", args.out)])
    net = api.import_checkpoint(args.checkpoint, args.arch, mean=args.mean, std=args.std,
                                input_shape=args.input_shape)
    meta = {"command": "python -m npdc " + " ".join(sys.argv[1:]), "npdc_version": __version__,
            "imported_from": str(args.checkpoint)}
    print(f"{args.checkpoint} -> {net.spec['arch']}: {net.num_params():,} parameters, "
          f"input {'x'.join(map(str, net.in_shape))}, {net.shapes[net.output][0]} classes")
    if args.mean is None and args.std is None:
        print("no --mean/--std given: the model sees pixels scaled to [0, 1]")
    if args.data:
        use_threads(args.threads)
        r = api.evaluate(net, data_arg(args))
        meta["test_accuracy"] = r["accuracy"]
        print(f"test accuracy {meta['test_accuracy']:.4f} on {r['images']} images")
    api.save_model(args.out, net, meta)
    print(f"wrote {args.out}")


def cmd_export(args):
    from npdc import api

    count = api.export(args.model, args.out, args.format)
    print(f"wrote {args.out} ({count} arrays)")


# -- export ------------------------------------------------------------------------------------
def export_arguments(sub):
    s = sub.add_parser("export", help="write a model for use outside npdc",
                       description="Export the parameters, BN statistics and input normalisation "
                                   "of a model file, one plain array per path (res2a_2a.W, ...) "
                                   "with --format npz, or as a PyTorch state_dict with "
                                   "torchvision's names (written without PyTorch) with --format "
                                   "torch, or as an ONNX model (opset 13, input: pixels in [0, 1]) "
                                   "with --format onnx. A .npdc file is decoded to its quantized "
                                   "weights.")
    s.add_argument("model", help="model file (.h5) or compressed model (.npdc)")
    s.add_argument("--format", choices=["npz", "torch", "onnx"], default="npz", help="output format (default npz)")
    s.add_argument("--out", required=True, help="file to write, e.g. MODEL.npz")
    s.set_defaults(func=cmd_export)


# -- decompress --------------------------------------------------------------------------------
def decompress_arguments(sub):
    s = sub.add_parser("decompress", help="restore a dense .h5 model from a .npdc file")
    s.add_argument("model", help="compressed model (.npdc)")
    s.add_argument("--out", required=True, help="model file to write (.h5)")
    s.set_defaults(func=cmd_decompress)


def cmd_decompress(args):
    from npdc import api

    api.decompress(args.model, args.out)
    print(f"wrote {args.out}")
