"""The compression report: per-layer table, totals, score presets, memory, markdown.

Expected values come from the masks and codes the test made, from the sections read back with
read_container, or are worked out by hand in the comments (Huffman trees included)."""

import json
import math

import numpy as np
import pytest

from npdc.codec.container import read_container, write_container
from npdc.codec.errors import FormatError
from npdc.codec.header import decode_header, encode_header
from npdc.codec.model import model_sections, save_compressed
from npdc.compress.prune import apply_masks, percentage_masks
from npdc.compress.quantize import QuantizedLayer, quantize_net
from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.report import build_report, format_markdown, layer_table, totals
from npdc.score import score

SPEC = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4, "num_classes": 3}


@pytest.fixture
def compressed(tmp_path):
    """conv1 kept dense at 2 bits (k = 4), every other layer 60 % pruned at 3 bits (k = 7)."""
    net = build_net(SPEC, seed=4)
    masks = percentage_masks(net, 60, {"conv1": (0.0, False)})
    apply_masks(net, masks)
    codes = quantize_net(net, {"conv1": 2}, "kmeans", masks, default_bits=3)
    path = tmp_path / "m.npdc"
    save_compressed(path, net, codes)
    return path, net, masks, codes


def rows_by_layer(path):
    return {r["layer"]: r for r in layer_table(path)}


# -- per-layer table --------------------------------------------------------------------------
def test_every_quantized_layer_is_listed_in_file_order(compressed):
    path, _, _, codes = compressed
    assert [r["layer"] for r in layer_table(path)] == list(codes)


def test_nonzero_and_sparsity_come_from_the_masks(compressed):
    path, _, masks, _ = compressed
    rows = rows_by_layer(path)
    for p, keep in masks.items():
        assert rows[p]["weights"] == keep.size
        assert rows[p]["nonzero"] == int(keep.sum())
        assert rows[p]["sparsity"] == pytest.approx(1 - keep.sum() / keep.size)
    assert rows["conv1.W"]["sparsity"] == 0 and rows["conv1.W"]["kind"] == "dense"


def test_bytes_are_the_layer_payloads(compressed):
    path = compressed[0]
    payloads = [len(p) for tag, p in read_container(path) if tag == "LAYR"]
    assert [r["bytes"] for r in layer_table(path)] == payloads


@pytest.mark.parametrize("percent", [60, 95])
def test_fixed_widths_follow_the_codebook_and_the_gap_width(tmp_path, percent):
    from npdc.codec.payload import choose_gap_bits

    net = build_net({**SPEC, "width": 4, "embedding": 32}, seed=4)
    masks = percentage_masks(net, percent, {"conv1": (0.0, False)})
    apply_masks(net, masks)
    codes = quantize_net(net, {"conv1": 2}, "kmeans", masks, default_bits=3)
    path = tmp_path / "m.npdc"
    save_compressed(path, net, codes)
    rows = rows_by_layer(path)
    assert rows["conv1.W"]["kind"] == "dense" and len(codes["conv1.W"].codebook) == 4
    # lightly pruned layers code smaller dense, heavily pruned ones by relative indices
    assert {r["kind"] for r in rows.values()} == ({"dense"} if percent == 60 else {"dense", "sparse"})
    for p, r in rows.items():
        indices, codebook = codes[p].indices, codes[p].codebook
        if r["kind"] == "dense":  # ceil(log2 k) with k = 2^2 for conv1; k = 7 plus exact zeros else
            symbols = len(codebook) + int(r["nonzero"] < r["weights"])
            assert r["weight_bits"] == math.ceil(math.log2(symbols))
            assert (r["index_bits"], r["huffman_index_bits"]) == (0, 0)
        else:  # sparse: k = 2^3 - 1 values plus the zero index
            assert r["weight_bits"] == math.ceil(math.log2(len(codebook) + 1)) == 3
            assert r["index_bits"] == choose_gap_bits(indices, len(codebook))


def test_huffman_never_costs_more_than_the_fixed_width(compressed):
    path = compressed[0]
    for r in layer_table(path):
        assert 0 < r["huffman_weight_bits"] <= r["weight_bits"]
        assert r["huffman_index_bits"] <= r["index_bits"]


