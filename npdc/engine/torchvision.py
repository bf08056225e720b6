"""The ImageNet architectures of torchvision, written as node lists (npdc.engine.graph) whose
layer names are torchvision's module names, so that `layer1.0.conv1.W` is torchvision's
`layer1.0.conv1.weight` and a state_dict imports by renaming the last part only.

- `tv-resnet18/34/50/101`: He et al. 2016, "Deep Residual Learning for Image Recognition"; basic
  blocks for 18/34, bottlenecks for 50/101 with the stride on the 3x3 conv (torchvision's "v1.5",
  where the paper puts it on the first 1x1). `width` is the first stage's width (64 in the paper).
- `mobilenet_v2`: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
  table 2, with the width multiplier `width_mult` rounded to multiples of 8 as torchvision does.
- `squeezenet1_1`: Iandola et al. 2016, "SqueezeNet", version 1.1 of its reference code (3x3
  stem of 64, pooling after fires 2 and 4); `width` scales every layer (64 is the original).
A spec holds the hyper-parameters only ({"arch": "tv-resnet50", "width": 64, ...}); its node list
is worked out again from them (arch_nodes).
"""

from npdc.engine.graph import Builder, nodes_net
from npdc.errors import UserError

RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                 50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
# MobileNetV2's inverted-residual stages: expansion t, channels c, repeats n, first stride s
MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1))
SQUEEZE_FIRES = (1, 1, 2, 2, 3, 3, 4, 4)  # squeeze widths in quarters of `width`, fires 3..12
SQUEEZE_POOLS = (2, 5, 8)  # indices of `features` that are max-pools


