"""Tests for npdc.codec.container (the file framing against hand-built bytes), npdc.codec.payload
and npdc.codec.header: the layer payloads
against a pure-Python reader written from docs/format.md (its own canonical-code builder and
bit-by-bit decoder), round trips, every single-byte flip and every truncation of a file, crafted
payloads with valid CRCs, and the per-layer bit counts against independent counts."""

import math
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import optimal_huffman_bits
from npdc.codec import container as C
from npdc.codec import header as H
from npdc.codec import payload as P
from npdc.codec.container import pack_container, read_container, unpack_container, write_container
from npdc.codec.errors import FormatError
from npdc.codec.header import decode_header, encode_header
from npdc.codec.payload import (decode_dense_layer, decode_layer, decode_raw, decode_sparse_layer,
                                dequantize, encode_dense_layer, encode_raw, encode_sparse_layer,
                                layer_bit_stats)
from npdc.errors import UserError

HYPO = settings(max_examples=30, deadline=None)


# ---- independent references (written from docs/format.md) ------------------------------------

def ref_frame(tag, payload):
    body = tag + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def ref_file(sections, version=3):
    return (b"NPDC" + struct.pack("<H", version)
            + b"".join(ref_frame(t.encode(), p) for t, p in sections) + ref_frame(b"END ", b""))


def ref_varint(n):
    out = []
    while True:
        out.append(n % 128)
        n //= 128
        if n == 0:
            break
    return bytes([b + 128 for b in out[:-1]] + out[-1:])


def ref_table(lengths):
    """Code-length table bytes: used-symbol count, then per used symbol the Elias-gamma step
    from the previous used symbol (from -1) and 4 bits of length - 1, zero-padded."""
    bits, previous = "", -1
    for symbol, length in enumerate(lengths):
        if length:
            step = format(symbol - previous, "b")
            bits += "0" * (len(step) - 1) + step + format(length - 1, "04b")
            previous = symbol
    bits += "0" * (-len(bits) % 8)
    used = sum(1 for v in lengths if v)
    return ref_varint(used) + bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


