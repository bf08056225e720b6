"""A pruned, quantized net written as .npdc and read back computes exactly what it did."""

import numpy as np
import pytest

from npdc.codec.errors import FormatError
from npdc.codec.model import load_compressed, save_compressed
from npdc.compress.prune import apply_masks, percentage_masks
from npdc.compress.quantize import quantize_net
from npdc.engine.resnet import build_net

SPEC = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4, "num_classes": 3}


@pytest.fixture
def quantized_net():
    net = build_net(SPEC, seed=3)
    masks = percentage_masks(net, 70, {"conv1": (0.0, False)})
    apply_masks(net, masks)
    codes = quantize_net(net, {"fc5": 4}, "kmeans", masks, default_bits=5)
    return net, codes, masks


def test_round_trip_gives_identical_outputs(tmp_path, quantized_net):
    net, codes, _ = quantized_net
    size = save_compressed(tmp_path / "m.npdc", net, codes)
    assert size == (tmp_path / "m.npdc").stat().st_size
    loaded, read_codes = load_compressed(tmp_path / "m.npdc")
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), net.forward(x))
    for path, q in codes.items():
        np.testing.assert_array_equal(read_codes[path].indices, q.indices)
        np.testing.assert_array_equal(read_codes[path].codebook, q.codebook)
        assert read_codes[path].sparse == q.sparse  # pruned or not, however the file coded it


def test_quantize_net_keeps_pruned_weights_zero_and_uses_the_codebook(quantized_net):
    net, codes, masks = quantized_net
    for path, q in codes.items():
        W = net.params()[path]
        assert np.all(W[~masks[path]] == 0)
        assert np.all(np.isin(W[masks[path]], q.codebook))
        assert q.sparse == (not np.all(masks[path]))
        np.testing.assert_array_equal(q.mask(W.shape), masks[path])
        np.testing.assert_array_equal(q.codebook[q.assign], W[masks[path]])
    assert len(codes["fc5.W"].codebook) == 15 and len(codes["res2a_2a.W"].codebook) == 31
    assert not codes["conv1.W"].sparse and len(codes["conv1.W"].codebook) == 32


def test_float16_parameters_are_smaller(tmp_path, quantized_net):
    net, codes, _ = quantized_net
    big = save_compressed(tmp_path / "a.npdc", net, codes)
    small = save_compressed(tmp_path / "b.npdc", net, codes, raw_dtype="float16")
    assert small < big


def test_a_flipped_byte_is_refused_with_the_section_named(tmp_path, quantized_net):
    net, codes, _ = quantized_net
    path = tmp_path / "m.npdc"
    save_compressed(path, net, codes)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="section"):
        load_compressed(path)


def test_same_input_same_bytes(tmp_path):
    files = []
    for name in ("a", "b"):
        net = build_net(SPEC, seed=7)
        masks = percentage_masks(net, 60)
        apply_masks(net, masks)
        save_compressed(tmp_path / f"{name}.npdc", net, quantize_net(net, {}, "kmeans", masks, 4))
        files.append((tmp_path / f"{name}.npdc").read_bytes())
    assert files[0] == files[1]


def test_decompress_command_restores_the_quantized_model(tmp_path, quantized_net, capsys):
    from npdc.cli import main
    from npdc.io.modelfile import load_model
    from tests.conftest import assert_one_line_error, run_cli

    net, codes, _ = quantized_net
    save_compressed(tmp_path / "m.npdc", net, codes)
    assert main(["decompress", str(tmp_path / "m.npdc"), "--out", str(tmp_path / "m.h5")]) == 0
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(load_model(tmp_path / "m.h5").forward(x), net.forward(x))
    (tmp_path / "bad.npdc").write_bytes(b"NPDC\x01\x00garbage")
    capsys.readouterr()
    code, _, err = run_cli(["decompress", str(tmp_path / "bad.npdc"), "--out", str(tmp_path / "x.h5")], capsys)
    assert "bad.npdc" in assert_one_line_error(code, err)
    assert not (tmp_path / "x.h5").exists()


def _randomise_batch_norms(net, seed=0):
    rng = np.random.default_rng(seed)
    for name, layer in net.layers.items():
        if "running_var" in layer.buffers:
            c = layer.params["gamma"].shape
            layer.params["gamma"][:] = rng.uniform(0.5, 2.0, c)
            layer.params["beta"][:] = rng.normal(0, 0.5, c)
            layer.buffers["running_mean"][:] = rng.normal(0, 1.0, c)
            layer.buffers["running_var"][:] = rng.uniform(0.01, 3.0, c)


