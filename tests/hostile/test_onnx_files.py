"""Hostile ONNX files given to `import`: truncated or random protobuf, values of the wrong type,
a cycle, declared sizes far beyond the file, external data outside the model's folder, NaN
weights. Each is refused in one line with exit code 2 and nothing written."""

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_cli

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "torch" / "torchvision" / "tv_resnet18_w2.onnx"


def _graph_model(nodes, inits, in_dims=("N", 2, 6, 6), in_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, list(in_dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _classifier(weight, conv_attrs=None, in_dims=("N", 2, 6, 6), in_type=TensorProto.FLOAT, extra=()):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], **(conv_attrs or {"kernel_shape": [3, 3]})),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    return _graph_model(nodes, [weight, *extra], in_dims, in_type)


def _weight(array):
    return numpy_helper.from_array(np.asarray(array), "W")


GOOD_W = np.ones((3, 2, 3, 3), np.float32)


def _bytes(model):
    return model.SerializeToString()


def _truncated(fraction):
    def make():
        data = FIXTURE.read_bytes()
        return data[:int(len(data) * fraction)]
    return make


def _huge_initializer():
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20, 3, 3])
    return _bytes(_classifier(t))


def _lying_raw_data():
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3, 2, 3, 3], raw_data=bytes(12))
    return _bytes(_classifier(t))


def _external(location):
    def make():
        t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3, 2, 3, 3],
                        data_location=TensorProto.EXTERNAL)
        t.external_data.add(key="location", value=location)
        return _bytes(_classifier(t))
    return make


def _cycle():
    nodes = [helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Add", ["x", "a"], ["b"]),
             helper.make_node("GlobalAveragePool", ["b"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    return _bytes(_graph_model(nodes, []))


def _constant_of_huge_shape():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
             helper.make_node("Shape", ["big"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "eight"], ["pads"]),
             helper.make_node("Pad", ["x", "pads"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    inits = [numpy_helper.from_array(np.array([1 << 30, 1 << 30], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([8], np.int64), "eight")]
    return _bytes(_graph_model(nodes, inits))


def _float_kernel_shape():
    model = _classifier(_weight(GOOD_W))
    model.graph.node[0].attribute.append(helper.make_attribute("strides", [1.0, 1.0]))
    return _bytes(model)


CASES = {
    "empty": (lambda: b"", "not an ONNX model"),
    "random bytes": (lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), ""),
    "truncated at 10%": (_truncated(0.1), ""),
    "truncated at 50%": (_truncated(0.5), ""),
    "truncated one byte short": (_truncated((FIXTURE.stat().st_size - 1) / FIXTURE.stat().st_size), ""),
    "weight of whole numbers": (lambda: _bytes(_classifier(_weight(np.ones((3, 2, 3, 3), np.int64)))), ""),
    "weight of strings": (lambda: _bytes(_classifier(helper.make_tensor("W", TensorProto.STRING, [1], [b"a"]))), ""),
    "attribute of the wrong type": (_float_kernel_shape, ""),
    "integer image input": (lambda: _bytes(_classifier(_weight(GOOD_W), in_type=TensorProto.INT64)), ""),
    "a cycle": (_cycle, "a cycle"),
    "huge declared image": (lambda: _bytes(_classifier(_weight(GOOD_W), in_dims=("N", 2, 1 << 40, 1 << 40))), ""),
    "huge declared initializer": (_huge_initializer, "asks for"),
    "raw data shorter than its dims": (_lying_raw_data, ""),
    "folded constant of huge shape": (_constant_of_huge_shape, "asks for"),
    "external data outside the folder": (_external("../secret.bin"), "not a file beside the model"),
    "external data at an absolute path": (_external("/etc/hostname"), "not a file beside the model"),
    "missing external data": (_external("weights.bin"), "external-data file weights.bin"),
    "NaN weights": (lambda: _bytes(_classifier(_weight(np.full((3, 2, 3, 3), np.nan, np.float32)))), "NaN"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_in_one_line_and_nothing_written(tmp_path, capsys, case):
    make, fragment = CASES[case]
    (tmp_path / "m.onnx").write_bytes(make())
    code, _, err = run_cli(["import", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "m.h5")], capsys)
    assert fragment in assert_one_line_error(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_untouched_fixture_imports(tmp_path, capsys):
    """The file the truncated cases cut is itself fine."""
    code, _, err = run_cli(["import", str(FIXTURE), "--out", str(tmp_path / "m.h5")], capsys)
    assert code == 0, err