class RefReader:
    def __init__(self, data):
        self.data, self.i = bytes(data), 0
        self.table_bytes = 0  # bytes of the code-length tables read so far

    def take(self, n):
        assert self.i + n <= len(self.data)
        self.i += n
        return self.data[self.i - n:self.i]

    def u8(self):
        return self.take(1)[0]

    def varint(self):
        value, shift = 0, 0
        while True:
            b = self.u8()
            value += (b % 128) << shift
            shift += 7
            if b < 128:
                return value

    def codebook(self):
        width = self.u8()
        k = self.varint()
        return np.frombuffer(self.take(k * width), {2: "<f2", 4: "<f4"}[width]).astype(np.float32)

    def lengths(self):
        """Used-symbol count, then per used symbol: Elias-gamma step, 4-bit length - 1."""
        start = self.i
        used, lengths, symbol = self.varint(), [], -1
        bits = "".join(f"{b:08b}" for b in self.data[self.i:])
        pos = 0
        for _ in range(used):
            zeros = len(bits[pos:]) - len(bits[pos:].lstrip("0"))
            step = int(bits[pos + zeros:pos + 2 * zeros + 1], 2)
            pos += 2 * zeros + 1
            symbol += step
            lengths += [0] * (symbol + 1 - len(lengths))
            lengths[symbol] = int(bits[pos:pos + 4], 2) + 1
            pos += 4
        self.take((pos + 7) // 8)
        self.table_bytes += self.i - start
        return lengths

    def stream(self, count):
        """Code-length table, bit count, codes; decoded one bit at a time."""
        lengths = self.lengths()
        n_bits = self.varint()
        bits = "".join(f"{b:08b}" for b in self.take((n_bits + 7) // 8))[:n_bits]
        table = ref_canonical(lengths)
        out, word = [], ""
        for bit in bits:
            word += bit
            if word in table:
                out.append(table[word])
                word = ""
        assert word == "" and len(out) == count
        return out, lengths, n_bits


def ref_canonical(lengths):
    """Code string -> symbol, by the counting rule of RFC 1951 section 3.2.2."""
    longest = max(lengths, default=0)
    per_len = [0] * (longest + 1)
    for length in lengths:
        if length:
            per_len[length] += 1
    next_code, code = [0] * (longest + 1), 0
    for length in range(1, longest + 1):  # per_len[0] is 0: unused symbols take no codes
        code = (code + per_len[length - 1]) << 1
        next_code[length] = code
    table = {}
    for symbol, length in enumerate(lengths):
        if length:
            table[format(next_code[length], f"0{length}b")] = symbol
            next_code[length] += 1
    return table


def ref_decode_layer(payload, length):
    r = RefReader(payload)
    gap_bits = r.u8()
    codebook = r.codebook()
    if gap_bits == 0:
        values, _, _ = r.stream(length)
        assert r.i == len(r.data)
        return np.array(values), codebook
    entries = r.varint()
    gaps, _, _ = r.stream(entries)
    values, _, _ = r.stream(entries)
    assert r.i == len(r.data)
    out, pos = [0] * length, -1
    for g, v in zip(gaps, values):
        pos += g + 1
        out[pos] = v
    return np.array(out), codebook


def ref_entries(indices, b):
    """(gaps, values) position by position: a filler stands for 2**b zeros."""
    gaps, values, run = [], [], 0
    for v in indices:
        if v == 0:
            run += 1
            continue
        while run >= 2**b:
            gaps.append(2**b - 1)
            values.append(0)
            run -= 2**b
        gaps.append(run)
        values.append(int(v))
        run = 0
    return gaps, values


def huffman_cost(symbols):
    """Bits of an optimal Huffman code for the symbols' counts."""
    return optimal_huffman_bits(np.bincount(np.asarray(symbols, np.int64))) if len(symbols) else 0


# ---- data ------------------------------------------------------------------------------------

def make_layer(rng, n, sparsity, k):
    """Value indices with a peaked (geometric) distribution over 1..k, `sparsity` zeros."""
    values = np.minimum(rng.geometric(0.15, n), k) if k else np.zeros(n, np.int64)
    return np.where(rng.random(n) < sparsity, 0, values).astype(np.int64)


@st.composite
def sparse_layers(draw):
    n = draw(st.integers(0, 3000))
    sparsity = draw(st.sampled_from([0.0, 0.3, 0.7, 0.9, 0.99, 0.999, 1.0]))
    k = draw(st.sampled_from([1, 2, 16, 127, 255, 300]))
    gap_bits = draw(st.one_of(st.integers(1, 8), st.sampled_from([12, 16])))
    dtype = draw(st.sampled_from(["float16", "float32"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    codebook = rng.standard_normal(k).astype(np.float32)
    return make_layer(rng, n, sparsity, k), codebook, gap_bits, dtype


def stored(codebook, dtype):
    return np.asarray(codebook).astype(dtype).astype(np.float32)


def realistic_layer(seed=0, n=147_456, sparsity=0.7, k=127):
    """Gaussian weights, the smallest 70 % pruned, survivors linearly quantized to k levels."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    keep = np.abs(w) > np.quantile(np.abs(w), sparsity)
    lo, hi = w[keep].min(), w[keep].max()
    idx = np.where(keep, np.round((w - lo) / (hi - lo) * (k - 1)).astype(np.int64) + 1, 0)
    return idx, np.linspace(lo, hi, k).astype(np.float32)


def small_file():
    idx = np.array([0, 3, 0, 0, 0, 0, 1, 2, 0, 3])
    return pack_container([("HEAD", encode_header({"arch": "x", "n": 1})),
                           ("LAYR", encode_sparse_layer(idx, [0.5, -1.0, 2.0], 2)),
                           ("PARM", encode_raw({"b": np.array([1.0, 2.0])}, "float16"))])


def model_file():
    idx, codebook = realistic_layer(n=20_000)
    rng = np.random.default_rng(3)
    fc = make_layer(rng, 5000, 0.0, 15)
    return pack_container([
        ("HEAD", encode_header({"arch": {"name": "cifar-resnet20"}, "layers": ["a", "b", "c"]})),
        ("LAYR", encode_sparse_layer(idx, codebook, 5, "float16")),
        ("LAYR", encode_sparse_layer(make_layer(rng, 3000, 0.9, 7), np.arange(7.0), 3)),
        ("LAYR", encode_dense_layer(fc, np.linspace(-1, 1, 15))),
        ("PARM", encode_raw({"bn.gamma": rng.random(64), "fc.b": rng.random(10)}))])


def frame_starts(data):
    """Offsets of each section frame, from the lengths (an independent walk)."""
    starts, pos = [], 6
    while pos < len(data):
        starts.append(pos)
        pos += 12 + struct.unpack_from("<I", data, pos + 4)[0]
    return starts


def corrupt(data, i, mask):
    out = bytearray(data)
    out[i] ^= mask
    return bytes(out)


# ---- container framing -----------------------------------------------------------------------

def test_known_bytes_of_a_file():
    data = pack_container([("HEAD", b"hi")])
    assert data == ref_file([("HEAD", b"hi")])
    assert data[:6] == b"NPDC\x03\x00"
    assert data[6:20] == b"HEAD\x02\0\0\0hi" + struct.pack("<I", zlib.crc32(b"HEAD\x02\0\0\0hi"))
    assert data[-12:-4] == b"END \x00\x00\x00\x00"
    assert len(pack_container([])) == 6 + 12


@HYPO
@given(st.lists(st.tuples(st.sampled_from(["HEAD", "LAYR", "PARM", "x y~"]),
                          st.binary(max_size=40)), max_size=6))
def test_container_round_trip(sections):
    data = pack_container(sections)
    assert data == ref_file(sections)
    assert unpack_container(data) == sections


def test_write_and_read_file(tmp_path):
    path = tmp_path / "m.npdc"
    sections = [("HEAD", encode_header({"a": [1, 2]})), ("LAYR", b"\x00" * 1000)]
    size = write_container(path, sections)
    assert size == path.stat().st_size == len(pack_container(sections))
    assert os.listdir(tmp_path) == ["m.npdc"]  # written via a temp file that is gone
    assert read_container(path) == sections
    write_container(path, sections[:1])  # replaces the file
    assert read_container(str(path)) == sections[:1] and os.listdir(tmp_path) == ["m.npdc"]


def test_write_refusing_bad_sections_leaves_nothing(tmp_path):
    for bad in [[("LONGTAG", b"")], [("EN\x00D", b"")], [("END ", b"")], [(b"HEAD", b"")]]:
        with pytest.raises(ValueError):
            write_container(tmp_path / "m.npdc", bad)
    assert os.listdir(tmp_path) == []


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothere.npdc"):
        read_container(tmp_path / "nothere.npdc")


def test_every_single_byte_flip_is_detected():
    """Except a flip of the version to another version this npdc reads (3 -> 2): the CRCs do
    not cover the version, and the upgrade must then give back the very same sections."""
    data = small_file()
    assert len(data) < 200
    for i in range(len(data)):
        for mask in (0x01, 0x10, 0x80, 0xFF):
            bad = corrupt(data, i, mask)
            if i in (4, 5) and struct.unpack_from("<H", bad, 4)[0] in C.UPGRADES:
                assert unpack_container(bad) == unpack_container(data)
                continue
            with pytest.raises(FormatError):
                unpack_container(bad, "small.npdc")


def test_flips_in_every_section_of_a_model_file_are_detected():
    data = model_file()
    starts = frame_starts(data)
    assert len(starts) == 6
    rng = np.random.default_rng(0)
    for s, e in zip(starts, starts[1:] + [len(data)]):
        for i in {s, s + 3, s + 4, s + 7, s + 8, (s + e) // 2, e - 5, e - 1,
                  *rng.integers(s, e, 8).tolist()}:
            with pytest.raises(FormatError, match="m.npdc: section"):
                unpack_container(corrupt(data, i, 1 << int(rng.integers(8))), "m.npdc")


def test_truncation_at_every_length_is_detected():
    data = small_file()
    for n in range(len(data)):
        with pytest.raises(FormatError, match="t.npdc"):
            unpack_container(data[:n], "t.npdc")
    big = model_file()
    for n in sorted({*frame_starts(big), *range(len(big) - 20, len(big)), 5, 7, 17, 1000}):
        with pytest.raises(FormatError):
            unpack_container(big[:n])


def test_foreign_files():
    for data in [b"", b"PK\x03\x04" + bytes(40), b"\x89PNG\r\n\x1a\n", b"npdc\x01\x00"]:
        with pytest.raises(FormatError, match="f.bin: file header: not an npdc file"):
            unpack_container(data, "f.bin")
    with pytest.raises(FormatError, match="truncated"):
        unpack_container(b"NPD", "f.bin")


@pytest.mark.parametrize("version", [0, 4, 7, 65535])
def test_unknown_versions_are_refused(version):
    data = ref_file([("HEAD", b"x")], version=version)
    with pytest.raises(FormatError, match=f"v.npdc: file header: version {version}, this npdc "
                                          "reads 3"):
        unpack_container(data, "v.npdc")


def test_a_registered_upgrade_is_applied(monkeypatch):
    old = ref_file([("OLD!", b"abc")], version=0)
    monkeypatch.setitem(C.UPGRADES, 0, lambda sections, name: [("HEAD", sections[0][1])])
    assert unpack_container(old) == [("HEAD", b"abc")]  # then version 1's upgrade, in order


def test_a_version_whose_upgrade_chain_has_a_gap_is_refused(monkeypatch):
    monkeypatch.setitem(C.UPGRADES, 0, lambda sections, name: sections)
    monkeypatch.delitem(C.UPGRADES, 1)
    for version in (0, 1):  # version 2 still reads: its own upgrade is there
        with pytest.raises(FormatError, match=f"file header: version {version}, this npdc reads 3"):
            unpack_container(ref_file([("HEAD", b"x")], version=version), "v.npdc")


def test_trailing_bytes_name_the_place_after_the_end_marker():
    data = small_file()
    with pytest.raises(FormatError, match=r"section 4 at byte \d+: trailing data .*3 bytes"):
        unpack_container(data + b"abc", "m.npdc")
    with pytest.raises(FormatError, match="section 4"):
        unpack_container(data + data, "m.npdc")


def test_bad_length_fields_name_the_section():
    data = small_file()
    starts = frame_starts(data)
    for value in (0xFFFFFFFF, len(data), 1 << 31):
        bad = bytearray(data)
        bad[starts[1] + 4:starts[1] + 8] = struct.pack("<I", value)
        with pytest.raises(FormatError, match=f"section 1 'LAYR' at byte {starts[1]}: length "
                                              f"{value} runs past the end"):
            unpack_container(bytes(bad), "m.npdc")


def test_crc_mismatch_names_the_section():
    data = small_file()
    s = frame_starts(data)[2]
    with pytest.raises(FormatError, match="m.npdc: section 2 'PARM' .*CRC mismatch"):
        unpack_container(corrupt(data, s + 9, 0x40), "m.npdc")


def test_missing_end_marker_and_crafted_frames():
    body = b"NPDC\x01\x00" + ref_frame(b"HEAD", b"x")
    with pytest.raises(FormatError, match="section 1 .*without the end marker"):
        unpack_container(body, "m.npdc")
    with pytest.raises(FormatError, match="section 1 'END ' .*payload"):
        unpack_container(body + ref_frame(b"END ", b"!"), "m.npdc")
    with pytest.raises(FormatError, match="section 0 .*printable"):
        unpack_container(b"NPDC\x01\x00" + ref_frame(b"HE\x00D", b"") + ref_frame(b"END ", b""))
    with pytest.raises(FormatError, match="section 1 .*truncated"):
        unpack_container(body + b"END ")


def test_corrupt_lengths_never_allocate_or_hang():
    huge = b"NPDC\x01\x00LAYR" + struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 8
    with pytest.raises(FormatError, match="runs past"):
        unpack_container(huge)


# ---- varints ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, expected", [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"),
                                         (300, "ac02"), (624485, "e58e26"),
                                         (2**64 - 1, "ffffffffffffffffff01")])
def test_varint_known_bytes(n, expected):
    assert P.varint(n) == bytes.fromhex(expected) == ref_varint(n)
    r = P.Reader(bytes.fromhex(expected), "test")
    assert r.varint("v", 2**64) == n and r.left() == 0


@pytest.mark.parametrize("raw, problem", [("80", "truncated"), ("8000", "over-long"),
                                          ("ffffffffffffffffffff01", "longer than 10"),
                                          ("e58e26", "over the limit")])
def test_bad_varints(raw, problem):
    with pytest.raises(FormatError, match=problem):
        P.Reader(bytes.fromhex(raw), "test").varint("v", 1000)


# ---- layer payloads --------------------------------------------------------------------------

@HYPO
@given(sparse_layers())
def test_sparse_round_trip_and_layout(case):
    idx, codebook, gap_bits, dtype = case
    payload = encode_sparse_layer(idx, codebook, gap_bits, dtype)
    back, cb = decode_sparse_layer(payload, idx.size)
    assert back.tolist() == idx.tolist()
    assert cb.dtype == np.float32 and cb.tolist() == stored(codebook, dtype).tolist()
    ref_idx, ref_cb = ref_decode_layer(payload, idx.size)
    assert ref_idx.tolist() == idx.tolist() and ref_cb.tolist() == cb.tolist()
    r = RefReader(payload)
    assert r.u8() == gap_bits and r.u8() == {"float16": 2, "float32": 4}[dtype]


@HYPO
@given(sparse_layers())
def test_dense_round_trip_and_layout(case):
    idx, codebook, _, dtype = case
    idx = idx[:800]
    payload = encode_dense_layer(idx, codebook, dtype)
    back, cb = decode_dense_layer(payload, idx.size)
    assert back.tolist() == idx.tolist() and cb.tolist() == stored(codebook, dtype).tolist()
    assert ref_decode_layer(payload, idx.size)[0].tolist() == idx.tolist()
    assert decode_layer(payload, idx.size)[0].tolist() == idx.tolist()


def test_edge_layers():
    cb = np.array([0.25], np.float32)
    for idx in [np.zeros(0, np.int64), np.zeros(50, np.int64), np.array([1]), np.array([0, 0, 1]),
                np.array([1] + [0] * 40), np.ones(30, np.int64)]:
        for b in (1, 3, 8):
            back, c = decode_sparse_layer(encode_sparse_layer(idx, cb, b), idx.size)
            assert back.tolist() == idx.tolist() and c.tolist() == [0.25]
        assert decode_dense_layer(encode_dense_layer(idx, cb), idx.size)[0].tolist() == idx.tolist()
    # an empty codebook: every weight pruned
    empty = encode_sparse_layer(np.zeros(9, np.int64), np.zeros(0), 4)
    assert decode_sparse_layer(empty, 9)[0].tolist() == [0] * 9
    assert len(empty) == 1 + 2 + 1 + 2 + 2  # gap width, codebook, entries, two empty streams


@pytest.mark.parametrize("b", [1, 2, 5])
def test_gaps_beyond_the_width_use_fillers(b):
    idx = np.array([0] * (5 * 2**b + 3) + [2] + [0] * 100 + [1] + [0] * 7)
    payload = encode_sparse_layer(idx, [1.0, 2.0], b)
    assert decode_sparse_layer(payload, idx.size)[0].tolist() == idx.tolist()
    r = RefReader(payload)
    r.u8(), r.codebook()
    entries = r.varint()
    assert (r.stream(entries)[0], r.stream(entries)[0]) == ref_entries(idx, b)


def test_wide_gaps_and_large_codebooks():
    rng = np.random.default_rng(5)
    idx = make_layer(rng, 100_000, 0.999, 1000)
    payload = encode_sparse_layer(idx, rng.random(1000), 16, "float16")
    assert decode_layer(payload, idx.size)[0].tolist() == idx.tolist()


def test_uint64_and_int8_indices():
    idx = np.array([0, 2, 0, 1], np.uint64)
    assert decode_layer(encode_sparse_layer(idx, [1, 2], 2), 4)[0].tolist() == [0, 2, 0, 1]
    assert decode_layer(encode_dense_layer(idx.astype(np.int8), [1, 2]), 4)[0].tolist() == [
        0, 2, 0, 1]


def test_encoder_refuses_bad_input():
    with pytest.raises(ValueError, match="indices"):
        encode_sparse_layer(np.array([0, 3]), [1.0, 2.0], 4)
    with pytest.raises(ValueError):
        encode_sparse_layer(np.array([0.5]), [1.0], 4)
    with pytest.raises(ValueError, match="gap_bits"):
        encode_sparse_layer(np.array([1]), [1.0], 17)
    with pytest.raises(ValueError, match="finite"):
        encode_dense_layer(np.array([1]), [70000.0], "float16")
    with pytest.raises(ValueError, match="dtype"):
        encode_dense_layer(np.array([1]), [1.0], "float64")


def test_dequantize():
    rng = np.random.default_rng(1)
    idx = make_layer(rng, 3 * 4 * 5, 0.5, 6)
    codebook = rng.standard_normal(6).astype(np.float32)
    w = dequantize(idx, codebook, (3, 4, 5))
    assert w.dtype == np.float32 and w.shape == (3, 4, 5)
    assert np.array_equal(w.ravel(), np.where(idx > 0, codebook[idx - 1], 0))
    with pytest.raises(ValueError):
        dequantize(idx, codebook, (3, 4))
    with pytest.raises(ValueError):
        dequantize(np.array([7]), codebook, 1)


def test_realistic_layer_size():
    idx, codebook = realistic_layer()
    payload = encode_sparse_layer(idx, codebook, 5)
    assert decode_sparse_layer(payload, idx.size)[0].tolist() == idx.tolist()
    stats = layer_bit_stats(idx, 127, 5)
    # the payload is exactly its fields: the streams' bits plus the few framing bytes
    r = RefReader(payload)
    r.u8(), r.codebook()
    entries = r.varint()
    (_, gl, gbits), (_, vl, vbits) = r.stream(entries), r.stream(entries)
    assert (gbits, vbits) == (stats["huffman_index_bits"], stats["huffman_value_bits"])
    assert 8 * (len(ref_table(gl)) + len(ref_table(vl))) == stats["code_table_bits"]
    expected = (1 + 1 + len(ref_varint(127)) + stats["codebook_bits"] // 8
                + len(ref_varint(entries)) + sum(len(ref_table(lengths)) + len(ref_varint(n))
                                                 + (n + 7) // 8
                                                 for lengths, n in [(gl, gbits), (vl, vbits)]))
    assert len(payload) == expected
    assert len(payload) * 8 < idx.size * 32 / 10  # over 10x smaller than float32


# ---- crafted payloads (valid CRC, inconsistent content) --------------------------------------

def sparse_bytes(gap_bits=2, dtype=4, codebook=(1.0,), entries=None, gap=None, value=None,
                 tail=b""):
    """A sparse payload assembled field by field; gap/value = (lengths or table bytes, n_bits,
    data)."""
    cb = np.asarray(codebook, "<f2" if dtype == 2 else "<f4").tobytes()
    out = bytes([gap_bits, dtype]) + ref_varint(len(codebook)) + cb
    out += ref_varint(1 if entries is None else entries)
    for lengths, n_bits, data in (gap or ([1], 1, b"\x00"), value or ([0, 1], 1, b"\x00")):
        out += lengths if isinstance(lengths, bytes) else ref_table(lengths)
        out += ref_varint(n_bits) + data
    return out + tail


def test_sparse_bytes_helper_makes_a_valid_payload():
    assert decode_sparse_layer(sparse_bytes(), 3)[0].tolist() == [1, 0, 0]


@pytest.mark.parametrize("payload, length, problem", [
    (b"", 4, "gap width needs 1 bytes"),
    (sparse_bytes(gap_bits=17), 3, "gap width 17"),
    (sparse_bytes(dtype=3), 3, "codebook dtype code 3"),
    (sparse_bytes(codebook=[np.inf]), 3, "not finite"),
    (sparse_bytes(dtype=2, codebook=[np.nan]), 3, "not finite"),
    (sparse_bytes()[:4], 3, "codebook needs 4 bytes"),
    (sparse_bytes(entries=4), 3, "entry count 4 is over the limit 3"),
    (sparse_bytes(entries=2), 3, "symbols cannot fit"),
    (sparse_bytes(gap=([1, 1, 1, 1, 1], 1, b"\x00")), 9, "gap code count 5 is over"),
    (sparse_bytes(gap=([0, 0, 0, 0, 1], 1, b"\x00")), 9, "gap code lengths: symbol 4 is not below 4"),
    (sparse_bytes(gap=(b"\x02\x80", 1, b"\x00")), 9, "gap code lengths: symbol 1024 is not"),
    (sparse_bytes()[:8] + b"\x03\x80", 9, "gap code lengths: damaged or truncated"),
    (sparse_bytes(gap=(b"\x01\x00\x00\x00", 1, b"\x00")), 9, "gap code lengths: damaged or truncated"),
    (sparse_bytes(gap=([1, 1, 1], 1, b"\x00")), 9, "Kraft"),
    (sparse_bytes(gap=([1], 100, b"\x00")), 9, "bit count 100 is over"),
    (sparse_bytes(gap=([1], 2, b"\x00")), 9, "left over"),
    (sparse_bytes(value=([0, 1, 1], 1, b"\x00")), 9, "value code lengths: symbol 2 is not below 2"),
    (sparse_bytes(gap=([0, 0, 0, 1], 1, b"\x00")), 3, "relative index.*past the layer length"),
    (sparse_bytes(tail=b"\x00"), 3, "1 stray bytes"),
    (bytes([0, 4]) + ref_varint(1) + b"\0\0\x80\x3f", 2, "marks a dense layer payload"),
])
def test_crafted_sparse_payloads(payload, length, problem):
    with pytest.raises(FormatError, match=f"sparse layer payload: .*({problem})"):
        decode_sparse_layer(payload, length)
    # inside a valid file the error can be located in it
    sections = unpack_container(pack_container([("HEAD", b""), ("LAYR", payload)]), "m.npdc")
    try:
        decode_sparse_layer(sections[1][1], length)
    except FormatError as e:
        located = e.at("m.npdc", 1, "LAYR")
    assert str(located).startswith("m.npdc: section 1 'LAYR': sparse layer payload: ")
    assert isinstance(located, UserError) and "\n" not in str(located)


def test_crafted_dense_payloads():
    good = encode_dense_layer(np.array([0, 1, 2, 1]), [1.0, 2.0])
    assert decode_dense_layer(good, 4)[0].tolist() == [0, 1, 2, 1]
    with pytest.raises(FormatError, match="symbols cannot fit"):
        decode_dense_layer(good, 1000)  # a caller's length far beyond the stream
    with pytest.raises(FormatError, match="left over|trailing"):
        decode_dense_layer(good, 3)
    with pytest.raises(FormatError, match="marks a sparse layer"):
        decode_dense_layer(encode_sparse_layer(np.array([1]), [1.0], 3), 1)
    with pytest.raises(ValueError):
        decode_dense_layer(good, -1)


def mutations(payload):
    return st.lists(st.tuples(st.integers(0, max(len(payload) - 1, 0)), st.integers(1, 255)),
                    min_size=1, max_size=4)


FUZZ_IDX = make_layer(np.random.default_rng(9), 400, 0.8, 20)
FUZZ = {"sparse": encode_sparse_layer(FUZZ_IDX, np.linspace(-1, 1, 20), 3, "float16"),
        "dense": encode_dense_layer(FUZZ_IDX[:100], np.linspace(-1, 1, 20)),
        "raw": encode_raw({"a": np.ones((2, 3)), "b": np.zeros(4)}, "float16"),
        "head": encode_header({"layers": [{"name": "conv1", "shape": [16, 3, 3, 3]}]})}
DECODERS = {"sparse": lambda p: decode_sparse_layer(p, 400),
            "dense": lambda p: decode_dense_layer(p, 100), "raw": decode_raw,
            "head": decode_header}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(FUZZ)), st.data())
def test_mutated_payloads_decode_or_raise_format_error(kind, data):
    payload = bytearray(FUZZ[kind])
    for i, x in data.draw(mutations(payload)):
        payload[i] ^= x
    cut = data.draw(st.integers(0, len(payload)))
    for p in (bytes(payload), bytes(payload[:cut])):
        try:
            DECODERS[kind](p)
        except FormatError:
            pass


# ---- raw parameters and header ---------------------------------------------------------------

@HYPO
@given(st.integers(0, 2**31), st.sampled_from(["float16", "float32"]))
def test_raw_round_trip(seed, dtype):
    rng = np.random.default_rng(seed)
    arrays = {f"layer{i}.{k}": rng.standard_normal(tuple(rng.integers(0, 4, rng.integers(0, 4))))
              for i, k in enumerate(["b", "gamma", "running_var", "ä→"])}
    back = decode_raw(encode_raw(arrays, dtype))
    assert list(back) == list(arrays)
    for name, x in arrays.items():
        assert back[name].dtype == np.float32 and back[name].shape == x.shape
        assert np.array_equal(back[name], x.astype(dtype).astype(np.float32))


def test_raw_layout():
    payload = encode_raw({"b": np.array([[1.5, -2.0]])}, "float32")
    assert payload == (b"\x04\x01" + b"\x01b" + b"\x02\x01\x02"
                       + np.array([1.5, -2.0], "<f4").tobytes())
    assert encode_raw({}, "float16") == b"\x02\x00"
    assert decode_raw(b"\x04\x01\x01s\x00" + np.float32(3).tobytes())["s"].shape == ()


@pytest.mark.parametrize("payload, problem", [
    (b"\x04\x02\x01a\x00\x00\x00\x80\x3f\x01a\x00\x00\x00\x80\x3f", "appears twice"),
    (b"\x04\x01\x01\xff\x00\x00\x00\x80\x3f", "not UTF-8|utf-8"),
    (b"\x04\x01\x01a\x02" + ref_varint(2**40) * 2, "needs .* bytes"),
    # empty, but numpy could not even describe the shape (found by the fuzz test above)
    (b"\x04\x01\x01a\x03" + ref_varint(2**40) + b"\x00" + ref_varint(2**40), "larger than any parameter"),
    (b"\x04\x01\x01a\x21", "ndim 33 is over"),
    (b"\x03\x00", "dtype code 3"),
    (b"\x04\x00\x00", "stray"),
    (b"\x02\x01\x01a\x01\x01\x00\x7c", "not finite"),
])
def test_crafted_raw_payloads(payload, problem):
    with pytest.raises(FormatError, match=f"raw parameters payload: .*({problem})"):
        decode_raw(payload)


def test_raw_refuses_values_it_cannot_store():
    with pytest.raises(ValueError, match="finite"):
        encode_raw({"v": np.array([1e6])}, "float16")
    with pytest.raises(ValueError, match="finite"):
        encode_raw({"v": np.array([np.nan])})


def test_header_round_trip_and_layout():
    obj = {"arch": {"name": "resnet18", "width": np.int64(64)}, "mean": np.array([0.5, 0.25]),
           "layers": [{"name": "conv1", "shape": [64, 3, 7, 7], "gap_bits": 5}], "ü": True}
    payload = encode_header(obj)
    expected = {"arch": {"name": "resnet18", "width": 64}, "mean": [0.5, 0.25],
                "layers": [{"name": "conv1", "shape": [64, 3, 7, 7], "gap_bits": 5}], "ü": True}
    assert decode_header(payload) == expected
    assert zlib.decompress(payload) == ('{"arch":{"name":"resnet18","width":64},"mean":[0.5,0.25],'
                                        '"layers":[{"name":"conv1","shape":[64,3,7,7],'
                                        '"gap_bits":5}],"ü":true}').encode("utf-8")
    with pytest.raises(ValueError):
        encode_header({"x": float("nan")})


@pytest.mark.parametrize("payload, problem", [
    (b"not zlib", "zlib|incorrect header"), (zlib.compress(b"[1, 2]"), "not an object"),
    (zlib.compress(b"{bad"), "Expecting"), (zlib.compress(b"{}") + b"x", "stray"),
    (zlib.compress(b'{"a": 1}')[:-3], "truncated"), (zlib.compress(b"\xff{}"), "utf-8|decode"),
    (zlib.compress(b'{"a": NaN}'), "NaN"), (zlib.compress(b"[" * 100000), "recursion|Expecting"),
])
def test_crafted_headers(payload, problem):
    with pytest.raises(FormatError, match=f"header payload: .*({problem})"):
        decode_header(payload)


def test_header_inflation_is_bounded(monkeypatch):
    monkeypatch.setattr(H, "MAX_HEADER_JSON", 1000)
    with pytest.raises(FormatError, match="inflates past 1000"):
        decode_header(zlib.compress(b'{"a":"' + b" " * 5000 + b'"}'))


# ---- per-layer bit counts --------------------------------------------------------------------

@HYPO
@given(sparse_layers())
def test_layer_bit_stats_match_independent_counts(case):
    idx, codebook, gap_bits, dtype = case
    idx = idx[:1500]
    k = codebook.size
    stats = layer_bit_stats(idx, k, gap_bits, dtype)
    gaps, values = ref_entries(idx.tolist(), gap_bits)
    entries = len(gaps)
    assert stats["positions"] == idx.size
    assert stats["nonzero"] == sum(1 for v in idx.tolist() if v)
    assert stats["entries"] == entries and stats["fillers"] == values.count(0)
    assert stats["value_bits"] == entries * math.ceil(math.log2(k + 1))
    assert stats["index_bits"] == entries * gap_bits
    assert stats["huffman_value_bits"] == huffman_cost(values)
    assert stats["huffman_index_bits"] == huffman_cost(gaps)
    assert stats["codebook_bits"] == k * (16 if dtype == "float16" else 32)
    assert stats["dense_bits"] == 32 * idx.size
    r = RefReader(encode_sparse_layer(idx, codebook, gap_bits, dtype))
    r.u8(), r.codebook()
    r.stream(r.varint()), r.stream(entries)
    assert stats["code_table_bits"] == 8 * r.table_bytes


def test_layer_bit_stats_known_case():
    idx = [0, 0, 0, 0, 0, 2, 1, 0, 2]  # b = 2: filler (3, 0), then (1, 2), (0, 1), (1, 2)
    stats = layer_bit_stats(np.array(idx), 2, 2)
    assert (stats["nonzero"], stats["fillers"], stats["entries"]) == (3, 1, 4)
    assert stats["value_bits"] == 4 * 2 and stats["index_bits"] == 4 * 2
    assert stats["huffman_value_bits"] == 1 * 2 + 1 * 2 + 2 * 1  # counts 0:1 1:1 2:2
    assert stats["huffman_index_bits"] == 1 * 2 + 2 * 1 + 1 * 2  # counts 0:1 1:2 3:1


def test_examples_in_docs_format_md():
    """The hex examples of docs/format.md, byte for byte."""
    hexes = lambda s: bytes.fromhex(s)  # noqa: E731
    sparse = encode_sparse_layer(np.array([0, 3, 0, 0, 0, 0, 1, 2, 0, 3]), [0.5, -1, 2], 2,
                                 "float16")
    assert sparse == hexes("02 02 03 00 38 00 bc 00 40 05 03 8c 10 80 08 74 04 8c 63 10 0a c6 c0")
    assert encode_dense_layer(np.array([0, 1, 1, 2]), [0.5, -1], "float16") == hexes(
        "00 02 02 00 38 00 bc 03 8c 22 06 8c")
    assert encode_raw({"fc.b": np.array([1.0, -2.0])}, "float16") == hexes(
        "02 01 04 66 63 2e 62 01 02 00 3c 00 c0")
    assert pack_container([])[-12:] == hexes("45 4e 44 20 00 00 00 00 ba 7a 63 45")


@pytest.mark.parametrize("density", [0.002, 0.05, 0.3, 0.9])
def test_chosen_gap_width_gives_the_smallest_payload(density):
    from npdc.codec.payload import choose_gap_bits

    rng = np.random.default_rng(int(density * 1000))
    indices = np.where(rng.random(20000) < density, rng.integers(1, 16, 20000), 0)
    sizes = {b: len(encode_sparse_layer(indices, np.linspace(-1, 1, 15), b)) for b in range(1, 17)}
    chosen = choose_gap_bits(indices, 15)
    assert sizes[chosen] <= min(sizes.values()) + 4  # the cost ignores byte padding of the streams
    assert chosen == choose_gap_bits(indices, 15)


@HYPO
@given(st.dictionaries(st.integers(0, 65535), st.integers(1, 16), max_size=60))
def test_code_length_tables_round_trip(used):
    """Any set of used symbols below 2^16 with lengths 1..16, stored and read back exactly; the
    table costs 5 bits a symbol when the alphabet is full."""
    lengths = np.zeros(max(used, default=-1) + 1, np.int64)
    lengths[list(used)] = list(used.values())
    payload = P.length_table(lengths) + b"\xff"
    assert payload[:-1] == ref_table(lengths.tolist())
    r = P.Reader(payload, "test")
    assert r.length_table("t", 1 << 16).tolist() == lengths.tolist()
    assert r.left() == 1
    full = np.full(40, 3)
    assert P.table_bits(full) == 8 * (1 + 5 * 40 // 8)
