"""What a compressed model costs and saves: the per-layer table, the totals and the score.

The per-layer table follows the one of the seed design (REFERENCES.md: "P+Q 85.97 %, P+Q+H
90.81 % per-layer saving overall"): for every quantized layer of a .npdc file, its sparsity, the
bits per stored value and per relative index before and after Huffman coding (Han, Mao & Dally
2016, "Deep Compression", sections 2-4), and the fraction of its float32 size saved. Bit counts
come from npdc.codec.payload.layer_bit_stats on the decoded layer, so the table measures the
coding the file actually uses.

The score weighs memory saved and size saved and gates them by accuracy and size (`score`).
Memory: M is the uncompressed model run naively at batch 1 (float32 weights, every activation
kept), m the same image through the npdc runtime from the .npdc file with sparse weights
(npdc.runtime.measure.memory_figures); a report always names the measurement it used
(`memory_method`).
"""

import lzma
import math

import numpy as np

from npdc.codec import huffman, relindex
from npdc.codec.container import pack_container
from npdc.codec.model import load_compressed, read_model_file
from npdc.codec.payload import DENSE, MAX_CODE_LEN, layer_bit_stats
from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.runtime.infer import build_runtime
from npdc.runtime.measure import memory_figures
from npdc.score import PRESETS, accuracy_fraction, score


# -- per-layer table -----------------------------------------------------------------------------
def _huffman_bits(symbols):
    """Bits of the stream the codec writes for these symbols (same length limit as the codec)."""
    counts = np.bincount(np.asarray(symbols, np.int64))
    return huffman.total_bits(counts, huffman.code_lengths(counts, MAX_CODE_LEN))


def entropy_bits(symbols):
    """Zeroth-order empirical entropy of a stream times its length: the fewest bits any code of
    one symbol at a time could spend on it (Shannon 1948); Huffman coding is within a bit per
    symbol of it."""
    counts = np.bincount(np.asarray(symbols, np.int64))
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / counts.sum())).sum()) if counts.size else 0.0


def xz_bytes(source):
    """Size of the same pruned, quantized tensors under xz at its strongest setting (LZMA2,
    preset 9 extreme), the general-purpose yardstick for the .npdc coding: every layer's value
    indices over all positions (one byte each, two when the codebook is larger than 255),
    its codebook, and the other parameters as the file stores them."""
    model = read_model_file(source)
    parts = []
    for layer in model.layers:
        indices, codebook = model.decode(layer)
        stored = np.float16 if layer.payload[1] == 2 else np.float32  # the value width byte
        parts += [indices.astype(np.uint8 if codebook.size < 256 else np.uint16).tobytes(),
                  codebook.astype(stored).tobytes()]
    parts += [payload for _, payload in model.params]
    return len(lzma.compress(b"".join(parts), preset=9 | lzma.PRESET_EXTREME))


def _layer_row(layer, indices, codebook):
    """One table row of a LayerSection decoded; see layer_table for the meaning of the fields."""
    path, weights, payload = layer.path, layer.size, layer.payload
    k, gap_bits = int(codebook.size), payload[0]
    codebook_bits = 8 * k * payload[1]  # the byte after the gap width is the value width
    nonzero = int(np.count_nonzero(indices))
    if gap_bits == DENSE:
        symbols = k + int(nonzero < weights)  # exact zeros need one more symbol
        entries, weight_bits, index_bits = weights, (symbols - 1).bit_length(), 0
        huffman_values, huffman_gaps = _huffman_bits(indices), 0
        entropy = entropy_bits(indices)
    else:
        stats = layer_bit_stats(indices, k, gap_bits)  # its codebook_bits go unused
        entries, weight_bits, index_bits = stats["entries"], k.bit_length(), gap_bits
        huffman_values, huffman_gaps = stats["huffman_value_bits"], stats["huffman_index_bits"]
        entropy = sum(entropy_bits(stream) for stream in relindex.encode_relative(indices, gap_bits))
    pq_bits = entries * (weight_bits + index_bits) + codebook_bits
    per_entry, per_bit = 1 / max(entries, 1), 1 / max(32 * weights, 1)
    return {"layer": path, "kind": "dense" if gap_bits == DENSE else "sparse",
            "weights": weights, "nonzero": nonzero, "sparsity": 1 - nonzero / max(weights, 1),
            "codebook": k, "entries": entries,
            "weight_bits": weight_bits, "huffman_weight_bits": huffman_values * per_entry,
            "index_bits": int(index_bits), "huffman_index_bits": huffman_gaps * per_entry,
            "pq_bits": pq_bits, "stream_bits": huffman_values + huffman_gaps, "entropy_bits": entropy,
            "bytes": len(payload), "rate_pq": 1 - pq_bits * per_bit,
            "rate_pqh": 1 - 8 * len(payload) * per_bit}


