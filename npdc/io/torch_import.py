"""Turn a PyTorch ResNet checkpoint into an npdc net: find the state_dict, map names, check shapes.

Layouts understood (names as torchvision and the common CIFAR ResNet code write them):
`conv1`, `bn1`; block B of stage S as `layerS.B.conv1`, `.bn1`, `.conv2`, `.bn2`; a projection
shortcut as `layerS.B.downsample.0/1` (torchvision) or `layerS.B.shortcut.0/1` (CIFAR option B);
an option-A shortcut has no parameters; the classifier as `fc`, `linear` or `classifier`. npdc's
block `res{S+1}{letter of B}` (`res2a`, `res2b`, ...) is PyTorch's `layerS.B`; conv `_2a`/`_2b` is
`conv1`/`conv2`, `_1` the shortcut, `..._bn` the batch norm after it. BatchNorm's
`num_batches_tracked` is a training counter and is dropped. Any other name is used as it is
(a model already named like npdc's `fc5`, `fc5_bn`, `fc6`).

The sizes that decide the network (classes, width, input channels, embedding) come from tensor
shapes, which an empty tensor can set to anything; what building the implied network costs is
worked out from its spec (npdc.engine.resnet.spec_cost) and taken from the checkpoint's Budget
before it is built.
"""

import re

import numpy as np

from npdc.engine.images import set_normalisation
from npdc.engine.resnet import build_net, check_spec, spec_cost
from npdc.errors import UserError
from npdc.io.torch_arch import hyper_parameters, recognise, unrecognised
from npdc.io.torch_checkpoint import load_checkpoint
from npdc.limits import Budget

# Where training scripts commonly nest the state_dict inside a checkpoint dict.
NESTING_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network",
                "module", "ema")
DROPPED = ("num_batches_tracked",)
_KEYS = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
         "running_mean": "running_mean", "running_var": "running_var"}
_BLOCK = re.compile(r"res(\d+)([a-z]+)_(2a|2b|1)(_bn)?")
_PART = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2")}
_CLASSIFIERS = ("fc", "linear", "classifier")


def find_state_dict(obj, source, depth=0):
    """The name -> array dict inside a loaded checkpoint, without `module.` prefixes.

    The first of NESTING_KEYS that holds a dict with arrays (a few levels deep) wins, so a
    training checkpoint's other tensors (`best_acc`) are not taken for the weights; otherwise
    a dict whose values include arrays is the state_dict itself."""
    if isinstance(obj, dict) and depth < 4:
        for key in NESTING_KEYS:
            if isinstance(obj.get(key), dict):
                try:
                    return find_state_dict(obj[key], source, depth + 1)
                except UserError:
                    continue
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
        if tensors:
            return {_strip_prefix(k): v for k, v in tensors.items()}
    what = f"a dict with keys {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, dict) \
        else type(obj).__name__
    raise UserError(f"{source}: no state_dict found (the checkpoint holds {what})")


