"""The stages of Deep Compression (Han, Mao & Dally 2016) as functions: each takes its inputs and
its settings from the schedule (npdc.pipeline.schedule) and returns its result and a record, a
small JSON-able dict of what it measured. `npdc.pipeline.run` chains and checkpoints them; the
`prune` command calls `prune_stage` alone.

prune_stage    -> (pruned and retrained student, record): AGP during retraining, or a one-shot
                  std(W)*s or percentage cut before it; distillation from the unpruned model
quantize_stage -> (student with shared weights, {path: QuantizedLayer}, record): k-means (or linear)
                  per layer, then the centroids retrained with distillation
encode_stage   -> record: the Huffman-coded .npdc file (npdc.codec.model)
verify_stage   -> record: the written file decoded and evaluated
"""

import functools

import numpy as np

from npdc.codec.model import load_compressed, save_compressed
from npdc.compress.agp import GradualPruner
from npdc.compress.distill import Distillation, prune_and_retrain
from npdc.compress.prune import (check_layer_names, filter_masks_complete, masks_from_zeros,
                                 parse_layer_s, percentage_masks, prunable_layers, sparsity_table,
                                 threshold_masks)
from npdc.compress.quantize import CentroidSGD, quantize_net
from npdc.compress.thin import thin_filters
from npdc.engine.layers import Conv2d
from npdc.engine.images import take_rows
from npdc.engine.resnet import clone_net
from npdc.engine.train import evaluate, fit
from npdc.errors import UserError
from npdc.runtime.calibrate import calibration_scales


def training_subset(x, y, n, seed):
    """n training images drawn without replacement (in their stored order), or all when n is 0."""
    if not n or n >= len(x):
        return x, y
    pick = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return take_rows(x, pick), y[pick]


def check_schedule_names(net, schedule):
    """UserError naming any layer a schedule's per-layer settings name that `net` does not have
    (layer_s, quantize.layer_bits, keep), before any stage spends time."""
    for names in (parse_layer_s(schedule.prune.layer_s), schedule.quantize.layer_bits, schedule.keep):
        check_layer_names(net, names)


def _masks_or_gradual(teacher, stage, steps, keep=()):
    """(fixed masks, None) for a one-shot cut, or (None, GradualPruner factory) for AGP; the
    layers in `keep` stay dense whatever layer_s says, the first one (keep_first) unless it says."""
    overrides = parse_layer_s(stage.layer_s)
    check_layer_names(teacher, overrides)
    first = prunable_layers(teacher)[:1]
    if stage.keep_first and first and first[0] not in overrides:
        overrides[first[0]] = (0.0, False)
    overrides.update({name: (0.0, False) for name in keep})
    if stage.method == "agp":
        kept = [n for n, (v, _) in overrides.items() if v == 0]
        others = sorted(set(overrides) - set(kept))
        if others:
            raise UserError(f"AGP prunes to one target: layer_s may only keep layers dense (=0), "
                            f"not set {', '.join(others)}; use method std or percent for those")
        return None, functools.partial(GradualPruner, target=stage.target / 100, total_steps=steps,
                                       per_layer=stage.agp_scope == "layer", exclude=kept,
                                       granularity=stage.granularity)
    if stage.method == "std":
        masks = threshold_masks(teacher, stage.s, overrides, stage.granularity)
    else:
        masks = percentage_masks(teacher, stage.target, overrides, stage.granularity)
    if stage.granularity == "filter":
        masks = filter_masks_complete(teacher, masks)
    return masks, None