def test_a_dense_layers_huffman_bits_lie_within_one_bit_of_its_entropy(compressed):
    path, _, _, codes = compressed
    counts = np.bincount(codes["conv1.W"].indices)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    bits = rows_by_layer(path)["conv1.W"]["huffman_weight_bits"]
    assert entropy - 1e-12 <= bits < entropy + 1


def test_rates_are_the_saved_fraction_of_float32(compressed):
    path = compressed[0]
    for r in layer_table(path):
        assert r["rate_pqh"] == pytest.approx(1 - r["bytes"] / (4 * r["weights"]))
        assert r["rate_pq"] < 1 and r["rate_pqh"] < 1
        if r["weights"] >= 18:  # the codebook (at most 7 floats) is small beside the layer
            assert 0 <= r["rate_pq"] < 1 and 0 <= r["rate_pqh"] < 1
    tiny = rows_by_layer(path)["res2a_1.W"]  # 4 weights = 16 bytes, less than its codebook
    assert tiny["rate_pqh"] < 0


def test_a_hand_worked_sparse_and_dense_layer(tmp_path):
    net = build_net(SPEC, seed=0)
    # sparse res3a_2b.W, 144 positions: non-zeros at 9, 13, ..., 141 (34 of them). The cheapest
    # gap width is 4 (the first gap, 9, fits without a filler; wider gives the same bytes): 34
    # entries, gap symbols {9: 1, 3: 33} -> 1 bit each.
    sparse = np.zeros(144, np.int64)
    sparse[9::4] = [1] * 16 + [2] * 9 + [3] * 9
    # value symbols {1: 16, 2: 9, 3: 9}: merge 9+9, then 16+18: lengths 1, 2, 2 -> 52 bits.
    # payload: gap byte, dtype, k, 3 x 4 codebook, entry count = 16 bytes; gap stream: 2 codes,
    # table 00100 0000 (symbol 3) 00110 0000 (symbol 9) = 18 bits = 3 bytes, bit count, 34 bits
    # = 5 bytes -> 10; value stream: 3 codes, table 010 0000, 1 0001, 1 0001 = 17 bits = 3 bytes,
    # bit count, 52 bits = 7 bytes -> 12. Total 38.
    # dense res3a_2a.W, 72 positions, k = 4: counts {1: 36, 2: 18, 3: 9, 4: 9}: lengths 1, 2, 3,
    # 3 -> 36 + 36 + 27 + 27 = 126 bits. Payload: 1 + 1 + 1 + 16 + (4 codes, table 010 0000,
    # 1 0001, 1 0010, 1 0010 = 22 bits = 3 bytes, bit count, 126 bits = 16 bytes -> 21) = 40.
    dense = np.array([1] * 36 + [2] * 18 + [3] * 9 + [4] * 9)
    # sparse res3b_2a.W with k = 4 values: 5 symbols with the zero index, so 3 fixed bits
    four = np.zeros(144, np.int64)
    four[::2] = np.arange(72) % 4 + 1
    quantized = {"res3a_2b.W": QuantizedLayer(sparse, np.array([-1.0, 0.5, 2.0], np.float32), True),
                 "res3a_2a.W": QuantizedLayer(dense, np.array([-1.0, -0.5, 0.5, 1.0], np.float32)),
                 "res3b_2a.W": QuantizedLayer(four, np.array([-1.0, -0.5, 0.5, 1.0], np.float32), True),
                 # dense with exact zeros (index 0 at every 5th of 144 positions: 29 of them):
                 # 4 values + zero = 5 symbols, so 3 fixed bits
                 "res3b_2b.W": QuantizedLayer(np.arange(144) % 5, np.arange(4, dtype=np.float32))}
    sections = model_sections(net, quantized)
    s, d, f, z = layer_table(sections)
    assert (f["weight_bits"], f["index_bits"], f["entries"], f["nonzero"]) == (3, 1, 72, 72)
    assert (z["weight_bits"], z["index_bits"], z["entries"], z["nonzero"]) == (3, 0, 144, 115)
    assert (s["layer"], s["kind"], d["layer"], d["kind"]) == ("res3a_2b.W", "sparse",
                                                             "res3a_2a.W", "dense")
    assert (s["nonzero"], s["entries"], s["weight_bits"], s["index_bits"]) == (34, 34, 2, 4)
    assert s["huffman_weight_bits"] == pytest.approx(52 / 34)
    assert s["huffman_index_bits"] == pytest.approx(1.0)
    assert s["bytes"] == 38
    assert s["rate_pq"] == pytest.approx(1 - (34 * (2 + 4) + 3 * 32) / (144 * 32))
    assert s["rate_pqh"] == pytest.approx(1 - 38 / (144 * 4))
    assert (d["nonzero"], d["entries"], d["weight_bits"], d["index_bits"]) == (72, 72, 2, 0)
    assert d["huffman_weight_bits"] == pytest.approx(126 / 72)
    assert d["bytes"] == 40
    assert d["rate_pq"] == pytest.approx(1 - (72 * 2 + 4 * 32) / (72 * 32))
    assert d["rate_pqh"] == pytest.approx(1 - 40 / (72 * 4))
    t = totals(sections)
    # the file: 6 header bytes, then 12 framing bytes around every section and the end marker
    assert t["size_after_bytes"] == 6 + sum(12 + len(p) for _, p in sections) + 12
    assert t["layer_bytes"] == 38 + 40 + f["bytes"] + z["bytes"]
    assert t["rate_pqh"] == pytest.approx(1 - t["layer_bytes"] / (4 * (144 + 72 + 144 + 144)))


