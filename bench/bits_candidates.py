"""How the bit-width search judges its candidates with and without a brief centroid retraining:
the ladder of a pruned model (per-layer widths, gentlest first), then the back-off's
measurements with `--train-images` images of centroid retraining per candidate (0: judged as
quantized); each measured candidate's mean bits and validation drop printed (the measurement
behind `[search] bits_train_images`; docs/perf.md).

Run: python bench/bits_candidates.py PRUNED.h5 [--teacher data/models/fmnist-resnet18.h5]
     [--train-images 4000] [--val-fraction 0.2]

PRUNED.h5: a pruned model, e.g. `pruned.h5` in a compress run's work folder.
"""

import argparse
import time
from dataclasses import replace

import numpy as np

from npdc.api import load_dataset
from npdc.compress.prune import prunable_layers
from npdc.engine.metrics import TopOne
from npdc.io.modelfile import load_model
from npdc.pipeline.auto import Gate, bits_ladder, choose_bits
from npdc.pipeline.auto_stages import mean_bits
from npdc.pipeline.schedule import load_schedule
from npdc.pipeline.stages import training_subset


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pruned")
    p.add_argument("--teacher", default="data/models/fmnist-resnet18.h5")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--val-fraction", type=float, default=0.2)
    args = p.parse_args()
    student, teacher = load_model(args.pruned), load_model(args.teacher)
    x, y, x_val, y_val = load_dataset("fashion-mnist").held_out(args.val_fraction, 0)
    schedule = load_schedule()
    metric = TopOne(x_val, y_val)
    gate = Gate.of(metric, metric.score(teacher), schedule.search.max_drop)
    started = time.perf_counter()
    candidates, _ = bits_ladder(student, metric.subset(schedule.search.sensitivity_images),
                                prunable_layers(student), schedule.search.bits, progress=False)
    print(f"ladder of {len(candidates)} candidates in {time.perf_counter() - started:.0f} s")
    settings = schedule.quantize if args.train_images else replace(schedule.quantize, epochs=0)
    xs, ys = training_subset(x, y, args.train_images or 1, 2)
    chosen, found = choose_bits(student, teacher, xs, ys, metric, candidates, gate,
                                1.0 - schedule.search.margin, settings)
    nonzero = {n: int(np.count_nonzero(student.layers[n].params["W"])) for n in candidates[0]}
    for c, (accuracy, seconds), ok in sorted(found.tried):
        bits = mean_bits(candidates[c], nonzero)
        print(f"candidate {c + 1}: {bits:.2f} mean bits, drop {gate.drop_points(accuracy):+.2f} points, "
              f"{'passes' if ok else 'fails'}, {seconds:.0f} s")
    print(f"chosen: {None if chosen is None else chosen + 1}")


if __name__ == "__main__":
    main()
