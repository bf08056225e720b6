"""Activation ranges for int8 inference, measured by running the float plan on calibration images
(training images: the ranges must not be fitted to the test split).

Jacob et al. 2018 (section 3) take each activation's range as the min and max seen; the
`percentile` method clips outliers instead, taking the p-th and (100-p)-th percentiles of a
deterministic subsample of each tensor (the percentile calibration of Wu et al. 2020, "Integer
Quantization for Deep Learning Inference: Principles and Empirical Evaluation", section 4.1).
A range always includes 0, so that real 0 (padding, a ReLU's floor) is exactly representable,
as the paper requires of its zero point.
"""

import numpy as np

from npdc.engine.images import take_rows
from npdc.engine.net import INPUT
from npdc.errors import UserError
from npdc.runtime.infer import build_runtime, check_images
from npdc.runtime.int8_params import activation_scales

METHODS = ("minmax", "percentile")
SAMPLE = 1 << 15  # values of one tensor kept per batch for the percentile method
CALIBRATION_BATCH = 64
CALIBRATION_IMAGES = 256  # the default count: a few hundred training images


def calibration_scales(net, images, count=CALIBRATION_IMAGES, method="minmax", percentile=99.99):
    """{value: (scale, zero point)} from `count` of the images (evenly spaced over them, so a
    split sorted by class still gives every class)."""
    if count < 1:
        raise UserError(f"the number of calibration images must be at least 1, not {count}")
    if len(images) == 0:
        raise UserError("no calibration images: the data has no training split")
    rows = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).astype(np.int64))
    return activation_scales(calibrate(net, take_rows(images, rows), method, percentile))


def calibrate(net, images, method="minmax", percentile=99.99, batch=CALIBRATION_BATCH):
    """{plan value name: (low, high)} of every activation the float plan of `net` writes
    (its input included), over raw `images` (N, C, H, W) or (N, H, W)."""
    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    if not 50.0 < float(percentile) <= 100.0:
        raise UserError(f"the calibration percentile must be in (50, 100], not {percentile}")
    images = check_images(images, net.in_shape)
    if len(images) == 0:
        raise UserError("no calibration images")
    runtime = build_runtime(net, {}, "dense", min(batch, len(images)), walk="python")
    plan = runtime.plan
    names = [INPUT] + [s.output for s in plan.steps]
    seen = {name: [] for name in names}
    for i in range(0, len(images), plan.batch):
        n = runtime.load_input(images[i:i + plan.batch])
        _record(seen[INPUT], runtime.view(INPUT, n), method)
        for step, call in zip(plan.steps, runtime.step_calls(n)):
            call()
            _record(seen[step.output], runtime.view(step.output, n), method)
    ranges = {}
    for name, parts in seen.items():
        if method == "minmax":
            low, high = min(p[0] for p in parts), max(p[1] for p in parts)
        else:
            sample = np.concatenate(parts)
            low, high = np.percentile(sample, [100.0 - percentile, percentile])
        if not (np.isfinite(low) and np.isfinite(high)):
            raise UserError(f"calibration: activation {name} is not finite on the calibration images")
        ranges[name] = (min(float(low), 0.0), max(float(high), 0.0))
    return ranges


def _record(parts, values, method):
    flat = values.reshape(-1)
    if method == "minmax":
        parts.append((float(flat.min()), float(flat.max())))
    else:
        parts.append(flat[::max(1, flat.size // SAMPLE)].astype(np.float64))