def layer_table(source):
    """One dict per quantized layer of a .npdc file (a path, its sections or its ModelSections from
    npdc.codec.model.read_model_file), in file order.

    layer, kind ("sparse"/"dense"), weights (positions), nonzero, sparsity = 1 - nonzero/weights,
    codebook = k values, entries = stored values (sparse: non-zeros plus filler zeros; dense: every
    position); weight_bits = fixed width of one stored value: ceil(log2(k + 1)) for a sparse layer
    (index 0 marks a filler), ceil(log2 k) for a dense one (k + 1 symbols if it holds exact
    zeros); huffman_weight_bits and huffman_index_bits = Huffman bits of the value and gap streams
    divided by entries; index_bits = gap width (0 for dense); bytes = the LAYR payload.
    Rates are the fraction of the layer's float32 size (32 * weights bits) saved:
      rate_pq  = 1 - (entries * (weight_bits + index_bits) + codebook bits) / (32 * weights)
      rate_pqh = 1 - 8 * bytes / (32 * weights)   (the payload: codebook, code tables, streams)
    A layer smaller than its codebook saves nothing and gets a negative rate."""
    model = read_model_file(source)
    return [_layer_row(layer, *model.decode(layer)) for layer in model.layers]


# -- totals -------------------------------------------------------------------------------------
def totals(source, rows=None, baseline=None):
    """Sizes of the whole model and the saving summed over the quantized layers.

    size_before_bytes = 4 * (every parameter + every buffer) of the float32 net: the BN running
    statistics are as much a part of a trained model as its weights, and the .npdc file stores
    them too; the input normalisation (a few values per channel) is left out. The net is
    `baseline` if given, else the file's architecture. size_after_bytes = the whole .npdc file,
    ratio = before / after. rate_pq and rate_pqh as in layer_table over all quantized layers."""
    model = read_model_file(source)
    rows = layer_table(model) if rows is None else rows
    net = baseline if baseline is not None else build_net(model.header["spec"])
    params = sum(int(p.size) for p in net.params().values())
    buffers = sum(int(b.size) for b in net.buffers().values())
    after = model.path.stat().st_size if model.path else len(pack_container(model.sections))
    weights, nonzero = sum(r["weights"] for r in rows), sum(r["nonzero"] for r in rows)
    original_bits = 32 * max(weights, 1)
    return {"parameters": params, "buffer_values": buffers,
            "size_before_bytes": 4 * (params + buffers), "size_after_bytes": after,
            "ratio": 4 * (params + buffers) / after,
            "quantized_weights": weights, "nonzero": nonzero,
            "sparsity": 1 - nonzero / max(weights, 1), "layer_bytes": sum(r["bytes"] for r in rows),
            "stream_bits": sum(r["stream_bits"] for r in rows),
            "entropy_bits": sum(r["entropy_bits"] for r in rows),
            "rate_pq": 1 - sum(r["pq_bits"] for r in rows) / original_bits,
            "rate_pqh": 1 - 8 * sum(r["bytes"] for r in rows) / original_bits}


