"""`import MODEL.onnx`: PyTorch's ONNX exports of the torchvision twins and of an option-A CIFAR
ResNet (tests/data/torch/torchvision/*.onnx, made by bench/make_torch_fixtures.py) give PyTorch's
logits in npdc, again after export to ONNX Runtime, and go through prune, compress and the
runtime; npdc's own exports of every graph op import back to the same net; ops and settings npdc
cannot express are refused with one line. ONNX Runtime only checks files here."""

from pathlib import Path

import numpy as np
import pytest

from npdc import api
from npdc.errors import UserError
from npdc.io import onnx_export
from npdc.io.modelfile import load_model
from tests.conftest import assert_one_line_error, run_cli
from tests.engine.test_graph import SHORTCUT_SPEC
from tests.io.test_onnx_export import SPECS, _net, _ort_logits

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "torch" / "torchvision"
FIXTURES = ["tv_resnet18_w2", "tv_resnet50_w2", "mobilenet_v2_w010", "squeezenet1_1_w8", "cifar_resnet8_w4"]


def _expected(name):
    with np.load(DATA / "expected.npz") as e:
        return e[f"{name}.x"], e[f"{name}.mean"], e[f"{name}.std"], e[f"{name}.logits"]


def _import(name):
    _, mean, std, _ = _expected(name)
    return api.import_checkpoint(DATA / f"{name}.onnx", mean=mean, std=std)


@pytest.mark.parametrize("name", FIXTURES)
def test_pytorch_exports_give_pytorchs_logits(name):
    x, _, _, logits = _expected(name)
    net = _import(name)
    assert net.spec["arch"] == "graph"
    assert np.abs(net.predict(x) - logits).max() <= 1e-4


@pytest.mark.parametrize("name", FIXTURES)
def test_imported_then_exported_onnx_runs_in_onnx_runtime(tmp_path, name):
    x, _, _, logits = _expected(name)
    onnx_export.export_onnx(_import(name), tmp_path / "again.onnx")
    assert np.abs(_ort_logits(tmp_path / "again.onnx", x) - logits).max() <= 1e-4


def test_folded_batch_norm_imports_as_conv_biases_and_option_a_as_shortcuts():
    net = _import("cifar_resnet8_w4")
    ops = [n["op"] for n in net.spec["nodes"]]
    assert "bn" not in ops and ops.count("shortcut") == 2 and ops.count("add") == 3
    assert all(n["bias"] for n in net.spec["nodes"] if n["op"] == "conv")
    pads = [n for n in net.spec["nodes"] if n["op"] == "shortcut"]
    assert [(n["out"], n["stride"], n["front"]) for n in pads] == [(8, 2, 2), (16, 2, 4)]


