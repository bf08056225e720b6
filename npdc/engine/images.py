"""Images as the engine takes them: float32 in [0, 1] from uint8 or float storage, and the
per-channel statistics that a model's input normalisation is set from. Datasets (npdc.io) keep
their stored dtype and convert one batch at a time through `as_float`."""

import numpy as np

from npdc.errors import UserError


def as_float(x: np.ndarray) -> np.ndarray:
    """Images as float32: uint8 is scaled to [0, 1], floats pass through (no copy if float32)."""
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255.0), dtype=np.float32)
    if np.issubdtype(x.dtype, np.floating):
        return np.asarray(x, dtype=np.float32)
    raise UserError(f"cannot use images of dtype {x.dtype}: expected uint8 or floating point")


def channel_stats(x: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of `as_float(x)`, batch by batch.

    A constant channel gets std 1.0 so normalising by it never divides by zero.
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise UserError(f"channel statistics need a non-empty (N, C, H, W) array, got {x.shape}")
    if batch < 1:
        raise UserError(f"channel statistics batch size must be positive, got {batch}")
    channels = x.shape[1]
    seen = 0
    mean = np.zeros(channels)
    squares = np.zeros(channels)  # sum of squared deviations from the running mean
    low = np.full(channels, np.inf)
    high = np.full(channels, -np.inf)
    for start in range(0, x.shape[0], batch):
        chunk = as_float(x[start : start + batch]).astype(np.float64)
        chunk_seen = chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        if chunk_seen == 0:
            continue
        chunk_mean = chunk.mean(axis=(0, 2, 3))
        chunk_squares = np.square(chunk - chunk_mean[None, :, None, None]).sum(axis=(0, 2, 3))
        total = seen + chunk_seen
        shift = chunk_mean - mean
        mean = mean + shift * (chunk_seen / total)
        squares = squares + chunk_squares + np.square(shift) * (seen * chunk_seen / total)
        seen = total
        low = np.minimum(low, chunk.min(axis=(0, 2, 3)))
        high = np.maximum(high, chunk.max(axis=(0, 2, 3)))
    if seen == 0:
        raise UserError(f"channel statistics need images with pixels, got shape {x.shape}")
    std = np.sqrt(squares / seen)
    std[(low == high) | (std == 0)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def check_fits(net, x, y=None):
    """UserError unless images x (N, C, H, W) match the net's input and labels y its classes;
    a split without images is refused too (an accuracy over no images means nothing)."""
    if len(x) == 0:
        raise UserError("the dataset split has no images")
    if tuple(x.shape[1:]) != net.in_shape:
        raise UserError(f"dataset images are {tuple(x.shape[1:])}, the model expects {net.in_shape}")
    classes = net.shapes[net.output][0]
    if y is not None and len(y) and int(y.max()) >= classes:
        raise UserError(f"dataset has label {int(y.max())}, the model has {classes} classes")
    if y is not None and len(y) and int(y.min()) < 0:
        raise UserError(f"dataset has label {int(y.min())}, labels start at 0")


def take_rows(x, rows):
    """x[rows] for an index array; an image array decoded lazily (an image folder's) stays lazy
    through its `subset`, so holding out or sampling images decodes none of them."""
    subset = getattr(x, "subset", None)
    return subset(rows) if subset is not None else x[rows]


def set_normalisation(net, mean=None, std=None):
    """Set the input normalisation of `net` where given: mean and std per channel, on the [0, 1]
    scale of the images; each needs one finite float32 per input channel, std above 0."""
    for label, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = np.asarray(values, np.float32)
        if values.shape != (net.in_shape[0],):
            raise UserError(f"--{label} needs {net.in_shape[0]} values (one per input channel), got {values.size}")
        if not np.all(np.isfinite(values)) or (label == "std" and not np.all(values > 0)):
            raise UserError(f"--{label} values must be finite (and --std positive) in float32")
        setattr(net, label, values)
