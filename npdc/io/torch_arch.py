"""Which architecture a PyTorch state_dict is, read off its names and shapes alone.

The layouts known: torchvision's ResNet-18/34/50/101 (`conv1` 7x7, `layer1..4`, bottlenecks by
`conv3`), MobileNetV2 (`features.N.conv`, its width multiplier from the channel counts),
SqueezeNet 1.1 (a 3x3 `features.0`, fire modules) and the CIFAR ResNets (`conv1` 3x3, three
stages: depth 6n+2). `hyper_parameters` reads the sizes an architecture's spec needs (classes,
widths, the width multiplier); shapes come from a hostile file, so each is checked to be a
whole-number shape before it is used, and the spec is checked and priced afterwards
(npdc.engine.resnet.check_spec, spec_cost) as for any import.
"""

import re

from npdc.engine.torchvision import MOBILENET_STAGES, RESNET_BLOCKS, make_divisible
from npdc.errors import UserError

_LAYER_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.")
_COMMON_MULTIPLIERS = (1.0, 0.75, 0.5, 0.35, 0.25, 1.4, 1.3, 0.1)


def _shape(state, name, ndim):
    """The shape of tensor `name` if it has `ndim` axes, else None."""
    t = state.get(name)
    return tuple(int(n) for n in t.shape) if t is not None and t.ndim == ndim else None


def _blocks(state):
    """{stage: number of blocks} from the `layerS.B.` names."""
    found = {}
    for key in state:
        if m := _LAYER_BLOCK.match(key):
            stage, block = int(m[1]), int(m[2])
            found[stage] = max(found.get(stage, 0), block + 1)
    return found


def recognise(state):
    """The npdc architecture name of a state_dict, or None when no known layout fits."""
    stem = _shape(state, "conv1.weight", 4)
    blocks = _blocks(state)
    if stem and stem[2:] == (7, 7) and sorted(blocks) == [1, 2, 3, 4]:
        kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
        counts = tuple(blocks[s] for s in (1, 2, 3, 4))
        return next((f"tv-resnet{d}" for d, layout in RESNET_BLOCKS.items() if layout == (kind, counts)), None)
    if stem and stem[2:] == (3, 3) and sorted(blocks) == [1, 2, 3] and len(set(blocks.values())) == 1:
        return f"cifar-resnet{6 * blocks[1] + 2}"
    if _shape(state, "features.0.0.weight", 4) and "features.1.conv.0.0.weight" in state:
        return "mobilenet_v2"
    first = _shape(state, "features.0.weight", 4)
    if first and first[2:] == (3, 3) and "features.3.squeeze.weight" in state:
        return "squeezenet1_1"
    return None


def unrecognised(state, source):
    """The one-line refusal of a state_dict no known layout fits, naming its first tensor."""
    name = next(iter(state), None)
    where = f"tensor {name} {tuple(state[name].shape)}" if name is not None else "an empty state_dict"
    return UserError(f"{source}: cannot tell the architecture: no known layout has a place for {where}; "
                     "give --arch")


def hyper_parameters(arch, state):
    """{spec key: value} an architecture's spec takes from the tensors (those it can find)."""
    if arch.startswith("tv-resnet"):
        return _sizes(state, "conv1.weight", "fc.weight")
    if arch == "squeezenet1_1":
        h = _sizes(state, "features.0.weight", None)
        classifier = _shape(state, "classifier.1.weight", 4)
        return {**h, "num_classes": classifier[0]} if classifier else h
    if arch == "mobilenet_v2":
        h = _sizes(state, "features.0.0.weight", "classifier.1.weight")
        h.pop("width", None)
        multiplier = _width_multiplier(state)
        return {**h, "width_mult": multiplier} if multiplier is not None else h
    return {}


def _sizes(state, stem_name, classifier_name):
    h = {}
    stem = _shape(state, stem_name, 4)
    if stem:
        h["width"] = stem[0]
    classifier = _shape(state, classifier_name, 2) if classifier_name else None
    if classifier:
        h["num_classes"] = classifier[0]
    return h


def _mobilenet_widths(multiplier):
    """Channels after the stem, after each stage, and of the last 1x1 conv."""
    return ([make_divisible(32 * multiplier)] + [make_divisible(c * multiplier) for _, c, _, _ in MOBILENET_STAGES]
            + [make_divisible(1280 * max(1.0, multiplier))])


def _width_multiplier(state):
    """The width multiplier whose rounded widths are the checkpoint's: common values first,
    then hundredths from 0.05 to 4."""
    seen, index = [_shape(state, "features.0.0.weight", 4)], 1
    for _, _, n, _ in MOBILENET_STAGES:
        index += n
        # the block's last conv: conv.2 after an expansion, conv.1 in the first block (t = 1)
        out = [k for k in (f"features.{index - 1}.conv.2.weight", f"features.{index - 1}.conv.1.weight")
               if _shape(state, k, 4)]
        seen.append(_shape(state, out[0], 4) if out else None)
    seen.append(_shape(state, f"features.{index}.0.weight", 4))
    if any(s is None for s in seen):
        return None
    widths = [s[0] for s in seen]
    for multiplier in _COMMON_MULTIPLIERS + tuple(k / 100 for k in range(5, 401)):
        if _mobilenet_widths(multiplier) == widths:
            return multiplier
    return None
