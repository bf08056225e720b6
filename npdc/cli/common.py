"""What every subcommand shares: the one-line-error parser, argument types, the thread and weight
options, JSON output and the plain-text table."""

import argparse
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


def threads_args(s):
    s.add_argument("--threads", type=positive_int, default=2, help="threads for kernels and BLAS (default 2)")
    s.add_argument("--primitive", default=None, help="run every engine conv that accepts it with "
                   "this primitive (direct, flat, polyphase, im2col, kn2row, winograd2, winograd4, fft); "
                   "the .npdc runtime runs engine primitives only with dense weights at batch > 1")


def weights_arg(s):
    s.add_argument("--weights", choices=["dense", "stream", "sparse"], default="sparse",
                   help=".npdc runtime: weights decoded to float32 once (dense), decoded layer by "
                        "layer as the pass reaches them (stream), or used as non-zeros and "
                        "codebook indices (sparse, default)")


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
