"""A whole model as a `.npdc` file (docs/format.md, "Model files"): what the sections hold.

HEAD: JSON with the architecture spec, the raw-parameter dtype, the conv plan if the model was
tuned (`conv_plan`, {conv layer: primitive}) and, per quantized layer, its path, shape and kind;
one LAYR per quantized layer in header order (sparse: relative indices + value indices, both
Huffman-coded; dense: value indices only); PARM: every other parameter and buffer,
and the input normalisation, as float16 or float32 (with float16 chosen, a second PARM keeps in
float32 the arrays float16 cannot hold); INT8, when int8 inference was calibrated at compression
(version 3): each activation's scale and zero point; END. Reading checks the file, rebuilds the
net from its spec and checks every name and shape, so a file can never load into a net it does
not fit.

Batch norms are stored folded: in eval mode a BN is the per-channel affine map
y = scale * x + shift with scale = gamma / sqrt(running_var + eps), shift = beta - running_mean *
scale (Ioffe & Szegedy 2015, section 3.1), so two vectors carry what four did. The file keeps them
as `gamma` and `beta`, drops the running statistics and lists the folded layers under the header
key `folded_bn`; a reader restores running_mean = 0 and running_var = 1 - eps, which computes the
same map up to float rounding. The scale is not multiplied into the preceding convolution's weights
here because that would give every output channel its own codebook; the runtime does it after
decoding.

read_model_file is the one reader of that layout: loading, the report and the runtime's streamed
weights all take a file's sections from it, checked the same way.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from npdc.codec.container import read_container, write_container
from npdc.codec.errors import FormatError
from npdc.codec.header import decode_header, encode_header
from npdc.codec.payload import (choose_gap_bits, decode_layer, decode_raw, decode_scales, dequantize,
                                encode_dense_layer, encode_raw, encode_scales, encode_sparse_layer)
from npdc.compress.quantize import QuantizedLayer
from npdc.engine.conv_plan import apply_plan, net_plan
from npdc.engine.layers import BatchNorm2d
from npdc.engine.layers.batchnorm import inference_affine
from npdc.engine.resnet import build_net, check_spec, spec_cost
from npdc.errors import UserError
from npdc.limits import Budget

MAX_LAYER_WEIGHTS = 1 << 28  # a header may not ask a decoder for more positions than this
MAX_DIM = 1 << 31  # a layer shape's dimensions are below this
INDEX_BYTES = 4  # taken from the Budget per claimed weight: its float32 once decoded (see read_model_file)


def model_sections(net, quantized, raw_dtype="float32", codebook_dtype="float32", scales=None):
    """Sections of the file for `net`, whose weights at the paths of `quantized` ({path:
    npdc.compress.quantize.QuantizedLayer}) are replaced by their codes. A pruned layer (`sparse`)
    is stored by relative indices, with the gap width that codes smallest (choose_gap_bits),
    unless coding every position (zeros as index 0) is smaller, as it is for a lightly pruned
    layer; a dense layer is always stored dense. `scales` ({activation: (scale, zero point)},
    from int8 calibration) become the INT8 section."""
    state = net.state_dict()
    layers, payloads = [], []
    for path, q in quantized.items():
        indices, codebook = q.indices, q.codebook
        if path not in state:
            raise UserError(f"no parameter {path} to quantize")
        indices = np.asarray(indices).reshape(-1)
        if indices.size != state[path].size:
            raise UserError(f"{path}: {indices.size} indices for {state[path].size} weights")
        payload = encode_dense_layer(indices, codebook, codebook_dtype)
        kind = "dense"
        if q.sparse:
            relative = encode_sparse_layer(indices, codebook, choose_gap_bits(indices, len(codebook)),
                                           codebook_dtype)
            if len(relative) < len(payload):
                payload, kind = relative, "sparse"
        layers.append({"path": path, "shape": list(state[path].shape), "kind": kind})
        payloads.append(payload)
    raw = {k: v for k, v in state.items() if k not in quantized}
    folded = fold_batch_norms(net, raw)
    header = {"spec": net.spec, "layers": layers, "raw_dtype": raw_dtype, "folded_bn": folded}
    plan = net_plan(net)
    if plan:  # files of untuned models stay as they were
        header["conv_plan"] = plan
    groups = {raw_dtype: raw}
    if raw_dtype == "float16":  # arrays float16 cannot hold (|x| > 65504) stay float32
        wide = {k: v for k, v in raw.items() if np.abs(v).max(initial=0) > np.finfo(np.float16).max}
        groups = {"float16": {k: v for k, v in raw.items() if k not in wide}, "float32": wide}
    int8 = [("INT8", encode_scales(scales))] if scales else []
    return ([("HEAD", encode_header(header))] + [("LAYR", p) for p in payloads] +
            [("PARM", encode_raw(arrays, dtype)) for dtype, arrays in groups.items() if arrays] + int8)


def fold_batch_norms(net, raw):
    """Replace each BN's four arrays in `raw` by its eval-mode scale and shift (as gamma and beta);
    returns the names of the folded layers."""
    folded = [name for name, layer in net.layers.items() if isinstance(layer, BatchNorm2d)]
    for name in folded:
        mean, var = raw.pop(f"{name}.running_mean"), raw.pop(f"{name}.running_var")
        raw[f"{name}.gamma"], raw[f"{name}.beta"] = inference_affine(
            raw[f"{name}.gamma"], raw[f"{name}.beta"], mean, var, net.layers[name].eps)
    return folded


def _unfold_batch_norms(net, names, state):
    """Running statistics that make the folded gamma and beta compute the stored affine map."""
    for name in names:
        layer = net.layers.get(name) if isinstance(name, str) else None
        if not isinstance(layer, BatchNorm2d):
            raise UserError(f"folded_bn names {name!r}, which is not a batch norm of this architecture")
        channels = layer.params["gamma"].shape
        state[f"{name}.running_mean"] = np.zeros(channels, np.float32)
        state[f"{name}.running_var"] = np.full(channels, 1.0 - layer.eps, np.float32)


def save_compressed(path, net, quantized, raw_dtype="float32", codebook_dtype="float32", scales=None):
    """Write the .npdc file atomically; returns its size in bytes."""
    return write_container(path, model_sections(net, quantized, raw_dtype, codebook_dtype, scales))


def stored_scales(source, net):
    """The int8 activation scales a model file stores ({activation: (scale, zero point)}), or
    None when it has no INT8 section; every name must be the input or a node of `net`."""
    model = read_model_file(source)
    if model.int8 is None:
        return None
    index, payload = model.int8
    names = {"input"} | {name for name, _, _ in net.nodes}
    try:
        scales = decode_scales(payload, len(names))
    except FormatError as e:
        raise e.at(file=model.name, index=index, tag="INT8") from None
    unknown = sorted(set(scales) - names)
    if unknown:
        raise FormatError(f"int8 scales for {unknown[0][:60]!r}, which is no activation of the net",
                          file=model.name, index=index, tag="INT8")
    return scales


def load_compressed(path):
    """(net with dequantized weights, {path: QuantizedLayer}) from a .npdc file; a layer with
    pruned positions comes back with sparse = True, however the file stored it."""
    model = read_model_file(path)
    name = model.name
    net = build_net(model.header["spec"])
    state = {}
    codes = {}
    params = net.state_dict()
    for layer in model.layers:  # every claim matches the net before anything is decoded
        if layer.path not in params:
            raise FormatError(f"layer {layer.path[:60]!r} is not a parameter of {net.spec['arch']}",
                              file=name, index=layer.index, tag="LAYR")
        if tuple(params[layer.path].shape) != layer.shape:
            raise FormatError(f"layer {layer.path} has shape {list(layer.shape)}, the net's parameter "
                              f"{list(params[layer.path].shape)}", file=name, index=layer.index, tag="LAYR")
    del params
    for layer in model.layers:
        indices, codebook = model.decode(layer)
        state[layer.path] = dequantize(indices, codebook, layer.shape)
        codes[layer.path] = QuantizedLayer(indices, codebook, bool((indices == 0).any()))
    state.update(model.raw())
    header = model.header
    try:
        folded = header.get("folded_bn", [])
        if not isinstance(folded, list):
            raise UserError("the header's folded_bn is not a list")
        _unfold_batch_norms(net, folded, state)
        net.load_state_dict(state)
        plan = header.get("conv_plan", {})
        if not isinstance(plan, dict):
            raise UserError("the header's conv_plan is not an object")
        apply_plan(net, plan)
    except UserError as e:
        raise UserError(f"{name}: {e}") from None
    return net, codes


# -- the section layout --------------------------------------------------------------------------
class LayerSection(NamedTuple):
    """One quantized layer of a model file: its parameter path and shape (from the header), the
    index of its LAYR section and that section's payload, still coded."""
    path: str
    shape: tuple
    index: int
    payload: bytes

    @property
    def size(self):
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelSections:
    """A model file's sections with their layout checked (read_model_file): the decoded header,
    one LayerSection per header layer in file order, the PARM sections as (index, payload)."""
    name: str  # how errors name the file: its file name, or "<sections>"
    path: Path  # the file read, None for sections handed in
    sections: list  # every (tag, payload) of the file, as read
    header: dict
    layers: list
    params: list
    int8: tuple = None  # (index, payload) of the INT8 section (int8 activation scales), if any

    @property
    def payloads(self):
        """{parameter path: LAYR payload} of the quantized layers."""
        return {layer.path: layer.payload for layer in self.layers}

    def decode(self, layer):
        """(indices, float32 codebook) of a LayerSection; a bad payload's FormatError names the
        file and the section."""
        try:
            return decode_layer(layer.payload, layer.size)
        except FormatError as e:
            raise e.at(file=self.name, index=layer.index, tag="LAYR") from None

    def raw(self):
        """{name: float32 array} of every PARM section."""
        arrays = {}
        for index, payload in self.params:
            try:
                arrays.update(decode_raw(payload))
            except FormatError as e:
                raise e.at(file=self.name, index=index, tag="PARM") from None
        return arrays