def _strip_prefix(name):
    """`module.` is what nn.DataParallel / DistributedDataParallel put before every name."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def _block_index(letters):
    """Inverse of npdc.engine.resnet._letters: a..z -> 0..25, aa -> 26, ..."""
    if len(letters) == 1:
        return ord(letters) - ord("a")
    return (ord(letters[0]) - ord("a") + 1) * 26 + ord(letters[1]) - ord("a")


def torch_candidates(path):
    """The PyTorch names that may hold the npdc parameter `path` (e.g. `res3a_1_bn.running_var`)."""
    layer, key = path.rsplit(".", 1)
    suffix = _KEYS.get(key, key)
    if layer in ("conv1", "conv1_bn"):
        modules = ["conv1" if layer == "conv1" else "bn1"]
    elif layer == "fc":
        modules = list(_CLASSIFIERS)
    elif m := _BLOCK.fullmatch(layer):
        stage, block, part, bn = int(m[1]) - 1, _block_index(m[2]), m[3], bool(m[4])
        base = f"layer{stage}.{block}."
        if part == "1":
            modules = [base + ("downsample.1" if bn else "downsample.0"),
                       base + ("shortcut.1" if bn else "shortcut.0")]
        else:
            modules = [base + _PART[part][1 if bn else 0]]
    else:
        modules = [layer]
    return [f"{m}.{suffix}" for m in modules]


def _infer_spec(arch, state, input_shape):
    """The npdc spec implied by the checkpoint: classes, input channels, width, shortcut kind;
    the torchvision architectures' sizes come from npdc.io.torch_arch."""
    spec = {"arch": arch}
    if arch not in ("resnet18",) and not arch.startswith("cifar-resnet"):
        spec.update(hyper_parameters(arch, state))
        if input_shape is not None:
            spec["input_shape"] = list(input_shape)
        return spec
    classifier = next((state[f"{c}.weight"] for c in ("fc6", *_CLASSIFIERS)
                       if state.get(f"{c}.weight") is not None and state[f"{c}.weight"].ndim == 2), None)
    if classifier is not None:
        spec["num_classes"] = int(classifier.shape[0])
    stem = state.get("conv1.weight")
    if input_shape is not None:
        spec["input_shape"] = list(input_shape)
    elif stem is not None and stem.ndim == 4 and arch.startswith("cifar-resnet"):
        spec["input_shape"] = [int(stem.shape[1]), 32, 32]
    if arch.startswith("cifar-resnet"):
        if stem is not None and stem.ndim == 4:
            spec["width"] = int(stem.shape[0])
        if any(".downsample." in k or ".shortcut." in k for k in state):
            spec["shortcut"] = "projection"
    elif arch == "resnet18":
        if stem is not None and stem.ndim == 4:
            spec["width"] = int(stem.shape[0])
        if state.get("fc5.weight") is not None and state["fc5.weight"].ndim == 2:
            spec["embedding"] = int(state["fc5.weight"].shape[0])
    return spec


def state_to_net(state, arch, source, input_shape=None, budget=None):
    """An npdc net of `arch` (None: recognised from the names and shapes) holding the tensors
    of a PyTorch `state` (name -> array).

    The first npdc parameter with no tensor, or with a tensor of the wrong shape, is a UserError
    naming both sides; so is a tensor the architecture has no place for. With a `budget`, the
    network the tensors' shapes imply is taken from it before it is built: what building it
    costs (spec_cost), held by the net, by its state_dict and by the converted copies (three
    times)."""
    if arch is None:
        arch = recognise(state)
        if arch is None:
            raise unrecognised(state, source)
    spec = _infer_spec(arch, state, input_shape)
    if budget is not None:
        check_spec(spec)  # the one schema names a bad size before it is priced
        cost = spec_cost(spec)
        budget.take(3 * cost, f"the {arch} network its tensor shapes imply ({cost:,} bytes)")
    net = build_net(spec)
    loaded, used = net.state_dict(), set()
    for path, ref in {**net.params(), **net.buffers()}.items():
        names = torch_candidates(path)
        name = next((n for n in names if n in state), None)
        if name is None:
            raise UserError(f"{source}: no tensor for {arch} parameter {path} "
                            f"(looked for {' or '.join(names)})")
        if state[name].shape != ref.shape:
            raise UserError(f"{source}: {name} has shape {tuple(state[name].shape)}, "
                            f"{arch} parameter {path} needs {tuple(ref.shape)}")
        if not np.issubdtype(state[name].dtype, np.number):
            raise UserError(f"{source}: {name} holds {state[name].dtype}, not numbers")
        loaded[path] = state[name].astype(np.float32)
        used.add(name)
    extra = [k for k in state if k not in used and k.rsplit(".", 1)[-1] not in DROPPED]
    if extra:
        raise UserError(f"{source}: tensor {extra[0]} {tuple(state[extra[0]].shape)} has no place "
                        f"in {arch} ({len(extra)} unused tensors)")
    net.load_state_dict(loaded)
    return net


def import_checkpoint(path, arch, mean=None, std=None, input_shape=None):
    """Read a PyTorch checkpoint into an npdc net of `arch`; `mean`/`std` (per channel, in the
    [0, 1] scale of the images) become the model's input normalisation."""
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and not np.all(np.isfinite(np.asarray(values, np.float64))):
            raise UserError(f"--{label} values must be finite numbers, got {np.asarray(values).tolist()}")
        if label == "std" and values is not None and not np.all(np.asarray(values, np.float64) > 0):
            raise UserError(f"--std values must be positive, got {np.asarray(values).tolist()}")
    state = find_state_dict(load_checkpoint(path), path)
    net = state_to_net(state, arch, path, input_shape, Budget.for_path(path))
    set_normalisation(net, mean, std)
    return net