def test_batch_norms_are_stored_folded_and_compute_the_same(tmp_path, quantized_net):
    from npdc.codec.header import decode_header
    from npdc.codec.payload import decode_raw
    from npdc.codec.model import model_sections

    net, codes, _ = quantized_net
    _randomise_batch_norms(net)
    sections = model_sections(net, codes)
    header = decode_header(sections[0][1])
    bn_names = [n for n, layer in net.layers.items() if "running_var" in layer.buffers]
    assert header["folded_bn"] == bn_names and len(bn_names) > 5
    raw = {}
    for tag, payload in sections[1:]:
        if tag == "PARM":
            raw.update(decode_raw(payload))
    assert not any(k.endswith((".running_mean", ".running_var")) for k in raw)
    save_compressed(tmp_path / "m.npdc", net, codes)
    loaded, _ = load_compressed(tmp_path / "m.npdc")
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.forward(x), net.forward(x), rtol=1e-5, atol=1e-5)


def test_a_folded_name_that_is_no_batch_norm_is_refused(tmp_path, quantized_net):
    from npdc.codec.container import write_container
    from npdc.codec.header import decode_header, encode_header
    from npdc.codec.model import model_sections
    from npdc.errors import UserError

    net, codes, _ = quantized_net
    sections = model_sections(net, codes)
    header = decode_header(sections[0][1])
    header["folded_bn"] = header["folded_bn"] + ["fc6"]
    write_container(tmp_path / "m.npdc", [("HEAD", encode_header(header))] + sections[1:])
    with pytest.raises(UserError, match="fc6"):
        load_compressed(tmp_path / "m.npdc")


def test_a_version_1_file_is_upgraded_and_computes_what_it_did():
    """tests/data/npdc/version1.npdc was written by format version 1 (5-bit code-length tables);
    its logits were stored beside it when it was written, with Winograd F(2,3) computing its 3x3
    stride-1 convolutions and im2col the others (the defaults then), which this test restores.
    They agree to float32 rounding, not bit for bit: im2col's sgemm is OpenBLAS's, whose kernel
    (and so its summation order) depends on the CPU it runs on."""
    from pathlib import Path

    from npdc.codec.container import read_container
    from npdc.engine.conv_plan import conv_layers
    from npdc.kernels.conv import force_primitive

    data = Path(__file__).resolve().parents[1] / "data" / "npdc"
    assert (data / "version1.npdc").read_bytes()[4:6] == b"\x01\x00"
    assert any(tag == "LAYR" for tag, _ in read_container(data / "version1.npdc"))
    net, _ = load_compressed(data / "version1.npdc")
    for _, layer in conv_layers(net):
        layer.primitive = "im2col"
    force_primitive("winograd2")  # wherever it is legal, over the plan
    try:
        with np.load(data / "version1_expected.npz") as expected:
            np.testing.assert_allclose(net.predict(expected["x"]), expected["logits"], rtol=1e-5, atol=1e-6)
    finally:
        force_primitive(None)


def test_a_tuned_models_conv_plan_travels_in_the_file(tmp_path, quantized_net):
    from npdc.codec.container import read_container
    from npdc.codec.header import decode_header
    from npdc.engine.conv_plan import apply_plan, net_plan

    net, codes, _ = quantized_net
    save_compressed(tmp_path / "plain.npdc", net, codes)
    assert "conv_plan" not in decode_header(read_container(tmp_path / "plain.npdc")[0][1])
    assert net_plan(load_compressed(tmp_path / "plain.npdc")[0]) == {}
    plan = {"conv1": "im2col", "res2a_2a": "kn2row"}
    apply_plan(net, plan)
    save_compressed(tmp_path / "tuned.npdc", net, codes)
    assert net_plan(load_compressed(tmp_path / "tuned.npdc")[0]) == plan


@pytest.mark.parametrize("plan, message", [({"conv1": "winograd9"}, "unknown primitive 'winograd9'"),
                                           ({"fc6": "im2col"}, "not a conv layer"),
                                           (["conv1"], "conv_plan is not an object")])