def test_a_header_claiming_a_huge_layer_is_refused_before_decoding():
    net = build_net(SPEC, seed=0)
    layer = np.ones(144, np.int64)
    sections = model_sections(net, {"res3a_2b.W": QuantizedLayer(layer, np.ones(1, np.float32))})
    header = decode_header(sections[0][1])
    header["layers"][0]["shape"] = [1 << 20, 1 << 20]
    sections[0] = ("HEAD", encode_header(header))
    with pytest.raises(FormatError, match="claims"):
        layer_table(sections)


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    path = tmp_path / "x.npdc"
    write_container(path, [("LAYR", b"\x00")])
    with pytest.raises(FormatError, match="HEAD"):
        layer_table(path)


# -- totals ---------------------------------------------------------------------------------------
def test_totals_count_parameters_and_buffers_against_the_file(compressed):
    path, net, masks, _ = compressed
    t = totals(path)
    params = sum(v.size for v in net.params().values())
    buffers = sum(v.size for v in net.buffers().values())
    assert t["size_before_bytes"] == 4 * (params + buffers)
    assert t["size_after_bytes"] == path.stat().st_size
    assert t["ratio"] == pytest.approx(4 * (params + buffers) / path.stat().st_size)
    assert t["quantized_weights"] == sum(m.size for m in masks.values())
    assert t["nonzero"] == sum(int(m.sum()) for m in masks.values())
    layr = sum(len(p) for tag, p in read_container(path) if tag == "LAYR")
    assert t["layer_bytes"] == layr
    assert t["rate_pqh"] == pytest.approx(1 - layr / (4 * t["quantized_weights"]))


# -- score ----------------------------------------------------------------------------------------
def test_zte_score_on_hand_worked_numbers():
    # memory (100 - 75)/100 * 20 = 5; size (120e6 - 40e6)/40e6 * 80 = 160
    r = score(120e6, 40e6, 100, 75, 0.97, "zte")
    assert (r["memory_term"], r["size_term"], r["A"], r["B"]) == pytest.approx((5, 160, 1, 1))
    assert r["score"] == pytest.approx(165)
    assert score(120e6, 40e6, 100, 75, 0.965, "zte")["score"] == pytest.approx(148.5)
    # size (120 - 50)/50 * 80 = 112, B = 0.9: (5 + 112) * 0.9
    assert score(120e6, 50e6, 100, 75, 0.99, "zte")["score"] == pytest.approx(105.3)


@pytest.mark.parametrize("z, A", [(1.0, 1), (0.97, 1), (0.9699, 0.9), (0.965, 0.9),
                                  (0.9649, 0), (0.5, 0)])
def test_zte_accuracy_steps(z, A):
    assert score(80e6, 40e6, 10, 5, z, "zte")["A"] == A


@pytest.mark.parametrize("s, B", [(1, 1), (40_000_000, 1), (40_000_001, 0.9), (50_000_000, 0.9),
                                  (50_000_001, 0.8), (63_000_000, 0.8), (63_000_001, 0),
                                  (90_000_000, 0)])
