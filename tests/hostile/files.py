"""Generators of hostile model files, shared by the in-process tests and the memory subprocess.

Each generator writes a small file and returns its path; CASES maps a class name to
(command, generator) pairs so the tests can count them by class."""

import json
import zlib

import h5py
import numpy as np

SPEC = {"arch": "resnet18", "input_shape": [1, 8, 8], "num_classes": 3, "width": 2, "embedding": 8}


def tiny_net():
    from npdc.engine.resnet import build_net

    return build_net(SPEC, seed=1)


def valid_sections():
    """Sections of a valid tiny .npdc file with one quantized layer (fc6.W)."""
    from npdc.codec.model import model_sections
    from npdc.compress.quantize import QuantizedLayer

    net = tiny_net()
    w = net.params()["fc6.W"]
    q = QuantizedLayer(np.arange(w.size, dtype=np.int64) % 3, np.array([-0.5, 0.5], np.float32), True)
    return model_sections(net, {"fc6.W": q})


def header_of(sections):
    from npdc.codec.header import decode_header

    return decode_header(sections[0][1])


def write_npdc(path, sections):
    from npdc.codec.container import pack_container

    path.write_bytes(pack_container(sections))
    return path


def with_header(sections, raw=None, **change):
    """The sections with a changed header (or a raw JSON text as the header)."""
    text = raw if raw is not None else json.dumps({**header_of(sections), **change})
    return [("HEAD", zlib.compress(text.encode(), 9))] + sections[1:]


def spec_change(**change):
    return {**SPEC, **change}


def npdc_case(name, **change):
    def make(folder):
        return write_npdc(folder / f"{name}.npdc", with_header(valid_sections(), **change))
    return make


def npdc_raw(name, text):
    def make(folder):
        return write_npdc(folder / f"{name}.npdc", with_header(valid_sections(), raw=text))
    return make


def layer_case(name, entry_change):
    def make(folder):
        sections = valid_sections()
        header = header_of(sections)
        header["layers"][0] = {**header["layers"][0], **entry_change}
        return write_npdc(folder / f"{name}.npdc", with_header(sections, **header))
    return make


def huge_layer_claim(folder):
    """A header that lists one layer of 2**28 weights whose LAYR section is 13 bytes."""
    sections = valid_sections()
    header = header_of(sections)
    header["layers"][0] = {"path": "fc6.W", "shape": [1 << 14, 1 << 14], "kind": "dense"}
    sections = with_header(sections, **header)
    sections[1] = ("LAYR", bytes(13))
    return write_npdc(folder / "huge-claim.npdc", sections)


def duplicate_layer(folder):
    """The one quantized layer listed twice, with two LAYR sections."""
    sections = valid_sections()
    header = header_of(sections)
    header["layers"] = header["layers"] * 2
    sections = with_header(sections, **header)
    return write_npdc(folder / "duplicate.npdc", sections[:2] + sections[1:])


def h5_case(name, spec=None, state=None, spec_text=None):
    """A .h5 model file with a given spec (or raw spec text) and state arrays."""
    def make(folder):
        path = folder / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f.attrs["format"], f.attrs["version"] = "npdc-model", 1
            f.attrs["spec"] = spec_text if spec_text is not None else json.dumps(spec)
            f.attrs["meta"] = "{}"
            group = f.create_group("state")
            for key, value in (state or {}).items():
                if isinstance(value, tuple):  # a declared shape, stored compressed and never written
                    group.create_dataset(key, shape=value, dtype="float32", chunks=True, compression="gzip")
                else:
                    group.create_dataset(key, data=value)
        return path
    return make


NESTED = "[" + ",".join(["{}"] * 1000000) + "]"  # 3 MB of text, a few KB deflated
CASES = {
    "spec, huge declared network (memory)": [
        ("decompress", npdc_case("width", spec=spec_change(width=60000))),
        ("decompress", npdc_case("embedding", spec=spec_change(embedding=1 << 20, num_classes=1 << 20))),
        ("decompress", npdc_case("input", spec=spec_change(input_shape=[3, 60000, 60000]))),
        ("info", h5_case("h5-width", spec=spec_change(width=60000))),
        ("info", h5_case("h5-classes", spec=spec_change(embedding=1 << 20, num_classes=1 << 20))),
    ],
    "layer claims (memory)": [
        ("decompress", huge_layer_claim),
        ("decompress", layer_case("wide-claim", {"shape": [1 << 27, 2]})),
        ("info", h5_case("h5-array", spec=SPEC, state={"fc6.W": (1 << 15, 1 << 15)})),
    ],
    "header JSON parse (memory)": [
        ("decompress", npdc_raw("nested", json.dumps({"spec": SPEC, "layers": [], "x": "@"}).replace('"@"', NESTED))),
        ("decompress", npdc_raw("deep", "[" * 100000 + "]" * 100000)),
        ("decompress", npdc_raw("numbers", '{"a": [' + ",".join(["1"] * 400000) + "]}")),
    ],
    "spec of the wrong type, sign or range": [
        ("decompress", npdc_case("spec-number", spec=3)),
        ("decompress", npdc_case("arch-list", spec={"arch": ["resnet18"]})),
        ("decompress", npdc_case("width-negative", spec=spec_change(width=-4))),
        ("decompress", npdc_case("width-text", spec=spec_change(width="16"))),
        ("decompress", npdc_case("shape-wraps", spec=spec_change(input_shape=[1, 2 ** 64, 8]))),
        ("decompress", npdc_case("strides-zero", spec=spec_change(strides=[1, 0, 2, 2, 2]))),
        ("decompress", npdc_case("channels-list", spec=spec_change(channels=[1, 2]))),
        ("decompress", npdc_case("unknown-key", spec=spec_change(colour="blue"))),
        ("info", h5_case("h5-spec-number", spec_text="3")),
        ("info", h5_case("h5-arch-list", spec={"arch": ["resnet18"]})),
        ("info", h5_case("h5-spec-not-json", spec_text="{spec")),
    ],
    "layer entries of the wrong type or sign": [
        ("decompress", layer_case("path-list", {"path": ["fc6.W"]})),
        ("decompress", layer_case("shape-text", {"shape": "38"})),
        ("decompress", layer_case("shape-negative", {"shape": [-3, -8]})),
        ("decompress", layer_case("shape-bool", {"shape": [True, 3]})),
        ("decompress", layer_case("shape-wraps", {"shape": [2 ** 64 + 3, 8]})),
        ("decompress", layer_case("not-a-parameter", {"path": "fc7.W"})),
        ("decompress", layer_case("wrong-shape", {"shape": [8, 3]})),
        ("decompress", npdc_case("entry-number", layers=[3])),
        ("decompress", duplicate_layer),
        ("info", h5_case("h5-extra-array", spec=SPEC, state={"zz.W": np.zeros(3, np.float32)})),
    ],
    "other header fields": [
        ("decompress", npdc_case("plan-list", conv_plan={"conv1": ["direct"]})),
        ("decompress", npdc_case("plan-text", conv_plan="direct")),
        ("decompress", npdc_case("folded-number", folded_bn=3)),
        ("decompress", npdc_raw("nan", '{"spec": NaN, "layers": []}')),
        ("decompress", npdc_raw("not-object", "[1, 2]")),
    ],
}
MEMORY_CLASSES = [name for name in CASES if name.endswith("(memory)")]
