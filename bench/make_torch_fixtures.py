"""Write the PyTorch checkpoint fixtures in tests/data/torch/ (needs torch; the tests do not).

    python bench/make_torch_fixtures.py            # torch 2.13.0 CPU was used for the committed files
    python bench/make_torch_fixtures.py torchvision   # only the torchvision-named nets below

Seeded, so a rerun with the same torch writes the same tensors. What it writes:
- cifar_resnet20.pt: a CIFAR ResNet-20 (option-A shortcuts, classifier `linear`) in the zip
  format, float32, its state_dict saved as nn.DataParallel does (`module.` prefixes) and nested
  in a training checkpoint {"epoch", "best_prec1", "arch", "state_dict"}.
- cifar_resnet56_w8_legacy.pth: a CIFAR ResNet-56 of width 8 (8/16/32 channels; 1/4 of the
  parameters, so the file stays small) in the legacy format, weights and statistics float16.
- cifar_resnet20_w8_projection.th: a CIFAR ResNet-20 of width 8 with projection shortcuts
  named like torchvision (`downsample.0/1`, classifier `fc`), float64, nested under "model".
- tensors.pt and tensors_legacy.pt: the same dict of tensors in both formats -- views sharing
  one storage (a transpose, a slice with an offset, an expanded stride-0 view), float16, float64,
  bfloat16, int64, int32, uint8, bool and an nn.Parameter.
- expected.npz: for each network, 4 uint8 test images, the normalisation and the logits PyTorch
  computes in eval mode (`<name>.x`, `.mean`, `.std`, `.logits`); for the tensors, every tensor
  as torch's own `.numpy()` gives it (`tensors.<key>`; bfloat16 widened to float32).
- torchvision/: torchvision-named nets (bench/torchvision_twins.py) at reduced width, 10 classes,
  for 32x32 inputs: tv_resnet18_w2.pt (float16, plain state_dict), tv_resnet50_w2.pt (float16,
  nested under "state_dict"), mobilenet_v2_w010.pt (width multiplier 0.1, float16) and
  squeezenet1_1_w8.pt (width 8, float32); their expected.npz as above. Each is also exported
  to ONNX (`<name>.onnx`: torch's TorchScript exporter, opset 13, eval mode, so batch norm is
  folded into the conv before it and the convs carry biases; batch size symbolic), with one more
  net only as ONNX: cifar_resnet8_w4.onnx, a CIFAR ResNet-8 of width 4 whose option-A shortcuts
  export as Slice and Pad fed by the shape arithmetic exporters write (Shape, Gather, Concat, ...).
The batch-norm statistics are set by running random batches in train mode, then every
batch-norm scale and shift is perturbed, so importing BN wrongly changes the logits.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchvision_twins import MobileNetV2, ResNet, SqueezeNet11

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "torch"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN; where the shape changes, option A (subsample, zero-pad channels on both
    sides) or option B (1x1 conv + BN, kept under the attribute `shortcut_name`)."""

    def __init__(self, cin, cout, stride, option, shortcut_name):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.changes = stride != 1 or cin != cout
        self.option, self.stride, self.shortcut_name = option, stride, shortcut_name
        if self.changes and option == "B":
            setattr(self, shortcut_name, nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                       nn.BatchNorm2d(cout)))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if not self.changes:
            shortcut = x
        elif self.option == "A":
            pad = (y.shape[1] - x.shape[1]) // 2
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, pad, pad))
        else:
            shortcut = getattr(self, self.shortcut_name)(x)
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth, width=16, option="A", shortcut_name="shortcut", classifier="linear",
                 num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width), start=1):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (b == 0 and stage > 1) else 1, option,
                                         shortcut_name))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.classifier_name = classifier
        setattr(self, classifier, nn.Linear(cin, num_classes))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return getattr(self, self.classifier_name)(x.mean(dim=(2, 3)))


def settle_batchnorm(model, gen):
    """Running statistics from random batches, then perturbed BN scales and shifts."""
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    model.eval()