def test_zte_size_steps_in_decimal_megabytes(s, B):
    r = score(100e6, s, 10, 5, 0.98, "zte")
    assert r["B"] == B
    assert r["score"] == pytest.approx((10 + (100e6 - s) / s * 80) * B)


def test_relative_score_on_hand_worked_numbers():
    # memory (200 - 100)/200 * 20 = 10; size (1000 - 500)/500 * 80 = 80
    r = score(1000, 500, 200, 100, 0.947, z0=0.95)
    assert r["preset"] == "relative"
    assert (r["memory_term"], r["size_term"], r["A"], r["B"]) == pytest.approx((10, 80, 1, 1))
    assert r["score"] == pytest.approx(90)
    assert score(1000, 500, 200, 100, 0.942, z0=0.95)["score"] == pytest.approx(81)
    # size (1000 - 800)/800 * 80 = 20, B = 0.8 (800 <= 846): (10 + 20) * 0.8
    assert score(1000, 800, 200, 100, 0.96, z0=0.95)["score"] == pytest.approx(24)


@pytest.mark.parametrize("z, A", [(0.99, 1), (0.947, 1), (0.9469, 0.9), (0.942, 0.9),
                                  (0.9419, 0), (0.9, 0)])
def test_relative_accuracy_steps(z, A):
    assert score(1000, 500, 10, 5, z, z0=0.95)["A"] == A


@pytest.mark.parametrize("s, B", [(100, 1), (537, 1), (537.001, 0.9), (671, 0.9), (671.001, 0.8),
                                  (846, 0.8), (846.001, 0), (1000, 0)])
def test_relative_size_steps(s, B):
    assert score(1000, s, 10, 5, 0.95, z0=0.95)["B"] == B


def test_a_model_that_grows_or_uses_more_memory_scores_negative_terms():
    r = score(1000, 500, 100, 150, 0.95, z0=0.95)
    assert r["memory_term"] == pytest.approx(-10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="speed"), "preset"),
    (dict(preset="relative"), "z0"),
    (dict(preset="relative", z0=97.0), "fraction"),
    (dict(preset="zte", z=96.5), "fraction"),
    (dict(preset="zte", s=0), "size after"),
    (dict(preset="zte", M=0), "memory before"),
    (dict(preset="zte", z=float("nan")), "finite"),
])
def test_score_refuses_bad_input(kwargs, match):
    args = dict(S=1000, s=500, M=10, m=5, z=0.95)
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        score(**args)


# -- the whole report ------------------------------------------------------------------------------
def test_report_with_given_memory_scores_the_file(compressed):
    path, net, _, codes = compressed
    report = build_report(path, baseline=net, accuracy_before=0.95, accuracy_after=0.947,
                          memory=(1000, 800, "given by the test"))
    t = report["totals"]
    assert report["memory_method"] == "given by the test"
    S, s = t["size_before_bytes"], t["size_after_bytes"]
    sc = report["score"]
    assert sc["memory_term"] == pytest.approx(4)  # (1000 - 800)/1000 * 20
    assert sc["size_term"] == pytest.approx((S - s) / s * 80)
    assert sc["A"] == 1
    json.dumps(report)
    text = format_markdown(report)
    for p in codes:
        assert f"| {p} |" in text
    assert f"{sc['score']:.4f}" in text and "given by the test" in text
    assert "94.70 %" in text and "95.00 %" in text


def test_report_measures_memory_and_omits_the_score_without_accuracy(compressed):
    path, net, _, _ = compressed
    report = build_report(path)
    static = 4 * sum(v.size for v in {**net.params(), **net.buffers()}.values())
    assert report["score"] is None
    assert "naive dense float32" in report["memory_method"] and "runtime" in report["memory_method"]
    assert report["memory_before_bytes"] > static
    assert 0 < report["memory_after_bytes"] < report["memory_before_bytes"]
    assert "No score" in format_markdown(report)


def test_report_refuses_an_unknown_preset_and_percent_accuracies(compressed):
    with pytest.raises(UserError, match="preset"):
        build_report(compressed[0], preset="speed", memory=(1, 1, "x"))
    with pytest.raises(UserError, match="fraction"):
        build_report(compressed[0], accuracy_before=94.7, memory=(1, 1, "x"))