def test_a_bad_conv_plan_in_the_header_is_refused(tmp_path, quantized_net, plan, message):
    from npdc.codec.container import write_container
    from npdc.codec.header import decode_header, encode_header
    from npdc.codec.model import model_sections
    from npdc.errors import UserError

    net, codes, _ = quantized_net
    sections = model_sections(net, codes)
    header = decode_header(sections[0][1])
    header["conv_plan"] = plan
    write_container(tmp_path / "m.npdc", [("HEAD", encode_header(header))] + sections[1:])
    with pytest.raises(UserError, match=f"m.npdc: .*{message}"):
        load_compressed(tmp_path / "m.npdc")


def _bad_layouts(sections, header):
    """(name, sections, message) of model files whose section layout is wrong."""
    from npdc.codec.header import encode_header

    def with_header(**change):
        return [("HEAD", encode_header({**header, **change}))] + sections[1:]

    n = len(header["layers"])
    return [
        ("layer first", sections[1:], "section 0 'LAYR': the first section must be HEAD"),
        ("one LAYR missing", sections[:n] + sections[n + 1:], f"expected {n} LAYR sections"),
        ("no PARM", sections[:n + 1], "then PARM sections"),
        ("no spec", [("HEAD", encode_header({k: v for k, v in header.items() if k != "spec"}))]
         + sections[1:], "section 0 'HEAD': header lacks or garbles 'spec'"),
        ("layers not a list", with_header(layers={"a": 1}), "'layers' is not a list"),
        ("negative dimension", with_header(layers=[{**header["layers"][0], "shape": [-1, 2]}]
                                           + header["layers"][1:]), "negative dimension"),
        ("huge layer", with_header(layers=[{**header["layers"][0], "shape": [1 << 20, 1 << 20]}]
                                   + header["layers"][1:]), "section 1 'LAYR': layer .* claims"),
    ]


def test_one_reader_checks_the_layout_for_loading_the_report_and_the_runtime(tmp_path, quantized_net):
    """load_compressed, the report and the runtime's streamed payloads read a model file through
    read_model_file, so a bad layout gets the same one-line error, naming the file, from each."""
    from npdc.codec.container import write_container
    from npdc.codec.header import decode_header
    from npdc.codec.model import model_sections, read_model_file
    from npdc.report import layer_table, totals, xz_bytes
    from npdc.runtime.infer import layer_payloads

    net, codes, _ = quantized_net
    sections = model_sections(net, codes)
    header = decode_header(sections[0][1])
    model = read_model_file(sections)
    assert [layer.path for layer in model.layers] == list(codes) == list(model.payloads)
    assert [layer.index for layer in model.layers] == list(range(1, len(codes) + 1))
    assert model.header == header and model.path is None and model.name == "<sections>"
    assert read_model_file(model) is model
    for what, bad, message in _bad_layouts(sections, header):
        path = tmp_path / "bad.npdc"
        write_container(path, bad)
        errors = []
        for read in (load_compressed, layer_table, totals, xz_bytes, layer_payloads, read_model_file):
            with pytest.raises(FormatError, match=message) as caught:
                read(path)
            errors.append(str(caught.value))
        assert len(set(errors)) == 1, what
        assert errors[0].startswith("bad.npdc: ") and "\n" not in errors[0], what


def test_folded_batch_norms_store_the_inference_affine_map(quantized_net):
    from npdc.codec.header import decode_header
    from npdc.codec.model import model_sections
    from npdc.codec.payload import decode_raw
    from npdc.engine.layers.batchnorm import inference_affine

    net, codes, _ = quantized_net
    _randomise_batch_norms(net, seed=5)
    sections = model_sections(net, codes)
    raw = {}
    for tag, payload in sections[1:]:
        if tag == "PARM":
            raw.update(decode_raw(payload))
    for name in decode_header(sections[0][1])["folded_bn"]:
        bn = net.layers[name]
        scale, shift = inference_affine(bn.params["gamma"], bn.params["beta"], bn.buffers["running_mean"],
                                        bn.buffers["running_var"], bn.eps)
        # float64 all through, one rounding to float32 at the end
        var = bn.buffers["running_var"].astype(np.float64)
        by_hand = bn.params["gamma"].astype(np.float64) / np.sqrt(var + bn.eps)
        np.testing.assert_array_equal(scale, by_hand.astype(np.float32))
        np.testing.assert_array_equal(raw[f"{name}.gamma"], scale)
        np.testing.assert_array_equal(raw[f"{name}.beta"], shift)