def _conv_bn(b, conv, bn, out, k, stride=1, groups=1, act="relu", inputs=None):
    b(conv, "conv", inputs, out=out, k=k, stride=stride, pad=(k - 1) // 2, groups=groups)
    b(bn, "bn")
    if act == "relu":
        b(f"{bn}_relu", "relu")
    elif act == "relu6":
        b(f"{bn}_relu6", "clip", lo=0.0, hi=6.0)
    return b.last


def resnet_nodes(depth, input_shape, num_classes, width=64):
    kind, blocks = RESNET_BLOCKS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    b = Builder()
    _conv_bn(b, "conv1", "bn1", width, 7, 2)
    b("maxpool", "maxpool", k=3, stride=2, pad=1)
    cin = width
    for stage, n in enumerate(blocks):
        planes = width * 2 ** stage
        for i in range(n):
            stride = 2 if (i == 0 and stage > 0) else 1
            x, p = b.last, f"layer{stage + 1}.{i}."
            if kind == "basic":
                _conv_bn(b, p + "conv1", p + "bn1", planes, 3, stride, inputs=x)
                y = _conv_bn(b, p + "conv2", p + "bn2", planes, 3, act=None)
            else:
                _conv_bn(b, p + "conv1", p + "bn1", planes, 1, inputs=x)
                _conv_bn(b, p + "conv2", p + "bn2", planes, 3, stride)
                y = _conv_bn(b, p + "conv3", p + "bn3", planes * expansion, 1, act=None)
            if stride != 1 or cin != planes * expansion:
                x = _conv_bn(b, p + "downsample.0", p + "downsample.1", planes * expansion, 1, stride,
                             act=None, inputs=x)
            b(p + "add", "add", [y, x])
            b(p + "relu", "relu")
            cin = planes * expansion
    b("avgpool", "gap")
    b("fc", "linear", out=num_classes)
    return b.nodes


def make_divisible(v, divisor=8):
    """torchvision's rounding of a scaled width: the nearest multiple of `divisor`, at least
    `divisor`, and never more than 10 % below v."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def mobilenet_v2_nodes(input_shape, num_classes, width_mult=1.0):
    b = Builder()
    cin = make_divisible(32 * width_mult)
    _conv_bn(b, "features.0.0", "features.0.1", cin, 3, 2, act="relu6")
    index = 1
    for t, c, n, s in MOBILENET_STAGES:
        out = make_divisible(c * width_mult)
        for i in range(n):
            stride, x, p = (s if i == 0 else 1), b.last, f"features.{index}.conv."
            hidden, part = int(round(cin * t)), 0
            if t != 1:
                _conv_bn(b, f"{p}0.0", f"{p}0.1", hidden, 1, act="relu6", inputs=x)
                part = 1
            _conv_bn(b, f"{p}{part}.0", f"{p}{part}.1", hidden, 3, stride, groups=hidden, act="relu6")
            _conv_bn(b, f"{p}{part + 1}", f"{p}{part + 2}", out, 1, act=None)
            if stride == 1 and cin == out:
                b(f"features.{index}.add", "add", [b.last, x])  # the linear bottleneck: no ReLU after
            cin, index = out, index + 1
    _conv_bn(b, f"features.{index}.0", f"features.{index}.1", make_divisible(1280 * max(1.0, width_mult)),
             1, act="relu6")
    b("avgpool", "gap")
    b("classifier.0", "dropout", p=0.2)
    b("classifier.1", "linear", out=num_classes)
    return b.nodes


def squeezenet_nodes(input_shape, num_classes, width=64):
    if width % 4:
        raise UserError(f"squeezenet1_1: width must be a multiple of 4, not {width}")
    b = Builder()
    b("features.0", "conv", out=width, k=3, stride=2, bias=True)
    b("features.1", "relu")
    fires = iter(SQUEEZE_FIRES)
    for index in range(2, 13):
        if index in SQUEEZE_POOLS:
            b(f"features.{index}", "maxpool", k=3, stride=2, ceil=True)
            continue
        squeeze, p = next(fires) * width // 4, f"features.{index}."
        b(p + "squeeze", "conv", out=squeeze, k=1, bias=True)
        s = b(p + "squeeze_activation", "relu")
        b(p + "expand1x1", "conv", s, out=4 * squeeze, k=1, bias=True)
        e1 = b(p + "expand1x1_activation", "relu")
        b(p + "expand3x3", "conv", s, out=4 * squeeze, k=3, pad=1, bias=True)
        e3 = b(p + "expand3x3_activation", "relu")
        b(p + "cat", "concat", [e1, e3])
    b("classifier.0", "dropout", p=0.5)
    b("classifier.1", "conv", out=num_classes, k=1, bias=True)
    b("classifier.2", "relu")
    b("classifier.3", "gap")
    return b.nodes


def _resnet(depth):
    return lambda input_shape, num_classes, width=64: resnet_nodes(depth, input_shape, num_classes, width)


# name -> (node-list maker, default input shape, default classes, hyper-parameter defaults)
TORCHVISION = {**{f"tv-resnet{d}": (_resnet(d), {"width": 64}) for d in RESNET_BLOCKS},
               "mobilenet_v2": (mobilenet_v2_nodes, {"width_mult": 1.0}),
               "squeezenet1_1": (squeezenet_nodes, {"width": 64})}
DEFAULTS = {"input_shape": [3, 224, 224], "num_classes": 1000}


def arch_nodes(spec):
    """The node list of a torchvision architecture's spec (hyper-parameters checked already)."""
    make, options = TORCHVISION[spec["arch"]]
    h = {**DEFAULTS, **options, **{k: v for k, v in spec.items() if k not in ("arch", "channels")}}
    return make(**h)


def spec_with_defaults(spec):
    """The spec with every hyper-parameter it left out at its default."""
    return {**DEFAULTS, **TORCHVISION[spec["arch"]][1], **spec}


def _builder(name):
    def build(rng, channels=None, **hyper):
        spec = spec_with_defaults({"arch": name, **hyper})
        if channels:
            spec["channels"] = dict(channels)
        return nodes_net(spec, spec["input_shape"], arch_nodes(spec), rng, channels)
    return build


BUILDERS = {name: _builder(name) for name in TORCHVISION}
