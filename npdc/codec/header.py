"""The header payload of a .npdc file: one JSON object, compact UTF-8, zlib-compressed.

JSON keeps the header readable by any tool and lets a model file carry whatever its writer needs
(npdc.codec.model lists the keys it uses); zlib at level 9 keeps it small. Reading is bounded: at
most MAX_HEADER_JSON bytes are inflated, so a crafted header cannot exhaust memory.
"""

import json
import zlib

import numpy as np

from npdc.codec.errors import FormatError

MAX_HEADER_JSON = 1 << 26  # inflated header size a reader accepts


def _json_default(x):
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def encode_header(obj):
    """Payload of the header: the dict as compact UTF-8 JSON (no NaN), zlib level 9. numpy
    scalars and arrays are written as numbers and lists."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_json_default)
    return zlib.compress(text.encode("utf-8"), 9)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def decode_header(payload):
    """The dict of encode_header's payload; at most MAX_HEADER_JSON bytes are inflated."""
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(bytes(payload), MAX_HEADER_JSON)
        if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
            raise ValueError("the zlib stream is truncated, has stray bytes after it or "
                             f"inflates past {MAX_HEADER_JSON} bytes")
        obj = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
        if not isinstance(obj, dict):
            raise ValueError(f"the JSON is a {type(obj).__name__}, not an object")
    except (zlib.error, ValueError, RecursionError) as e:  # also UnicodeDecodeError, JSON errors
        raise FormatError(e, payload="header") from None
    return obj
