"""Tests for npdc.io.safe_pickle: data comes back as it was pickled, code never runs."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.errors import UserError
from npdc.io.safe_pickle import restricted_loads
from tests.io.torch_fakes import Payload, payloads


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_and_containers_round_trip(protocol):
    """Arrays (any byte order, C or Fortran order), NumPy scalars, sets and OrderedDicts come
    back equal, with native byte order."""
    from collections import OrderedDict

    obj = OrderedDict(a=np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2],
                      f=np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                      u=np.array([[0, 255]], np.uint8), s=np.float64(0.25), i=np.int64(-3),
                      rest=[{1, 2}, frozenset({"x"}), (b"raw", "text", None, True, 1.5)])
    back = restricted_loads(pickle.dumps(obj, protocol=protocol), "t")
    assert type(back) is OrderedDict and list(back) == list(obj)
    for key in ("a", "f", "u"):
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].dtype == obj[key].dtype.newbyteorder("=")
    assert back["f"].flags.f_contiguous
    assert back["s"] == 0.25 and back["i"] == -3
    assert back["rest"] == obj["rest"]


def test_cycles_survive():
    a = [1]
    a.append(a)
    back = restricted_loads(pickle.dumps(a, protocol=2), "t")
    assert back[1] is back


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_callables_are_refused_by_name_and_not_run(kind, protocol, tmp_path):
    marker = tmp_path / "marker"
    data = pickle.dumps([1, payloads(marker)[kind]], protocol=protocol)
    with pytest.raises(UserError, match="refused to load global") as e:
        restricted_loads(data, "evil.pkl")
    assert kind.split(".")[1] in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [np.array([None, 1], dtype=object), np.array(["ab"]),
                                 np.zeros(2, dtype=[("x", "f4")])])
def test_non_numeric_arrays_are_refused(obj):
    """Object, string and structured dtypes are not numbers: refused."""
    with pytest.raises(UserError, match="dtype"):
        restricted_loads(pickle.dumps(obj, protocol=2), "t")


def test_codecs_encode_only_latin1():
    import codecs

    data = pickle.dumps(Payload(codecs.encode, ("abc", "rot13")), protocol=2)
    with pytest.raises(UserError, match="latin-1"):
        restricted_loads(data, "t")


def test_array_with_wrong_byte_count_is_refused():
    """The raw bytes of an array must fill its shape exactly."""
    data = pickle.dumps(np.arange(4, dtype=np.int32), protocol=2)
    # shrink the stored shape (4,) to (3,): BININT1 4 is the only b'K\x04' in this pickle
    assert data.count(b"K\x04") == 1
    with pytest.raises(UserError, match="needs 12"):
        restricted_loads(data.replace(b"K\x04", b"K\x03"), "t")


def test_deep_nesting_is_a_user_error():
    data = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."
    with pytest.raises(UserError, match="t:"):
        restricted_loads(data, "t")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_load_or_give_user_error(raw):
    try:
        restricted_loads(b"\x80\x02" + raw, "fuzz")
    except UserError:
        pass


@pytest.mark.parametrize("opcode,width", [(pickle.BINPUT, 1), (pickle.LONG_BINPUT, 4)])
def test_memo_slot_beyond_the_opcodes_is_refused(opcode, width):
    """A damaged PUT index would make the C unpickler zero-fill a huge memo; it is refused first."""
    good = pickle.dumps([[1, 2], "x"], protocol=2)
    first_put = good.index(pickle.BINPUT)
    slot = (200).to_bytes(width, "little")
    bad = good[:first_put] + opcode + slot + good[first_put + 2:]
    with pytest.raises(UserError, match="memo slot 200"):
        restricted_loads(bad, "bad.pkl")
    assert restricted_loads(good, "good.pkl") == [[1, 2], "x"]
