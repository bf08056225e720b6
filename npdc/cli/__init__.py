"""`python -m npdc SUBCOMMAND`: parse arguments, call the library, print the result.

A user mistake (a UserError, or bad arguments) is one line on stderr and exit code 2. Each
subcommand has an `X_arguments(sub)` function that declares its options and a `cmd_X(args)` that
runs it, in model_commands.py (train, evaluate, infer, info, speed, tune, import, export,
decompress), compress_commands.py (sensitivity, prune, compress, report) or verify_commands.py
(pairs, and the --pairs options of evaluate and report). The commands import
the library inside their functions, not at the top, so that `--help` and argument errors answer
without loading NumPy, Numba and the kernels; for the same reason `main` applies the process
settings (npdc.tune_process) before any command loads NumPy.

Every subcommand also takes --quiet and --log-level: progress and messages go to stderr through
npdc.progress; results, tables and --json lines to stdout.
"""

import sys

from npdc import __version__
from npdc.cli import compress_commands, model_commands, verify_commands
from npdc.cli.common import LOG_LEVELS, Parser
from npdc.errors import UserError
from npdc.process import opted_out, tune_process

SUBCOMMANDS = (
    model_commands.train_arguments, model_commands.evaluate_arguments, model_commands.infer_arguments,
    model_commands.info_arguments, compress_commands.sensitivity_arguments,
    compress_commands.prune_arguments, compress_commands.compress_arguments,
    compress_commands.report_arguments, model_commands.decompress_arguments,
    model_commands.import_arguments, model_commands.export_arguments, model_commands.speed_arguments,
    model_commands.tune_arguments, verify_commands.pairs_arguments)


def build_parser():
    p = Parser(prog="npdc", description="NumPy Deep Compression: train, evaluate and compress "
                                        "ResNets without a deep-learning framework.")
    p.add_argument("--version", action="version", version=f"npdc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in SUBCOMMANDS:
        add(sub)
    for command in sub.choices.values():
        output_args(command)
    return p


def output_args(s):
    """--quiet and --log-level, which every subcommand takes."""
    s.add_argument("--quiet", action="store_true", help="no progress and no messages on stderr, "
                   "only errors and warnings (the same as --log-level warning)")
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="the least important stderr messages shown (default info; progress is info)")


def main(argv=None):
    if not opted_out():
        tune_process()  # before a command loads NumPy: thread settings act only then
    args = build_parser().parse_args(argv)
    from npdc.progress import output  # here, not at the top: tqdm and logging cost --help 25 ms
    level = "warning" if args.quiet and args.log_level in ("debug", "info") else args.log_level
    primitive = getattr(args, "primitive", None)
    try:
        if primitive:
            _force_primitive(primitive)
        with output(level):
            args.func(args)
    except UserError as e:
        _close_progress_bars()
        print(f"npdc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if primitive:  # in-process callers (tests) must not inherit it
            _force_primitive(None)
    return 0


def _close_progress_bars():
    """Close any tqdm bar left open, so that an error line starts on a line of its own."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", None) or ()):
        bar.close()


def _force_primitive(name):
    from npdc.kernels.conv import force_primitive

    try:
        force_primitive(name)
    except ValueError as e:
        raise UserError(str(e)) from None