def test_the_cli_writes_a_model_file(tmp_path, capsys):
    x, mean, std, logits = _expected("mobilenet_v2_w010")
    out = tmp_path / "m.h5"
    code, text, err = run_cli(["import", str(DATA / "mobilenet_v2_w010.onnx"), "--out", str(out),
                               "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std))], capsys)
    assert code == 0, err
    assert "-> graph" in text and "10 classes" in text
    assert np.abs(load_model(out).predict(x) - logits).max() <= 1e-4


@pytest.mark.parametrize("name", sorted(SPECS) + ["shortcut"])
def test_npdcs_own_export_imports_back_to_the_same_net(tmp_path, name):
    """Every graph op (BN, PReLU, Clip, average pooling, dilation, groups, concat, option A with
    its zero channels placed evenly or not) and the input normalisation the export writes as Sub
    and Div."""
    net = _net(SHORTCUT_SPEC if name == "shortcut" else SPECS[name])
    onnx_export.export_onnx(net, tmp_path / "m.onnx")
    back = api.import_checkpoint(tmp_path / "m.onnx")
    np.testing.assert_allclose(back.mean, net.mean, rtol=1e-6)
    np.testing.assert_allclose(back.std, net.std, rtol=1e-6)
    x = np.random.default_rng(5).integers(0, 256, (3,) + net.in_shape).astype(np.uint8)
    assert np.abs(back.predict(x) - net.predict(x)).max() <= 1e-5
    assert back.num_params() == net.num_params()


# -- hand-written graphs: what other exporters write ----------------------------------------------
def _model(nodes, inits, in_shape=("N", 2, 6, 6), opset=13, name="y"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", "K"])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _save(model, path):
    onnx.save(model, str(path))
    return path


def _w(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _i64(*v):
    return np.array(v, np.int64)


def test_matmul_add_reshape_by_batch_size_reduce_mean_and_clip(tmp_path):
    """x.view(x.size(0), -1) through Shape/Gather/Unsqueeze/Concat, MatMul then Add as a linear
    layer, ReduceMean over H and W, Clip(0) as ReLU, Dropout and Identity, checked against ONNX
    Runtime."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Add", ["c", "cb"], ["cb_out"]),
        helper.make_node("Clip", ["cb_out", "zero"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Shape", ["m"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["m", "target"], ["flat"]),
        helper.make_node("Dropout", ["flat"], ["d"]),
        helper.make_node("Identity", ["d"], ["i"]),
        helper.make_node("MatMul", ["i", "B"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["y"]),
    ]
    inits = {"W": _w(4, 2, 3, 3), "cb": _w(1, 4, 1, 1, seed=1), "zero": np.float32(0), "i0": np.int64(0),
             "ax0": _i64(0), "minus1": _i64(-1), "B": _w(4, 3, seed=2), "bias": _w(3, seed=3)}
    path = _save(_model(nodes, inits), tmp_path / "m.onnx")
    net = api.import_checkpoint(path)
    assert [n["op"] for n in net.spec["nodes"]] == ["conv", "relu", "gap", "dropout", "linear"]
    x = np.random.default_rng(1).integers(0, 256, (2, 2, 6, 6)).astype(np.uint8)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32) / 255})[0]
    assert np.abs(net.predict(x) - ref).max() <= 1e-5


def _pooled(in_shape, target):
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["m", "target"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W"], ["y"], transB=1)]
    return _model(nodes, {"target": _i64(*target), "W": _w(3, 18)}, in_shape=in_shape)


def test_a_symbolic_image_size_is_fixed_by_input_shape_and_a_fixed_batch_by_the_file(tmp_path, capsys):
    """--input-shape gives the sizes a file leaves open; a file exported for batch 1 writes its
    reshapes as (1, features), which npdc reads as (batch, features)."""
    path = _save(_pooled(("N", 2, "H", "W"), (0, -1)), tmp_path / "open.onnx")
    code, _, err = run_cli(["import", str(path), "--input-shape", "2,6,6", "--out", str(tmp_path / "m.h5")], capsys)
    assert code == 0, err
    assert load_model(tmp_path / "m.h5").in_shape == (2, 6, 6)
    path = _save(_pooled((1, 2, 6, 6), (1, 18)), tmp_path / "one.onnx")
    net = api.import_checkpoint(path)
    assert [n["op"] for n in net.spec["nodes"]] == ["maxpool", "flatten", "linear"]
    x = np.random.default_rng(3).integers(0, 256, (4, 2, 6, 6)).astype(np.uint8)
    pooled = (x / 255).reshape(4, 2, 3, 2, 3, 2).max(axis=(3, 5)).reshape(4, 18)
    np.testing.assert_allclose(net.predict(x), pooled @ _w(3, 18).T.astype(np.float64), atol=1e-5)


def test_external_data_beside_the_file_is_read(tmp_path):
    model = _model([helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[3, 3]),
                    helper.make_node("GlobalAveragePool", ["c"], ["p"]),
                    helper.make_node("Flatten", ["p"], ["y"])], {"W": _w(3, 2, 3, 3)})
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.weights",
              size_threshold=0)
    net = api.import_checkpoint(tmp_path / "m.onnx")
    np.testing.assert_array_equal(next(iter(net.params().values())), _w(3, 2, 3, 3))
    (tmp_path / "m.weights").unlink()
    with pytest.raises(UserError, match="external-data file m.weights"):
        api.import_checkpoint(tmp_path / "m.onnx")


def _conv_model(**attrs):
    return _model([helper.make_node("Conv", ["x", "W"], ["c"], **{"kernel_shape": [3, 3], **attrs}),
                   helper.make_node("GlobalAveragePool", ["c"], ["p"]),
                   helper.make_node("Flatten", ["p"], ["y"])], {"W": _w(3, 2, 3, 3)})


REFUSED = {
    "unsupported op": (_model([helper.make_node("Sigmoid", ["x"], ["y"])], {}), "op Sigmoid"),
    "asymmetric pads": (_conv_model(pads=[0, 1, 0, 1]), "equal padding"),
    "non-square kernel": (_model([helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[3, 1]),
                                  helper.make_node("GlobalAveragePool", ["c"], ["p"]),
                                  helper.make_node("Flatten", ["p"], ["y"])], {"W": _w(3, 2, 3, 1)}), "square"),
    "average pool not counting padding": (_model(
        [helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["a"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], {}),
        "count_include_pad"),
    "a slice of channels": (_model(
        [helper.make_node("Slice", ["x", "s", "e", "a"], ["c"]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        {"s": _i64(0), "e": _i64(1), "a": _i64(1)}), "every s-th pixel"),
    "a pad of the image sides": (_model(
        [helper.make_node("Pad", ["x", "pads"], ["c"]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        {"pads": _i64(0, 0, 1, 1, 0, 0, 1, 1)}), "zero channels"),
    "a pad computed from the batch size": (_model(
        [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
         helper.make_node("Mul", ["n", "zeros"], ["pads"]),
         helper.make_node("Pad", ["x", "pads"], ["c"]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        {"i0": np.int64(0), "zeros": np.zeros(8, np.int64)}), "batch size"),
    "a symbolic image size": (_model([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                                      helper.make_node("Flatten", ["p"], ["y"])], {},
                                     in_shape=("N", 2, "H", "W")), "--input-shape"),
    "an old opset": (_conv_model(), "opset 9"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_npdc_cannot_express_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    model, fragment = REFUSED[case]
    if case == "an old opset":
        model.opset_import[0].version = 9
    path = _save(model, tmp_path / "m.onnx")
    code, _, err = run_cli(["import", str(path), "--out", str(tmp_path / "m.h5")], capsys)
    assert fragment in assert_one_line_error(code, err)
    assert not (tmp_path / "m.h5").exists()


def test_a_missing_file_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["import", str(tmp_path / "absent.onnx"), "--out", str(tmp_path / "m.h5")], capsys)
    assert "no ONNX model file" in assert_one_line_error(code, err)


def test_arch_is_refused_for_onnx(tmp_path, capsys):
    code, _, err = run_cli(["import", str(DATA / "tv_resnet18_w2.onnx"), "--arch", "tv-resnet18",
                            "--out", str(tmp_path / "m.h5")], capsys)
    assert "leave out --arch" in assert_one_line_error(code, err)


def test_without_the_onnx_package_it_says_what_to_install(monkeypatch):
    monkeypatch.setattr(onnx_export, "onnx", None)
    with pytest.raises(UserError, match=r'install npdc\[onnx\]: pip install -e "\.\[onnx\]"'):
        api.import_checkpoint(DATA / "tv_resnet18_w2.onnx")

