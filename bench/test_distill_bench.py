"""Three retraining passes with distillation over the same images, as the accuracy-budgeted
climb's rounds retrain on the whole training split: the teacher run on every batch of every
pass, against the teacher's outputs computed once before the three passes (`[prune] augment =
false`, what the climb does): the shipped ResNet-18, 2,560 Fashion-MNIST training images, the
logit KL beside labels, alternating.

Run: python -m pytest bench/test_distill_bench.py --benchmark-only -p no:cacheprovider
"""

import pytest

from bench.conftest import alternating_best, gate
from npdc.api import load_dataset
from npdc.compress.distill import Distillation
from npdc.engine.resnet import clone_net
from npdc.engine.train import fit
from npdc.io.modelfile import load_model

IMAGES, PASSES = 2560, 3


@pytest.fixture(scope="module")
def setting():
    teacher = load_model("data/models/fmnist-resnet18.h5")
    x, y = load_dataset("fashion-mnist").require("train")
    return teacher, x[:IMAGES], y[:IMAGES], Distillation(teacher, "kl", 4.0, hard_weight=1.0)


@pytest.mark.gate
def test_teacher_outputs_computed_once_beat_the_per_batch_teacher(benchmark, setting):
    teacher, x, y, objective = setting

    def cached():
        outputs = objective.outputs_of(x)
        for _ in range(PASSES):
            fit(clone_net(teacher), x, y, 1, lr=0.02, objective=objective, targets=outputs, progress=False)

    def per_batch():
        for _ in range(PASSES):
            fit(clone_net(teacher), x, y, 1, lr=0.02, objective=objective, augment_pad=0, progress=False)
    benchmark.pedantic(cached, rounds=1, warmup_rounds=1)
    ours, theirs = alternating_best(cached, per_batch, rounds=2)
    benchmark.extra_info.update(cached_img_s=round(PASSES * IMAGES / ours, 1),
                                per_batch_img_s=round(PASSES * IMAGES / theirs, 1))
    gate(benchmark, "speedup", theirs / ours, 1.05)