def read_model_file(source):
    """The ModelSections of a model file: `source` is its path, the list of (tag, payload) it holds
    (named "<sections>" in errors) or a ModelSections (returned as it is).

    Checks the layout once for every reader: HEAD first, holding a spec (npdc.engine.resnet.
    check_spec) and a list of layers each with a path and a shape; then exactly one LAYR per listed
    layer, in that order; then one or more PARM. Sections whose tag starts with a lower-case letter
    are optional (docs/format.md, "Unknown tags") and skipped. No layer may claim more than
    MAX_LAYER_WEIGHTS weights, and the file's npdc.limits.Budget must hold the parsed header, the
    network its spec declares (spec_cost, worked out without building it) and every layer's
    decoded positions (INDEX_BYTES each: the float32 a weight becomes, not the transient int64
    index, so that a real file decoding to 35-50x its size still fits the default ratio of 100),
    so a crafted header cannot make a reader allocate them. Anything else is a
    one-line FormatError naming the file and, where there is one, the section. Payloads are not
    decoded here (ModelSections.decode and .raw do)."""
    if isinstance(source, ModelSections):
        return source
    path = Path(source) if isinstance(source, (str, Path)) else None
    sections = read_container(path) if path else list(source)
    name = path.name if path else "<sections>"
    budget = Budget(name, path.stat().st_size if path else sum(len(p) for _, p in sections))
    kept = [i for i, (t, _) in enumerate(sections) if not t[:1].islower()]
    tags = [sections[i][0] for i in kept]
    if not tags or tags[0] != "HEAD":
        raise FormatError("the first section must be HEAD", file=name, index=0, tag=tags[0] if tags else None)
    try:
        header = decode_header(sections[kept[0]][1], budget)
        entries = [_layer_entry(e) for e in _listed(header)]
        if len({p for p, _ in entries}) != len(entries):
            raise ValueError("a layer path is listed twice")
        check_spec(header["spec"])
    except FormatError as e:
        raise e.at(file=name, index=kept[0], tag="HEAD") from None
    except UserError as e:
        raise FormatError(e, file=name, index=kept[0], tag="HEAD") from None
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"header lacks or garbles {e}", file=name, index=kept[0], tag="HEAD") from None
    int8 = None
    if tags[-1] == "INT8":
        int8 = (kept[-1], sections[kept[-1]][1])
        tags, kept = tags[:-1], kept[:-1]
    n_parm = len(tags) - 1 - len(entries)
    if n_parm < 1 or tags[1:] != ["LAYR"] * len(entries) + ["PARM"] * n_parm:
        raise FormatError(f"expected {len(entries)} LAYR sections, then PARM sections, then an "
                          f"optional INT8, after HEAD; found {' '.join(tags[1:])[:200]}", file=name)
    layers = [LayerSection(p, shape, kept[i], sections[kept[i]][1]) for i, (p, shape) in enumerate(entries, start=1)]
    budget.take(spec_cost(header["spec"]), f"the {header['spec']['arch']} its header declares")
    for layer in layers:
        if layer.size > MAX_LAYER_WEIGHTS:
            raise FormatError(f"layer {layer.path} claims {layer.size} weights", file=name, index=layer.index,
                              tag="LAYR")
        budget.take(INDEX_BYTES * layer.size, f"layer {layer.path[:60]} ({layer.size:,} weights)")
    params = [(i, sections[i][1]) for i in kept[1 + len(layers):]]
    return ModelSections(name, path, sections, header, layers, params, int8)


def _listed(header):
    """The header's layer list, after checking that it has a spec."""
    if "spec" not in header:
        raise KeyError("spec")
    if not isinstance(header["layers"], list):
        raise TypeError("'layers' is not a list")
    return header["layers"]


def _layer_entry(entry):
    """(path, shape) of one entry of the header's layer list, of the right types and signs."""
    if not isinstance(entry, dict):
        raise TypeError(f"a layer entry is a {type(entry).__name__}, not an object")
    path, shape = entry["path"], entry["shape"]
    if not isinstance(path, str):
        raise TypeError(f"layer path {str(path)[:40]} is not a string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"layer {path[:40]}: shape {str(shape)[:40]} is not a list of whole numbers")
    if any(d < 0 for d in shape):
        raise ValueError(f"layer {path[:40]}: shape {str(shape)[:60]} has a negative dimension")
    if any(d >= MAX_DIM for d in shape):
        raise ValueError(f"layer {path[:40]}: shape {str(shape)[:60]} has a dimension of {MAX_DIM} or more")
    return path, tuple(shape)
