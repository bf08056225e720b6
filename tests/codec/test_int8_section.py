"""The INT8 section of a version-3 .npdc file (docs/format.md): int8 activation scales written by
`[encode] int8 = true`, read back exactly, used by `--precision int8`; a damaged section is
refused like any other, and version-2 files still read."""

import struct

import numpy as np
import pytest

from npdc.codec.container import read_container, unpack_container
from npdc.codec.errors import FormatError
from npdc.codec.model import load_compressed, model_sections, save_compressed, stored_scales
from npdc.codec.payload import decode_scales, encode_scales
from npdc.compress.quantize import quantize_net
from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.evaluate import int8_scales
from npdc.pipeline.schedule import EncodeStage, load_schedule
from npdc.pipeline.stages import encode_stage
from npdc.runtime.calibrate import calibration_scales
from npdc.runtime.int8 import Int8Runtime
from tests.runtime.conftest import NETS, raw_images


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(path of a file with INT8, path of the same model without, decoded net, calibration images)."""
    folder = tmp_path_factory.mktemp("int8file")
    net = build_net(NETS["cifar-resnet20"], seed=0)
    quantized = quantize_net(net, {}, "kmeans", {}, default_bits=5)
    images = raw_images(net, 24, seed=2)
    stage = EncodeStage(raw_dtype="float32", int8=True, int8_images=24)
    record = encode_stage(net, quantized, stage, folder / "with.npdc", images)
    save_compressed(folder / "without.npdc", net, quantized, "float32")
    return folder / "with.npdc", folder / "without.npdc", load_compressed(folder / "without.npdc")[0], images, record


def test_encode_int8_stores_what_calibration_gives(written):
    path, plain, net, images, record = written
    scales = stored_scales(path, net)
    assert record["int8_activations"] == len(scales) > 10
    assert scales == calibration_scales(net, images, 24)  # float32 scales come back exactly
    assert stored_scales(plain, net) is None
    assert path.stat().st_size > plain.stat().st_size
    assert [t for t, _ in read_container(path)][-1] == "INT8"


def test_int8_inference_takes_the_stored_scales(written):
    path, _, net, images, _ = written
    scales, source = int8_scales(path, net, None, 256)
    assert source == "file"
    fresh = Int8Runtime(net, calibration_scales(net, images, 24), batch=4).predict(images[:8])
    assert np.array_equal(Int8Runtime(net, scales, batch=4).predict(images[:8]), fresh)


def test_a_schedule_turns_int8_on():
    schedule = load_schedule(None, "fast", {"encode": {"int8": True, "int8_images": 100,
                                                       "int8_method": "percentile"}})
    assert schedule.encode.int8 and schedule.encode.int8_images == 100
    with pytest.raises(UserError, match="int8_method"):
        load_schedule(None, "fast", {"encode": {"int8": True, "int8_method": "kl"}})
    with pytest.raises(UserError, match="encode.int8 must be bool"):
        load_schedule(None, "fast", {"encode": {"int8": 1}})


def _int8_span(data):
    """(start, end) bytes of the INT8 section's frame."""
    pos = 6
    while True:
        tag, length = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if tag == b"INT8":
            return pos, pos + 12 + length
        pos += 12 + length


def test_every_byte_of_the_int8_section_is_guarded(written, tmp_path):
    path, _, net, _, _ = written
    data = path.read_bytes()
    start, end = _int8_span(data)
    for i in range(start, end):
        for mask in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= mask
            (tmp_path / "bad.npdc").write_bytes(bytes(bad))
            with pytest.raises((FormatError, UserError)):
                stored_scales(tmp_path / "bad.npdc", net)


def _with_payload(written, payload):
    _, _, net, _, _ = written
    quantized = quantize_net(net, {}, "kmeans", {}, default_bits=3)
    sections = model_sections(net, quantized) + [("INT8", payload)]
    return net, sections


@pytest.mark.parametrize("payload,message", [
    (encode_scales({"input": (0.5, 3)}) + b"\x00", "stray bytes"),
    (b"\x01\x05input" + struct.pack("<f", float("nan")) + b"\x03", "not a finite number"),
    (b"\x01\x05input" + struct.pack("<f", 0.0) + b"\x03", "above 0"),
    (b"\x01\x05input" + struct.pack("<f", -1.0) + b"\x03", "above 0"),
    (b"\x02\x05input" + struct.pack("<f", 1.0) + b"\x03\x05input" + struct.pack("<f", 1.0) + b"\x03", "twice"),
    (encode_scales({"nothere": (0.5, 3)}), "no activation"),
    (b"\xff\xff\x03", "over the limit"),
    (b"\x01\x05inp", "over the limit"),
    (b"\x01\x05input\x00\x00", "truncated"),
])
def test_a_well_framed_but_bad_int8_payload_is_refused(written, payload, message):
    net, sections = _with_payload(written, payload)
    with pytest.raises(FormatError, match=message) as e:
        stored_scales(sections, net)
    assert "INT8" in str(e.value)


def test_int8_must_come_last_and_once(written):
    net, sections = _with_payload(written, encode_scales({"input": (0.5, 3)}))
    with pytest.raises(FormatError, match="optional INT8"):
        stored_scales(sections + [("INT8", encode_scales({"input": (0.5, 3)}))], net)
    with pytest.raises(FormatError, match="optional INT8"):
        stored_scales(sections[:1] + sections[-1:] + sections[1:-1], net)


def test_version_2_files_still_read_and_cannot_hold_int8(written, tmp_path):
    path, plain, net, _, _ = written
    old = bytearray(plain.read_bytes())
    old[4:6] = struct.pack("<H", 2)
    (tmp_path / "v2.npdc").write_bytes(bytes(old))
    a, b = load_compressed(tmp_path / "v2.npdc")[0], load_compressed(plain)[0]
    assert all(np.array_equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with_int8 = bytearray(path.read_bytes())
    with_int8[4:6] = struct.pack("<H", 2)
    with pytest.raises(FormatError, match="version-2"):
        unpack_container(bytes(with_int8), "v2.npdc")


def test_scales_round_trip_through_their_payload():
    scales = {"input": (0.0123, 131), "res2a": (0.5, 0), "fc5": (1e-30, 255)}
    back = decode_scales(encode_scales(scales), 10)
    assert back.keys() == scales.keys()
    assert all(back[k][1] == scales[k][1] and back[k][0] == float(np.float32(scales[k][0])) for k in scales)
    with pytest.raises(ValueError):
        encode_scales({"x": (float("inf"), 0)})
