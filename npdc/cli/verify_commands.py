"""Verification on pairs: the `pairs` subcommand, and the --pairs / --embedding options that
`evaluate` and `report` share. The library is imported inside the functions so that --help stays
fast (see npdc.cli).
"""

from npdc.cli.common import check_paths, dataset_arg, positive_int, seed_arg


# -- pairs -------------------------------------------------------------------------------------
def pairs_arguments(sub):
    s = sub.add_parser("pairs", help="draw same/different verification pairs from a labelled split",
                       description="Balanced same-class and different-class pairs of images of one "
                                   "split (classes stand for identities), in ten folds, written as "
                                   "a plain-text pairs file (see the README); the same seed gives "
                                   "the same file.")
    dataset_arg(s, "the labelled dataset the pairs are drawn from")
    s.add_argument("--out", required=True, help="pairs file to write (.txt)")
    s.add_argument("--pairs", type=positive_int, default=6000,
                   help="number of pairs, a multiple of 2 x folds (default 6000, as LFW)")
    s.add_argument("--folds", type=positive_int, default=10,
                   help="folds of LFW's protocol the pairs are split into, half same and half "
                        "different in each (at least 2; default %(default)s, as LFW)")
    s.add_argument("--split", choices=["test", "train"], default="test",
                   help="the split the indices point into (default test)")
    seed_arg(s, "the draw")
    s.set_defaults(func=cmd_pairs)


def cmd_pairs(args):
    from npdc.engine.verification import make_pairs
    from npdc.io.datasets import load_dataset
    from npdc.io.pairs import write_pairs

    check_paths([args.data], [("--out", args.out)])
    data = load_dataset(args.data)
    x, y = data.require(args.split)
    pairs = make_pairs(y, args.pairs, args.seed, args.folds)
    write_pairs(args.out, pairs, f"{args.pairs} pairs of images of the {args.split} split of "
                                 f"{data.name} ({len(y):,} images), {args.folds} folds, seed {args.seed}")
    print(f"wrote {args.pairs:,} pairs ({args.pairs // 2:,} same, {args.pairs // 2:,} different, "
          f"{args.folds} folds) of the {args.split} split of {data.name} to {args.out}")


# -- what evaluate and report share ------------------------------------------------------------------
def verification_args(s, embedding_needs="--pairs"):
    s.add_argument("--pairs", default=None,
                   help="a pairs file (`npdc pairs`) of the test split: measure verification "
                        "accuracy by LFW's 10-fold protocol, and score on it")
    s.add_argument("--embedding", default=None,
                   help=f"with {embedding_needs}: the layer whose output is the embedding (default: the "
                        "classifier's input, fc5_bn in resnet18; fc5 is before its batch norm)")


def read_test_pairs(args, x, y):
    """The pairs of --pairs checked against the test split (x, y), or None without --pairs."""
    from npdc.errors import UserError
    from npdc.io.pairs import read_pairs

    if args.pairs is None:
        if args.embedding is not None:
            raise UserError("--embedding needs --pairs")
        return None
    return read_pairs(args.pairs, len(x), y)


def verification_lines(r):
    """The printed lines of a result holding the verification figures."""
    return (f"verification accuracy {r['verification_accuracy']:.4f} ± {r['verification_std']:.4f} "
            f"({r['folds']} folds, {r['pairs']:,} pairs, embedding {r['embedding']})  "
            f"ROC AUC {r['auc']:.4f}  TAR {r['tar_at_far_1e-3']:.4f} at FAR 1e-3  "
            f"threshold {r['threshold']:.4f}")