def prune_stage(teacher, x, y, stage, batch_size=128, seed=0, progress=True, keep=()):
    """Prune a copy of `teacher` as `stage` (a schedule's PruneStage) says and retrain it on
    (x, y), distilling from the teacher; method "none" copies it untouched. Layers in `keep` stay
    dense. Filter pruning then removes the empty filters. Returns (student, record with
    sparsity, per-layer rows, thinned filters and history)."""
    check_layer_names(teacher, keep)
    if stage.method == "none":
        student, history = clone_net(teacher), []
        rows, total = sparsity_table(student)
        return student, {"sparsity": total["sparsity"], "layers": rows, "thinned": {}, "history": []}
    xs, ys = training_subset(x, y, stage.train_images, seed)
    steps = stage.epochs * -(-len(xs) // batch_size)
    masks, gradual = _masks_or_gradual(teacher, stage, steps, keep)
    student, _, history = prune_and_retrain(
        teacher, xs, ys if stage.labels else None, masks, gradual,
        kd=None if stage.kd == "none" else stage.kd, tau=stage.tau, hard_weight=stage.hard_weight,
        on=stage.on, epochs=stage.epochs, lr=stage.lr, progress=progress,
        kd_layer=stage.kd_layer or None, kd_layer_loss=stage.kd_layer_loss,
        kd_layer_weight=stage.kd_layer_weight, augment=stage.augment,
        batch_size=batch_size, seed=seed)
    thinned = {}
    if stage.granularity == "filter":
        student, thinned = thin_filters(student)
    rows, total = sparsity_table(student)
    return student, {"sparsity": total["sparsity"], "layers": rows, "thinned": thinned,
                     "history": history}


def layer_bits(net, stage):
    """{prunable layer: bits}: the stage's per-layer setting, else its conv or fc default."""
    return {n: stage.layer_bits.get(n, stage.conv_bits if isinstance(net.layers[n], Conv2d)
                                    else stage.fc_bits)
            for n in prunable_layers(net)}


def quantize_stage(student, teacher, x, y, stage, batch_size=128, seed=0, progress=True, keep=()):
    """Quantize the pruned `student` in place (its zeros stay pruned), except the layers in
    `keep`, which stay float, and retrain the shared centroids for stage.epochs with
    distillation from `teacher`. Returns (student, {path: QuantizedLayer} with the codebooks as
    trained, record)."""
    check_layer_names(student, stage.layer_bits)
    check_layer_names(student, keep)
    layers = [name for name in prunable_layers(student) if name not in keep]
    quantized = quantize_net(student, layer_bits(student, stage), stage.method, masks_from_zeros(student),
                             layers=layers)
    if stage.epochs:
        xs, ys = training_subset(x, y, stage.train_images, seed + 1)
        fit(student, xs, ys, stage.epochs, lr=stage.lr, weight_decay=0.0, progress=progress,
            augment_pad=None if stage.augment else 0,
            objective=Distillation(teacher, stage.kd, stage.tau, hard_weight=stage.hard_weight),
            optimizer=functools.partial(CentroidSGD, shared=quantized), batch_size=batch_size, seed=seed)
        quantized = {p: q.with_codebook(trained_codebook(student.params()[p], q))
                     for p, q in quantized.items()}
    return student, quantized, {}


def trained_codebook(W, q):
    """The centroids of QuantizedLayer q after retraining, read back from the weights W that
    share them (a centroid nobody uses keeps its old value)."""
    codebook = np.array(q.codebook, np.float32)
    flat = W.reshape(-1)
    member = np.full(len(codebook), -1)
    positions = np.flatnonzero(q.indices)
    member[q.indices[positions] - 1] = positions  # any member will do: they all hold the centroid
    used = member >= 0
    codebook[used] = flat[member[used]]
    return codebook


def encode_stage(net, quantized, stage, out, x_train=None):
    """Write the .npdc file for `net` and its quantized layers at `out` (atomically). With
    stage.int8 the file is then decoded, int8 inference calibrated on x_train (the net as the
    file gives it back, so the scales fit what the runtime runs) and the file written again with
    the activation scales."""
    size = save_compressed(out, net, quantized, stage.raw_dtype, stage.codebook_dtype)
    if not stage.int8:
        return {"size_bytes": size}
    scales = calibration_scales(load_compressed(out)[0], x_train, stage.int8_images, stage.int8_method)
    size = save_compressed(out, net, quantized, stage.raw_dtype, stage.codebook_dtype, scales)
    return {"size_bytes": size, "int8_activations": len(scales)}


def verify_stage(out, x_test, y_test, progress=True):
    """Decode the written file and evaluate it: what the file holds, not what was meant."""
    net, _ = load_compressed(out)
    return {"accuracy": evaluate(net, x_test, y_test, progress=progress)["accuracy"]}
