"""The .h5 model file: architecture spec (JSON), parameters, BN buffers, input normalisation and
training metadata. Loading checks the spec (npdc.engine.resnet.check_spec), takes what the net
costs (spec_cost) from the file's npdc.limits.Budget before building it, then reads only the
arrays whose name and shape match the net's, so a crafted file cannot make it allocate much.
An optional `conv_plan` attribute (JSON {conv layer: primitive}, written by `npdc tune`) is
applied on load; files written before it existed simply have none (same format version)."""

import json
from pathlib import Path

import h5py

from npdc.engine.conv_plan import apply_plan, net_plan
from npdc.engine.resnet import build_net, check_spec, spec_cost
from npdc.errors import UserError
from npdc.limits import Budget
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
    budget = Budget.for_path(path) if Path(path).is_file() else None
    with _open(path) as f:
        try:
            spec = _json_attr(f, "spec", None, budget)
            plan = _json_attr(f, "conv_plan", "{}", budget)
            check_spec(spec)
            budget.take(spec_cost(spec), f"the {spec['arch']} its spec declares")
            net = build_net(spec)
            state = _read_state(f["state"], net.state_dict(), budget)
        except UserError as e:  # a Budget's refusal names the file already
            raise UserError(e if str(e).startswith(f"{path}:") else f"{path}: {e}") from None
        except (KeyError, OSError, ValueError, TypeError, AttributeError) as e:
            raise UserError(f"{path}: damaged model file ({str(e)[:200]})") from None
    try:
        net.load_state_dict(state)
        if not isinstance(plan, dict):
            raise UserError("the conv plan is not an object")
        apply_plan(net, plan)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return net


def _json_attr(f, key, default, budget):
    """The JSON attribute `key`, its text taken from the budget first (16 B per parsed value)."""
    text = f.attrs[key] if default is None else f.attrs.get(key, default)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise TypeError(f"the {key} attribute is not text")
    budget.take(len(text) * 16, f"the {key} attribute")
    return json.loads(text)


def _read_state(group, expected, budget):
    """{name: array} of the state group, reading only arrays whose name and shape match the
    net's (`expected`), each taken from the budget before it is read."""
    state = {}
    for name in group:
        if name not in expected:
            raise UserError(f"the file holds {str(name)[:60]!r}, which the net does not have")
        data = group[name]
        if not hasattr(data, "shape") or tuple(data.shape) != expected[name].shape:
            raise UserError(f"{name}: shape {getattr(data, 'shape', None)} in the file, "
                            f"{expected[name].shape} in the net")
        budget.take(data.size * data.dtype.itemsize, f"array {name}")
        state[name] = data[()]
    return state


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