# -- the whole report ---------------------------------------------------------------------------
def build_report(path, baseline=None, accuracy_before=None, accuracy_after=None,
                 preset="relative", memory=None, images=None, metric="top-1"):
    """The report dict of a .npdc file (JSON-able): layers, totals, accuracies, memory, score.

    baseline: the uncompressed Net (S and M come from it; else a net of the file's architecture
    stands in, which has the same sizes). memory: (M, m, method) measured elsewhere; else M is
    the baseline run naively and m the runtime on the file (npdc.runtime.measure.memory_figures).
    The score needs accuracy_after, and accuracy_before for the relative preset; without them it is None.
    images: how many images the accuracies were measured on; the report then gives each one's
    standard error, sqrt(z (1 - z) / images), so a reader can tell a drop from noise.
    metric: what the accuracies are, "top-1" or "verification" (on pairs; `images` then counts
    the pairs), recorded as accuracy_metric."""
    if preset not in PRESETS:
        raise UserError(f"unknown score preset {preset!r}; known: {', '.join(PRESETS)}")
    for value, what in ((accuracy_before, "accuracy before"), (accuracy_after, "accuracy after")):
        if value is not None:
            accuracy_fraction(value, what)
    model = read_model_file(path)
    rows = layer_table(model)
    if baseline is None:
        baseline = build_net(model.header["spec"])
    total = totals(model, rows, baseline)
    total["xz_bytes"] = xz_bytes(model)
    if memory is None:
        compressed, codes = load_compressed(path)
        memory = memory_figures(baseline, build_runtime(compressed, codes))
    M, m, method = memory
    result = None
    if accuracy_after is not None and (preset == "zte" or accuracy_before is not None):
        result = score(total["size_before_bytes"], total["size_after_bytes"], M, m,
                       accuracy_after, preset, accuracy_before)
    report = {"file": str(path), "layers": rows, "totals": total,
              "accuracy_before": accuracy_before, "accuracy_after": accuracy_after,
              "memory_before_bytes": M, "memory_after_bytes": m, "memory_method": method,
              "score": result, "accuracy_metric": metric}
    if images:
        report["accuracy_images"] = int(images)
        for key in ("accuracy_before", "accuracy_after"):
            if report[key] is not None:
                report[f"{key}_se"] = standard_error(report[key], images)
    return report


def standard_error(accuracy, images):
    """Standard error of an accuracy measured on `images` independent images (binomial)."""
    return math.sqrt(accuracy * (1.0 - accuracy) / images)


def _share(fraction):
    """A share of the budget (a fraction in the settings) as a percentage, '?' when unknown."""
    return "?" if fraction is None else f"{100 * fraction:g} %"


def _percent(x):
    return "–" if x is None else f"{100 * x:.2f} %"


