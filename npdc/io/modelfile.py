"""The .h5 model file: architecture spec (JSON), parameters, BN buffers, input normalisation and
training metadata. Loading rebuilds the net from its spec and checks every name and shape.
An optional `conv_plan` attribute (JSON {conv layer: primitive}, written by `npdc tune`) is
applied on load; files written before it existed simply have none (same format version)."""

import json
from pathlib import Path

import h5py

from npdc.engine.conv_plan import apply_plan, net_plan
from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.atomic import atomic_path

FORMAT = "npdc-model"
VERSION = 1


def save_model(path, net, meta=None):
    """Write `net` to an HDF5 file atomically; `meta` is any JSON-able dict (e.g. training run)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["spec"] = json.dumps(net.spec, sort_keys=True)
            f.attrs["meta"] = json.dumps(meta or {}, sort_keys=True)
            plan = net_plan(net)
            if plan:
                f.attrs["conv_plan"] = json.dumps(plan, sort_keys=True)
            state = f.create_group("state")
            for key, arr in net.state_dict().items():
                state.create_dataset(key, data=arr)


def read_meta(path):
    """The metadata dict of a model file, without building the net."""
    with _open(path) as f:
        try:
            return json.loads(f.attrs.get("meta", "{}"))
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: damaged metadata ({e})") from None


def load_model(path):
    """Rebuild the net stored in `path`; any problem with the file is a one-line UserError."""
    with _open(path) as f:
        try:
            spec = json.loads(f.attrs["spec"])
            state = {k: f["state"][k][()] for k in f["state"]}
            plan = json.loads(f.attrs.get("conv_plan", "{}"))
        except (KeyError, OSError, ValueError, TypeError) as e:
            raise UserError(f"{path}: damaged model file ({e})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: the architecture spec is not an object")
    net = build_net(spec)
    try:
        net.load_state_dict(state)
        if not isinstance(plan, dict):
            raise UserError("the conv plan is not an object")
        apply_plan(net, plan)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return net


def write_plan(path, plan):
    """Store a conv plan in an existing model file (rewritten atomically, metadata kept)."""
    net = load_model(path)
    apply_plan(net, plan)
    save_model(path, net, read_meta(path))


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 model file ({e})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise UserError(f"{path}: not an npdc model file")
    try:
        version = int(f.attrs.get("version", -1))
    except (TypeError, ValueError):
        version = -1
    if version != VERSION:
        f.close()
        raise UserError(f"{path}: model file version {version}, this npdc reads version {VERSION}")
    return f