def export_onnx(model, path):
    """`model` (eval mode) as an ONNX file of opset 13 with a symbolic batch size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; the other needs onnxscript
        torch.onnx.export(model, torch.zeros(1, 3, 32, 32), path, dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})


def make_network(name, expected, gen, dtype=torch.float32, model=None, onnx_path=None, **kw):
    model = model or CifarResNet(**kw)
    settle_batchnorm(model, gen)
    model = model.to(dtype).to(torch.float32)  # the logits of exactly the weights that are saved
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((x.float() / 255 - mean) / std)
    expected.update({f"{name}.x": x.numpy(), f"{name}.mean": np.array(MEAN, np.float32),
                     f"{name}.std": np.array(STD, np.float32), f"{name}.logits": logits.numpy()})
    if onnx_path is not None:
        export_onnx(model, onnx_path)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def make_tensors(expected, gen):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    column = torch.randn(3, 1, generator=gen)
    tensors = {
        "base": base,
        "transposed": base.t(),                 # stride (1, 6)
        "window": base[1:3, 2:5],               # offset 8, stride (6, 1)
        "every_other": base.view(-1)[3::2],     # offset 3, stride 2
        "expanded": column.expand(3, 4),        # stride (1, 0)
        "half": torch.randn(5, generator=gen).half(),
        "double": torch.randn(2, 3, generator=gen).double(),
        "bfloat16": torch.randn(4, generator=gen).bfloat16(),
        "long": torch.tensor([-(2**40), 0, 7], dtype=torch.int64),
        "int": torch.tensor([[1, -2], [3, -4]], dtype=torch.int32),
        "byte": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "parameter": nn.Parameter(torch.randn(2, 2, generator=gen)),
    }
    for key, t in tensors.items():
        t = t.detach()
        expected[f"tensors.{key}"] = (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()
    return tensors


TORCHVISION = {  # file stem -> (model, storage dtype, nesting key or None)
    "tv_resnet18_w2": (lambda: ResNet(18, 10, width=2), torch.float16, None),
    "tv_resnet50_w2": (lambda: ResNet(50, 10, width=2), torch.float16, "state_dict"),
    "mobilenet_v2_w010": (lambda: MobileNetV2(10, width_mult=0.1), torch.float16, None),
    "squeezenet1_1_w8": (lambda: SqueezeNet11(10, width=8), torch.float32, None),
}


def make_torchvision():
    out = OUT / "torchvision"
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20261206)
    torch.manual_seed(1)
    expected = {}
    for name, (model, dtype, nest) in TORCHVISION.items():
        state = make_network(name, expected, gen, dtype=dtype, model=model(), onnx_path=out / f"{name}.onnx")
        torch.save({nest: state} if nest else state, out / f"{name}.pt")
    make_network("cifar_resnet8_w4", expected, gen, depth=8, width=4, onnx_path=out / "cifar_resnet8_w4.onnx")
    np.savez(out / "expected.npz", **expected)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>9,} B  {f.relative_to(OUT.parents[2])}")


def main():
    if sys.argv[1:] == ["torchvision"]:
        make_torchvision()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20240607)
    torch.manual_seed(0)
    expected = {}

    state = make_network("cifar_resnet20", expected, gen, depth=20)
    torch.save({"epoch": 182, "best_prec1": 91.73, "arch": "resnet20",
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, OUT / "cifar_resnet20.pt")

    state = make_network("cifar_resnet56_w8_legacy", expected, gen, dtype=torch.float16, depth=56,
                         width=8, classifier="fc")
    torch.save(state, OUT / "cifar_resnet56_w8_legacy.pth", _use_new_zipfile_serialization=False)

    state = make_network("cifar_resnet20_w8_projection", expected, gen, dtype=torch.float64,
                         depth=20, width=8, option="B", shortcut_name="downsample", classifier="fc")
    torch.save({"model": state, "optimizer": None}, OUT / "cifar_resnet20_w8_projection.th")

    tensors = make_tensors(expected, gen)
    torch.save(tensors, OUT / "tensors.pt")
    torch.save(tensors, OUT / "tensors_legacy.pt", _use_new_zipfile_serialization=False)

    np.savez(OUT / "expected.npz", **expected)
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:>9,} B  {f.relative_to(OUT.parents[2])}")


if __name__ == "__main__":
    main()
