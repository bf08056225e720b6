"""How much a climb step recovers with more retraining: one global magnitude cut from the
baseline to a sparsity, then further rounds of retraining at the same masks, each round's
validation drop printed (the measurement behind the search's recovery rounds and its retraining
settings; docs/perf.md).

Run: python bench/climb_rounds.py [MODEL.h5] [--sparsity 0.85] [--images 27000] [--rounds 2]
     [--lr 0.005] [--hard-weight 0.0] [--no-augment]

Validation images are the search's: its share of Fashion-MNIST's training split, seed 0.
"""

import argparse
import time

from npdc.api import load_dataset
from npdc.compress.prune import prunable_layers
from npdc.engine.resnet import clone_net
from npdc.engine.train import evaluate
from npdc.io.modelfile import load_model
from npdc.pipeline.auto import GlobalCut, retrain_step, sparsity_of
from npdc.pipeline.schedule import PruneStage, SearchStage
from npdc.pipeline.stages import training_subset


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="data/models/fmnist-resnet18.h5")
    p.add_argument("--sparsity", type=float, default=0.85)
    p.add_argument("--images", type=int, default=27000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--hard-weight", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true",
                   help="retrain on the images as stored, the teacher's outputs computed once")
    args = p.parse_args()
    teacher = load_model(args.model)
    x, y, x_val, y_val = load_dataset("fashion-mnist").held_out(SearchStage().val_fraction, 0)
    base = evaluate(teacher, x_val, y_val)["accuracy"]
    print(f"{args.model}: validation accuracy {base:.4f} on {len(y_val)} images")
    layers = prunable_layers(teacher)
    targets = GlobalCut(layers, ["conv1"])(args.sparsity, teacher)
    settings = PruneStage(lr=args.lr, hard_weight=args.hard_weight, augment=not args.no_augment)
    net = clone_net(teacher)
    for r in range(args.rounds + 1):
        started = time.perf_counter()
        subset_seed, fit_seed = (1000, 0) if r == 0 else (1999 + r, 99 + r)
        xs, ys = training_subset(x, y, args.images, subset_seed)
        retrain_step(net, teacher, xs, ys, targets, settings, 128, fit_seed, False)
        acc = evaluate(net, x_val, y_val)["accuracy"]
        print(f"round {r}: {100 * sparsity_of(net, layers):.1f} % sparse, validation {acc:.4f}, "
              f"drop {100 * (base - acc):+.2f} points, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
