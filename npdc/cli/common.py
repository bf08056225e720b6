"""What every subcommand shares: the one-line-error parser, argument types, the thread, weight
and cluster options, JSON output and the plain-text table."""

import argparse
import contextlib
import json
import math

from npdc.errors import UserError
from npdc.paths import check_paths  # noqa: F401  (the commands' one check of their paths)

GRANULARITY_CHOICES = ["element", "vector", "kernel", "filter"]
LOG_LEVELS = ("debug", "info", "warning", "error")  # --log-level: names of the logging levels


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the full usage stays in --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _whole(text, least, wording):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be {wording}")
    return value


def positive_int(text):
    return _whole(text, 1, "at least 1")


def non_negative_int(text):
    return _whole(text, 0, "0 or more")


def finite_float(text):
    """A float option: a number, and finite (nan and inf are refused, as a learning rate of nan
    would train for hours into garbage)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def floats(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} holds a number that is not finite")
    return values


def shape(text):
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W with three positive integers")
    return [int(p) for p in parts]


DATASET_FORMS = "a shipped dataset name, an image folder, an IDX or CIFAR-10 folder, .npz or .h5"


def dataset_arg(s, use, required=True, default=None):
    """--data: the dataset a command reads, `use` saying which of its splits serve for what (the
    value itself reaches the API through data_arg(args))."""
    s.add_argument("--data", required=required, default=default, help=f"{use}: {DATASET_FORMS}")


def batch_size_arg(s, default, use):
    """--batch-size: images at a time, `use` saying at what (training steps, passes, timings)."""
    s.add_argument("--batch-size", type=positive_int, default=default,
                   help=f"{use} (default %(default)s)")


def seed_arg(s, use, after=""):
    """--seed: the seed of what `use` names, the command's only source of randomness."""
    s.add_argument("--seed", type=non_negative_int, default=0,
                   help=f"random seed of {use} (default %(default)s){after}")


def json_arg(s, what):
    """--json: after the readable output, `what` as one JSON line on stdout (print_json)."""
    s.add_argument("--json", action="store_true", help=f"end with one JSON line on stdout: {what}")


def granularity_arg(s, after=""):
    """--granularity: which groups of a conv weight are pruned together (npdc.compress.prune)."""
    s.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="element",
                   help="what a conv layer loses at once, judged by its mean |w|: single weights "
                        "(element, default), kernel rows (vector), whole kh x kw kernels (kernel) "
                        "or whole output filters (filter); linear layers always lose single "
                        "weights" + after)


def threads_args(s):
    s.add_argument("--threads", type=positive_int, default=2, help="threads for kernels and BLAS (default 2)")
    s.add_argument("--primitive", default=None, help="run every engine conv that accepts it with "
                   "this primitive (direct, flat, polyphase, im2col, kn2row, winograd2, winograd4, fft, gemm, "
                   "depthwise, stem); "
                   "the .npdc runtime runs engine primitives only with dense weights at batch > 1")


def weights_arg(s):
    s.add_argument("--weights", choices=["dense", "stream", "sparse", "auto"], default="sparse",
                   help=".npdc runtime: weights decoded to float32 once (dense), decoded layer by "
                        "layer as the pass reaches them (stream), used as non-zeros and "
                        "codebook indices (sparse, default), or per layer dense or sparse, "
                        "whichever measured faster (auto); dense and auto may keep a layer's "
                        "weights in a faster, larger form (Winograd's, 4x)")
    s.add_argument("--walk", choices=["compiled", "python"], default=None,
                   help=".npdc runtime: run the whole plan in compiled code (compiled, default; "
                        "also $NPDC_RUNTIME_WALK) or call each layer's kernel from Python (python, "
                        "the reference); streamed weights always take the Python walk")


def precision_args(s, data_flag=False):
    """--precision and the calibration flags of int8 inference (npdc.runtime.int8)."""
    s.add_argument("--precision", choices=["float", "int8"], default="float",
                   help=".npdc runtime: float32 (default) or integer-only int8 (uint8 activations, "
                        "int8 weights, int32 sums)")
    if data_flag:
        s.add_argument("--data", default=None, help="int8, for a file without stored scales: the "
                                                    "dataset whose training images calibrate them")
    s.add_argument("--calibration", type=positive_int, default=256,
                   help="int8: training images the activation ranges are measured on (default 256), "
                        "unless the file stores its scales")
    s.add_argument("--calibration-method", choices=["minmax", "percentile"], default="minmax",
                   help="int8: each activation's range from its min and max (default) or its "
                        "0.01th and 99.99th percentiles")


def executor_args(s):
    """--workers N / --scheduler ADDRESS: where a command's independent jobs run (in-process by
    default); --share: how the model and images reach the workers."""
    where = s.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None,
                       help="run the jobs on a local Dask cluster of N single-threaded worker "
                            "processes (needs npdc[distributed])")
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                       help="run the jobs on the Dask cluster of this scheduler (needs npdc[distributed])")
    s.add_argument("--share", choices=["scatter", "files"], default="scatter",
                   help="with a cluster: send the model and images to every worker once "
                        "(scatter, default), or let each worker read them from the same paths "
                        "(files: the workers must see this machine's files)")


@contextlib.contextmanager
def executor_from_args(args):
    """`with executor_from_args(args) as executor:` the executor that --workers/--scheduler ask
    for (None: in-process), its cluster closed when the block ends."""
    if getattr(args, "workers", None):
        from npdc.cluster import local_executor

        executor = local_executor(args.workers)
    elif getattr(args, "scheduler", None):
        from npdc.cluster import scheduler_executor

        executor = scheduler_executor(args.scheduler)
    else:
        yield None
        return
    with executor:
        yield executor


def shared_inputs(args, model, split, size=None):
    """What the jobs of a command that evaluates `model` share: None (the command sends the
    arrays it loaded) or, with --share files and a cluster, a recipe that has each worker read
    the model and the dataset from the same paths."""
    if args.share != "files" or not (args.workers or args.scheduler):
        return None
    from npdc.api import load_model
    from npdc.io.job_inputs import absolute, model_and_images
    from npdc.jobs import Loaded

    return Loaded(model_and_images, load_model, absolute(str(model)), absolute(args.data), split, size,
                  getattr(args, "resize", None))


def image_args(s, with_shape=False):
    """--resize (and, where no model decides the images, --input-shape): how an image folder's
    files become images."""
    s.add_argument("--resize", type=positive_int, default=None,
                   help="image folders: the shorter side in pixels before the centre crop "
                        "(default: the crop's longer side x 256/224)")
    if with_shape:
        s.add_argument("--input-shape", type=shape, default=None,
                       help="image folders: C,H,W of the images (C 1 for grey or 3 for RGB, H,W "
                            "the centre crop; default 3,224,224)")


def data_arg(args):
    """What --data names, as the API takes it: the name or path, or with --resize the loaded
    Dataset (an image folder whose images then follow the model in all but the resize)."""
    if getattr(args, "resize", None) is None:
        return args.data
    from npdc.api import load_dataset

    return load_dataset(args.data, resize=args.resize)


def use_threads(value):
    """Set the thread count of Numba and BLAS (imported here, not at the top: see npdc.cli)."""
    from npdc.threads import set_threads

    return set_threads(value)


def print_json(obj):
    print(json.dumps(obj, sort_keys=True))


def table(rows, columns):
    """Plain-text table: columns is a list of (header, key, format)."""
    cells = [[h for h, _, _ in columns]] + [[fmt.format(r[k]) for _, k, fmt in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