# -- yardsticks: entropy and xz ----------------------------------------------------------------
def test_entropy_bits_of_known_streams():
    from npdc.report import entropy_bits

    assert entropy_bits([0, 0, 1, 1]) == pytest.approx(4.0)
    assert entropy_bits([3, 3, 3]) == 0.0 and entropy_bits([]) == 0.0
    assert entropy_bits([0, 1, 2, 3, 0, 1, 2, 3]) == pytest.approx(16.0)
    # p = (1/2, 1/4, 1/4): 1.5 bits a symbol
    assert entropy_bits([7, 7, 1, 2]) == pytest.approx(6.0)


def test_huffman_streams_lie_between_entropy_and_a_bit_a_symbol_more(tmp_path):
    net = build_net({**SPEC, "width": 4, "embedding": 32}, seed=5)
    masks = percentage_masks(net, 90, {"conv1": (0.0, False)})
    apply_masks(net, masks)
    path = tmp_path / "m.npdc"
    save_compressed(path, net, quantize_net(net, {}, "kmeans", masks, default_bits=4))
    rows = layer_table(path)
    for r in rows:
        streams = 1 if r["kind"] == "dense" else 2
        assert r["entropy_bits"] - 1e-6 <= r["stream_bits"] <= r["entropy_bits"] + streams * r["entries"]
    t = totals(path, rows)
    assert t["stream_bits"] == sum(r["stream_bits"] for r in rows)
    assert t["entropy_bits"] == pytest.approx(sum(r["entropy_bits"] for r in rows))


def test_xz_yardstick_compresses_what_the_file_holds(tmp_path):
    import lzma

    from npdc.report import xz_bytes

    net = build_net(SPEC, seed=6)
    masks = percentage_masks(net, 80, {"conv1": (0.0, False)})
    apply_masks(net, masks)
    codes = quantize_net(net, {}, "kmeans", masks, default_bits=4)
    path = tmp_path / "m.npdc"
    save_compressed(path, net, codes, codebook_dtype="float16")
    sections = read_container(path)
    layers = [(q.indices.astype(np.uint8).tobytes(), q.codebook) for q in codes.values()]
    parts = [idx + cb.astype(np.float16).tobytes() for idx, cb in layers]
    parts += [payload for tag, payload in sections if tag == "PARM"]
    assert xz_bytes(path) == len(lzma.compress(b"".join(parts), preset=9 | lzma.PRESET_EXTREME))


def test_on_the_shipped_model_the_file_beats_xz_and_huffman_nears_the_entropy(tmp_path):
    """The shipped baseline pruned to 91 % by one global cut and quantized (conv 5, fc 4 bits),
    no retraining: the coding under test is the same as after compress --preset full."""
    from pathlib import Path

    from npdc.compress.prune import global_percentage_masks
    from npdc.engine.layers import Conv2d
    from npdc.io.modelfile import load_model
    from npdc.report import xz_bytes

    net = load_model(Path(__file__).resolve().parents[1] / "data/models/fmnist-resnet18.h5")
    masks = global_percentage_masks(net, 91, exclude=("conv1",))
    apply_masks(net, masks)
    bits = {n: 5 if isinstance(net.layers[n], Conv2d) else 4 for n in (p.split(".")[0] for p in masks)}
    path = tmp_path / "shipped.npdc"
    save_compressed(path, net, quantize_net(net, bits, "kmeans", masks), raw_dtype="float16")
    t = totals(path)
    assert path.stat().st_size < xz_bytes(path)
    assert t["entropy_bits"] <= t["stream_bits"] <= 1.01 * t["entropy_bits"]


def test_the_report_gives_each_accuracy_its_standard_error(compressed):
    """With the number of images, each accuracy carries sqrt(z (1 - z) / n): 0.9 on 10,000
    images is 0.9 +- 0.30 points."""
    path, net, _, _ = compressed
    report = build_report(path, net, 0.9, 0.8, images=10_000)
    assert report["accuracy_images"] == 10_000
    assert report["accuracy_before_se"] == pytest.approx(0.003)
    assert report["accuracy_after_se"] == pytest.approx(0.004)
    page = format_markdown(report)
    assert "90.00 % ± 0.30" in page and "80.00 % ± 0.40" in page and "10,000 test images" in page
    plain = build_report(path, net, 0.9, 0.8)
    assert "accuracy_images" not in plain and "±" not in format_markdown(plain)
