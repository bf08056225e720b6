"""The header payload of a .npdc file: one JSON object, compact UTF-8, zlib-compressed.

JSON keeps the header readable by any tool and lets a model file carry whatever its writer needs
(npdc.codec.model lists the keys it uses); zlib at level 9 keeps it small. Reading is bounded: at
most MAX_HEADER_JSON bytes are inflated, and before the JSON is parsed its values are counted (the
`{`, `[`, `,` and `:` bytes bound how many Python objects parsing makes) and at most
MAX_HEADER_VALUES are accepted, so neither the text nor what parsing makes of it can exhaust
memory: 65 KB of `[{},{},...]` would otherwise parse into gigabytes of empty dicts.
"""

import json
import zlib

import numpy as np

from npdc.codec.errors import FormatError

MAX_HEADER_JSON = 1 << 24  # inflated header size a reader accepts
MAX_HEADER_VALUES = 1 << 18  # JSON values (counted by their separators) a reader parses
VALUE_BYTES = 128  # what one parsed value may cost in memory, dict or list slot included


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


def count_values(text):
    """An upper bound on the JSON values of `text` (bytes): one more than its separators and
    openers, counted without parsing (separators inside strings only raise the bound)."""
    return 1 + sum(text.count(c) for c in (b"{", b"[", b",", b":"))


def decode_header(payload, budget=None):
    """The dict of encode_header's payload; at most MAX_HEADER_JSON bytes are inflated and at most
    MAX_HEADER_VALUES values parsed. With a npdc.limits.Budget, the inflated text and the parsed
    values are taken from it first."""
    inflate = zlib.decompressobj()
    limit = MAX_HEADER_JSON if budget is None else min(MAX_HEADER_JSON, budget.left)
    try:
        text = inflate.decompress(bytes(payload), limit)
        if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
            raise ValueError("the zlib stream is truncated, has stray bytes after it or "
                             f"inflates past {limit} bytes")
        values = count_values(text)
        if values > MAX_HEADER_VALUES:
            raise ValueError(f"the JSON holds up to {values:,} values, more than the "
                             f"{MAX_HEADER_VALUES:,} a header may")
        if budget is not None:
            budget.take(len(text) + VALUE_BYTES * values, "the header JSON")
        obj = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
        if not isinstance(obj, dict):
            raise ValueError(f"the JSON is a {type(obj).__name__}, not an object")
    except (zlib.error, ValueError, RecursionError) as e:  # also UnicodeDecodeError, JSON errors
        raise FormatError(e, payload="header") from None
    return obj
