"""The figures of a .npdc file run by the runtime: accuracy (top-1, or verification on pairs),
speed, memory and the score, and prediction from an image file. What the `evaluate` and `infer`
commands print and write."""

import time
from pathlib import Path

import numpy as np

from npdc.atomic import atomic_path
from npdc.codec.model import load_compressed, stored_scales
from npdc.engine.verification import (check_embedding, cosine_similarity, default_embedding, embed,
                                      protocol, used_images, verify_net)
from npdc.errors import UserError
from npdc.io.datasets import check_finite, load_dataset
from npdc.io.npz import npz_names, read_npz
from npdc.report import totals
from npdc.runtime.calibrate import calibration_scales
from npdc.runtime.infer import build_runtime
from npdc.runtime.int8 import Int8Runtime
from npdc.runtime.measure import latency_ms, memory_figures, peak_rss_bytes
from npdc.score import score


def verify_compressed(path, net, codes, x, pairs, layer=None, weights="sparse", batch_size=128,
                      walk=None):
    """The verification figures (npdc.engine.verification.protocol) of the .npdc file at `path`
    (decoded: net, codes) on the images x the pairs index. Embeddings come from the runtime when
    its plan writes `layer` (default: the classifier's input, fc5_bn in resnet18), else from the
    decoded net in the engine (e.g. fc5, which the runtime fuses with its batch norm);
    `embedding_source` says which."""
    layer = check_embedding(net, layer or default_embedding(net))
    used, local = used_images(pairs)
    runtime = build_runtime(net, codes, weights, min(batch_size, len(used)), path, walk)
    if runtime.writer(layer) is not None:
        embeddings, source = runtime.features(x[used], layer), "runtime"
    else:
        embeddings, source = embed(net, x[used], layer, batch_size), "decoded net"
    return {**protocol(cosine_similarity(embeddings, local), pairs), "embedding": layer,
            "embedding_source": source}


VERIFICATION_FIGURES = ("verification_accuracy", "verification_std", "auc", "tar_at_far_1e-3", "threshold")


def verification_before_after(path, baseline, x, pairs, layer=None):
    """The verification figures on `pairs` of images x of the uncompressed `baseline` Net (in
    the engine) and of the .npdc file at `path` (as `evaluate FILE --pairs` takes them):
    {"before": {...}, "after": {...}, "pairs", "folds", "embedding", "embedding_source"}."""
    before = verify_net(baseline, x, pairs, layer)
    after = verify_compressed(path, *load_compressed(path), x, pairs, layer)
    return {"before": {k: before[k] for k in VERIFICATION_FIGURES},
            "after": {k: after[k] for k in VERIFICATION_FIGURES}, "pairs": after["pairs"],
            "folds": after["folds"], "embedding": after["embedding"],
            "embedding_source": after["embedding_source"]}


PRECISIONS = ("float", "int8")


def int8_scales(path, net, data, count, method="minmax"):
    """(activation scales for int8 inference of `net`, where they came from): the ones the .npdc
    file at `path` stores, else calibrated on `count` training images of `data` (a dataset name
    or path, or a Dataset)."""
    stored = stored_scales(path, net)
    if stored is not None:
        return stored, "file"
    if data is None:
        raise UserError(f"{Path(path).name} stores no int8 scales: give --data, whose training images "
                        "calibrate them")
    if isinstance(data, tuple):
        raise UserError("int8 calibrates on training images: give a dataset, not (x, y)")
    if isinstance(data, (str, Path)):
        data = load_dataset(str(data))
    x, _ = data.fit_to(net.in_shape).require("train")
    return calibration_scales(net, x, count, method), f"calibrated on {min(count, len(x))} training images"


