"""A whole model as a `.npdc` file (docs/format.md, "Model files"): what the sections hold.

HEAD: JSON with the architecture spec, the raw-parameter dtype and, per quantized layer, its path,
shape and kind; one LAYR per quantized layer in header order (sparse: relative indices + value
indices, both Huffman-coded; dense: value indices only); PARM: every other parameter and buffer,
and the input normalisation, as float16 or float32 (with float16 chosen, a second PARM keeps in
float32 the arrays float16 cannot hold); END. Reading checks the file, rebuilds the
net from its spec and checks every name and shape, so a file can never load into a net it does
not fit.
"""

from pathlib import Path

import numpy as np

from npdc.codec.container import (FormatError, decode_header, decode_layer, decode_raw, dequantize,
                                  encode_dense_layer, encode_header, encode_raw, encode_sparse_layer,
                                  read_container, write_container)
from npdc.engine.resnet import build_net
from npdc.errors import UserError

MAX_LAYER_WEIGHTS = 1 << 28  # a header may not ask a decoder for more positions than this


def model_sections(net, quantized, raw_dtype="float32", codebook_dtype="float32"):
    """Sections of the file for `net`, whose weights at the paths of `quantized` are replaced by
    their codes: quantized[path] = (indices over all positions, 0 = zero, codebook, gap_bits or
    None for a dense layer)."""
    state = net.state_dict()
    layers, payloads = [], []
    for path, (indices, codebook, gap_bits) in quantized.items():
        if path not in state:
            raise UserError(f"no parameter {path} to quantize")
        indices = np.asarray(indices).reshape(-1)
        if indices.size != state[path].size:
            raise UserError(f"{path}: {indices.size} indices for {state[path].size} weights")
        if gap_bits:
            payload = encode_sparse_layer(indices, codebook, gap_bits, codebook_dtype)
        else:
            payload = encode_dense_layer(indices, codebook, codebook_dtype)
        layers.append({"path": path, "shape": list(state[path].shape),
                       "kind": "sparse" if gap_bits else "dense"})
        payloads.append(payload)
    raw = {k: v for k, v in state.items() if k not in quantized}
    header = {"spec": net.spec, "layers": layers, "raw_dtype": raw_dtype}
    groups = {raw_dtype: raw}
    if raw_dtype == "float16":  # arrays float16 cannot hold (|x| > 65504) stay float32
        wide = {k: v for k, v in raw.items() if np.abs(v).max(initial=0) > np.finfo(np.float16).max}
        groups = {"float16": {k: v for k, v in raw.items() if k not in wide}, "float32": wide}
    return ([("HEAD", encode_header(header))] + [("LAYR", p) for p in payloads] +
            [("PARM", encode_raw(arrays, dtype)) for dtype, arrays in groups.items() if arrays])


def save_compressed(path, net, quantized, raw_dtype="float32", codebook_dtype="float32"):
    """Write the .npdc file atomically; returns its size in bytes."""
    return write_container(path, model_sections(net, quantized, raw_dtype, codebook_dtype))


def load_compressed(path):
    """(net with dequantized weights, {path: (indices, codebook)}) from a .npdc file."""
    sections = read_container(path)
    name = Path(path).name
    tags = [t for t, _ in sections]
    if not tags or tags[0] != "HEAD":
        raise FormatError("the first section must be HEAD", file=name, index=0, tag=tags[0] if tags else None)
    try:
        header = decode_header(sections[0][1])
        spec, layers = header["spec"], header["layers"]
        shapes = [tuple(int(d) for d in layer["shape"]) for layer in layers]
    except FormatError as e:
        raise e.at(file=name, index=0, tag="HEAD") from None
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"header lacks or garbles {e}", file=name, index=0, tag="HEAD") from None
    n_parm = len(tags) - 1 - len(layers)
    if n_parm < 1 or tags[1:] != ["LAYR"] * len(layers) + ["PARM"] * n_parm:
        raise FormatError(f"expected {len(layers)} LAYR sections, then PARM sections, after HEAD; "
                          f"found {' '.join(tags[1:])}", file=name)
    net = build_net(spec)
    state = {}
    codes = {}
    for i, (layer, shape) in enumerate(zip(layers, shapes), start=1):
        size = int(np.prod(shape))
        if size > MAX_LAYER_WEIGHTS:
            raise FormatError(f"layer {layer.get('path')} claims {size} weights", file=name, index=i, tag="LAYR")
        try:
            indices, codebook = decode_layer(sections[i][1], size)
        except FormatError as e:
            raise e.at(file=name, index=i, tag="LAYR") from None
        state[layer["path"]] = dequantize(indices, codebook, shape)
        codes[layer["path"]] = (indices, codebook)
    for i in range(1 + len(layers), len(sections)):
        try:
            state.update(decode_raw(sections[i][1]))
        except FormatError as e:
            raise e.at(file=name, index=i, tag="PARM") from None
    try:
        net.load_state_dict(state)
    except UserError as e:
        raise UserError(f"{name}: {e}") from None
    return net, codes
