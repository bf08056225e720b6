"""`export --format torch` read by PyTorch itself: torch.load(weights_only=True) takes the file,
the torchvision-named twin's strict load_state_dict accepts it, and its logits equal npdc's.
Skipped without PyTorch (tests/ may not import it)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from npdc.engine.resnet import build_net  # noqa: E402
from npdc.io.export import export_torch  # noqa: E402
from tests.runtime.conftest import randomise_bn  # noqa: E402
from bench.torchvision_twins import MobileNetV2, ResNet, SqueezeNet11  # noqa: E402

TWINS = {"tv-resnet18": (lambda: ResNet(18, 5, width=2), {"width": 2}),
         "tv-resnet50": (lambda: ResNet(50, 5, width=2), {"width": 2}),
         "mobilenet_v2": (lambda: MobileNetV2(5, width_mult=0.1), {"width_mult": 0.1}),
         "squeezenet1_1": (lambda: SqueezeNet11(5, width=8), {"width": 8})}


@pytest.mark.parametrize("arch", sorted(TWINS))
def test_pytorch_loads_the_export_and_computes_the_same_logits(tmp_path, arch):
    twin, options = TWINS[arch]
    net = build_net({"arch": arch, "input_shape": [3, 32, 32], "num_classes": 5, **options}, seed=2)
    randomise_bn(net, np.random.default_rng(0))
    export_torch(net, tmp_path / "m.pt")
    model = twin()
    model.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    model.eval()
    x = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32)).astype(np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(net.preprocess(x))).numpy()
    assert np.abs(logits - net.predict(x)).max() < 1e-4