def make_runtime(net, codes, weights, batch, path, walk, precision="float", scales=None):
    """The float runtime (npdc.runtime.infer) or, with precision int8, the integer one
    (npdc.runtime.int8) with its activation `scales`."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "int8":
        return Int8Runtime(net, scales, batch)
    return build_runtime(net, codes, weights, batch, path, walk)


def evaluate_compressed(path, net, codes, x, y, weights="sparse", batch_size=128,
                        baseline_accuracy=None, preset="relative", pairs=None, layer=None, walk=None,
                        precision="float", scales=None, scales_source=None):
    """Accuracy of the .npdc file at `path` (decoded: net, codes) on (x, y) through the runtime,
    with its size, memory (M, m), speed and score. Without baseline_accuracy the relative preset
    takes the file's own accuracy as the reference (the accuracy gate passes). With `pairs` the
    verification figures join the result and the score's accuracy z is the verification
    accuracy (baseline_accuracy then is the baseline's verification accuracy). precision int8
    runs the integer runtime with the activation `scales` (int8_scales)."""
    if len(x) == 0:
        raise UserError("the test split is empty")
    if precision == "int8" and pairs is not None:
        raise UserError("--pairs runs embeddings in float; drop --precision int8 to verify pairs")
    runtime = make_runtime(net, codes, weights, min(batch_size, len(x)), path, walk, precision, scales)
    t0 = time.perf_counter()
    logits = runtime.predict(x)
    seconds = time.perf_counter() - t0
    accuracy = float((logits.argmax(axis=1) == y).mean())
    verification = verify_compressed(path, net, codes, x, pairs, layer, weights, batch_size, walk) \
        if pairs is not None else {}
    z = verification.get("verification_accuracy", accuracy)
    single = make_runtime(net, codes, weights, 1, path, walk, precision, scales)
    M, m, method = memory_figures(net, single)
    latency = latency_ms(single)
    sizes = totals(path, baseline=net)
    z0 = z if baseline_accuracy is None else baseline_accuracy
    result = score(sizes["size_before_bytes"], sizes["size_after_bytes"], M, m, z, preset, z0)
    int8 = {"int8_scales": scales_source} if precision == "int8" else {}
    return {**int8, "accuracy": accuracy, "images": int(len(x)), "weights": weights, "precision": precision,
            "size_bytes": sizes["size_after_bytes"], "size_before_bytes": sizes["size_before_bytes"],
            "peak_memory_bytes": int(m), "baseline_peak_memory_bytes": int(M),
            "peak_rss_bytes": peak_rss_bytes(), "memory_method": method,
            "images_per_s": len(x) / seconds if seconds > 0 else 0.0, "latency_ms_b1": latency,
            "score": result["score"], "score_parts": result, "primitives": runtime.primitives,
            "walk": runtime.walk, "kernels": kernel_names(runtime),
            "sparse_layers": runtime.sparse_layers(), "sparse_layers_b1": single.sparse_layers(),
            "accuracy_reference": "baseline" if baseline_accuracy is not None else "self",
            "score_accuracy": "top-1" if pairs is None else "verification", **verification}


def read_images(path):
    """Images from a .npz file: the array `x`, else `x_test`, else its only array. The array's
    .npy header is checked against the file's allocation budget before it is read, and float
    images must be finite; anything else is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    names = npz_names(path)
    key = next((k for k in ("x", "x_test", "images") if k in names), None)
    if key is None and len(names) == 1:
        key = names[0]
    if key is None:
        raise UserError(f"{path}: expected an array x, x_test or images, found {', '.join(names) or 'none'}")
    return check_finite(read_npz(path, [key])[key], path)


def kernel_names(runtime):
    """{step: "kernel" or "kernel/storage"}: how each step of the runtime ran."""
    return {n: op if kind is None else f"{op}/{kind}" for n, (op, kind) in runtime.kernels().items()}


def predict_file(model, images_path, out, weights="sparse", batch_size=128, walk=None,
                 precision="float", calibration_data=None, calibration=256, calibration_method="minmax"):
    """Logits and predicted classes of the images in images_path, written atomically to out
    (.npz with `logits` and `classes`); returns (the number of images, the names of the layers
    that ran with sparse weights). precision int8 calibrates on the training images of
    `calibration_data`."""
    net, codes = load_compressed(model)
    images = read_images(images_path)
    if len(images) == 0:
        raise UserError(f"{images_path}: no images")
    scales = None
    if precision == "int8":
        scales = int8_scales(model, net, calibration_data, calibration, calibration_method)[0]
    runtime = make_runtime(net, codes, weights, min(batch_size, len(images)), model, walk, precision,
                           scales)
    logits = runtime.predict(images)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, logits=logits, classes=logits.argmax(axis=1).astype(np.int64))
    return len(logits), runtime.sparse_layers()