def format_markdown(report):
    """A readable markdown page of a build_report dict."""
    t = report["totals"]
    lines = [f"# Compression report: {report.get('file', '')}", "", "## Layers", "",
             "| layer | kind | weights | nonzero | sparsity | weight bits | Huffman weight bits "
             "| index bits | Huffman index bits | bytes | P+Q | P+Q+H |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["layers"]:
        lines.append(f"| {r['layer']} | {r['kind']} | {r['weights']:,} | {r['nonzero']:,} | "
                     f"{_percent(r['sparsity'])} | {r['weight_bits']} | "
                     f"{r['huffman_weight_bits']:.2f} | {r['index_bits']} | "
                     f"{r['huffman_index_bits']:.2f} | {r['bytes']:,} | "
                     f"{_percent(r['rate_pq'])} | {_percent(r['rate_pqh'])} |")
    lines.append(f"| **total** | | {t['quantized_weights']:,} | {t['nonzero']:,} | "
                 f"{_percent(t['sparsity'])} | | | | | {t['layer_bytes']:,} | "
                 f"{_percent(t['rate_pq'])} | {_percent(t['rate_pqh'])} |")
    lines += ["", "P+Q and P+Q+H: fraction of the layer's float32 size saved with fixed-width "
              "fields, and by the Huffman-coded payload.", "", "## Totals", "",
              f"- parameters: {t['parameters']:,}, buffer values: {t['buffer_values']:,}",
              f"- size before (float32 parameters and buffers): {t['size_before_bytes']:,} bytes",
              f"- size after (the .npdc file): {t['size_after_bytes']:,} bytes",
              f"- ratio: {t['ratio']:.2f}x"]
    if "xz_bytes" in t:
        lines.append(f"- xz -9e of the same quantized tensors: {t['xz_bytes']:,} bytes (the .npdc is "
                     f"{100 * (1 - t['size_after_bytes'] / t['xz_bytes']):.1f} % smaller)")
    lines.append(f"- Huffman streams: {t['stream_bits']:,} bits, "
                 f"{100 * (t['stream_bits'] / max(t['entropy_bits'], 1) - 1):.2f} % above their "
                 f"entropy ({t['entropy_bits']:,.0f} bits)")
    if report.get("accuracy_before") is not None or report.get("accuracy_after") is not None:
        def figure(key):
            se = report.get(f"{key}_se")
            return _percent(report.get(key)) + ("" if se is None else f" ± {100 * se:.2f}")
        verification = report.get("accuracy_metric") == "verification"
        counted = "pairs of test images" if verification else "test images"
        on = f" (on {report['accuracy_images']:,} {counted}; ± one standard error)" \
            if report.get("accuracy_images") else ""
        lines += [f"- {'verification ' if verification else ''}accuracy before: "
                  f"{figure('accuracy_before')}, after: {figure('accuracy_after')}{on}"]
    lines += [f"- inference memory before: {report['memory_before_bytes']:,} bytes, after: "
              f"{report['memory_after_bytes']:,} bytes",
              f"- memory method: {report['memory_method']}"]
    if report.get("stage_seconds"):
        spent = ", ".join(f"{name} {seconds:.0f}" for name, seconds in report["stage_seconds"].items()
                          if seconds is not None)
        compiled = (f"; Numba compiling in the run: {report['compile_seconds']:.0f} s"
                    if report.get("compile_seconds") else "")
        lines.append(f"- seconds per stage (in the run that finished it): {spent}{compiled}")
    if report.get("verification"):
        lines += verification_lines(report["verification"])
    lines += ["", "## Score", ""]
    sc = report.get("score")
    if sc is None:
        lines.append("No score: it needs the accuracy after compression (and before, for the "
                     "relative preset).")
    else:
        lines += [f"- preset: {sc['preset']}",
                  f"- score: {sc['score']:.4f} = ({sc['memory_term']:.4f} memory + "
                  f"{sc['size_term']:.4f} size) x A {sc['A']} x B {sc['B']}"]
    if report.get("search"):
        lines += search_lines(report["search"])
    return "\n".join(lines) + "\n"


def verification_lines(v):
    """The markdown section of verification figures before and after compression on test pairs
    (npdc.evaluate.verification_before_after), with top-1 beside them when `v` has it."""
    rows = [("verification accuracy", "verification_accuracy", _percent),
            ("standard deviation over folds", "verification_std", _percent),
            ("ROC AUC", "auc", "{:.4f}".format), ("TAR at FAR 1e-3", "tar_at_far_1e-3", _percent)]
    lines = ["", "## Verification on the test pairs", "",
             f"{v['pairs']:,} pairs of test images in {v['folds']} folds (LFW's protocol), embedding "
             f"{v['embedding']} (of the compressed file: from the {v['embedding_source']}).", "",
             "| figure | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for name, key, fmt in rows:
        b, a = v["before"][key], v["after"][key]
        change = f"{a - b:+.4f}" if key == "auc" else f"{100 * (a - b):+.2f} points"
        lines.append(f"| {name} | {fmt(b)} | {fmt(a)} | {change} |")
    if v.get("top1_before") is not None:
        lines.append(f"| top-1 accuracy (test images) | {_percent(v['top1_before'])} | "
                     f"{_percent(v['top1_after'])} | {100 * (v['top1_after'] - v['top1_before']):+.2f} points |")
    return lines


STOPPED = {"accuracy": "two steps lost more than a step may, even retrained further (after the first, "
                       "steps went half as far)",
           "steps": "it took the most steps allowed (search.max_steps)",
           "time": "the time budget ran out", "curves": "the next step was beyond the swept levels"}


def search_lines(search):
    """The markdown section of an accuracy-budgeted search (npdc.pipeline.auto): the budget,
    the per-layer choices, every candidate measured and why the search stopped."""
    n, before, after = search["val_images"], search["val_accuracy_before"], search["val_accuracy_after"]
    cfg = search.get("settings", {})
    climb, bits = search["prune"]["climb"], search["bits"]
    if search.get("metric") == "verification":
        decided = (f"Decisions by verification accuracy (LFW's 10-fold protocol, embedding "
                   f"{search.get('embedding')}) on {search['val_count']:,} pairs of "
                   f"{n:,} validation images held out of the training split; the budget counts pairs")
        what = "Validation verification accuracy"
    else:
        decided, what = f"Decisions by top-1 accuracy on {n:,} validation images held out of the training split", \
            "Validation accuracy"
    lines = ["", "## Search", "",
             f"{decided}; the test split only reports. {what} {_percent(before)} -> {_percent(after)} "
             f"({100 * (after - before):+.2f} points; budget -{cfg.get('max_drop', '?')} points, of "
             f"which pruning may spend {_share(cfg.get('prune_share'))} and "
             f"{_share(cfg.get('margin'))} is held back).", "",
             "| layer | sparsity | equivalent s | bits |", "| --- | ---: | ---: | ---: |"]
    for row in search["layers"]:
        lines.append(f"| {row['layer']} | {_percent(row['sparsity'])} | {row['s']:.2f} | "
                     f"{row['bits'] if row['bits'] is not None else 'float'} |")
    lines += ["", "### Pruning steps", "", "| step | target | sparsity | retraining images | validation "
              "(each round) | drop (points) | seconds | kept |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for i, t in enumerate(climb.get("tried", []), 1):
        rounds = ", ".join(_percent(a) for a in t.get("checks", [t["val_accuracy"]]))
        lines.append(f"| {i} | {_percent(t['target'])} | {_percent(t['sparsity'])} | {t.get('images', 0):,} | "
                     f"{rounds} | {t['drop_points']:+.2f} | {t['seconds']:.0f} | {'yes' if t['passed'] else 'no'} |")
    lines += ["", f"Pruning stopped because {STOPPED.get(climb.get('stopped'), climb.get('stopped'))}.",
              "", "### Bit-width candidates", "",
              "| candidate | mean bits | validation | drop (points) | seconds | passed |",
              "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for t in sorted(bits.get("tried", []), key=lambda t: t["candidate"]):
        mark = " (chosen)" if t["candidate"] == bits.get("chosen") else ""
        lines.append(f"| {t['candidate'] + 1}{mark} | {t['mean_bits']:.2f} | {_percent(t['val_accuracy'])} | "
                     f"{t['drop_points']:+.2f} | {t['seconds']:.1f} | {'yes' if t['passed'] else 'no'} |")
    lines += ["", f"{len(bits.get('candidates', []))} candidates from the widest to the narrowest; "
              f"the most aggressive that passed was kept."]
    for figure, what in search.get("figures", {}).items():
        lines += ["", f"![{what}]({figure})"]
    if search.get("figures_missing"):
        lines += ["", search["figures_missing"]]
    return lines
