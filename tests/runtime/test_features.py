"""Embeddings from the runtime (Runtime.features) and verification of a .npdc file
(npdc.evaluate.verify_compressed, evaluate_compressed with pairs): the runtime gives what the
decoded net gives, runs only up to the node asked for, and the score's accuracy is then the
verification accuracy."""

import numpy as np
import pytest

from npdc.codec.model import load_compressed
from npdc.engine.verification import default_embedding, embed, make_pairs, verify_net
from npdc.errors import UserError
from npdc.evaluate import evaluate_compressed, verify_compressed
from npdc.runtime.infer import load_runtime
from tests.conftest import rel_err
from tests.runtime.conftest import NETS, make_npdc, raw_images


@pytest.mark.parametrize("weights", ["dense", "stream", "sparse"])
@pytest.mark.parametrize("batch", [1, 3])
def test_features_match_the_decoded_net(npdc_file, weights, batch):
    path, net = npdc_file
    images = raw_images(net, 5)
    node = default_embedding(net)
    runtime = load_runtime(path, weights, batch)
    out = runtime.features(images, node)
    assert rel_err(out, embed(net, images, node)) < 1e-5
    assert rel_err(runtime.predict(images), net.predict(images)) < 1e-5  # logits still right after


def test_a_node_fused_into_a_step_is_not_a_runtime_output(tmp_path):
    """fc5 is folded with fc5_bn into one step: the runtime has no fc5 value; verify_compressed
    then takes fc5 from the decoded net, and fc5_bn from the runtime."""
    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS["resnet18"])
    runtime = load_runtime(path)
    assert runtime.writer("fc5") is None and runtime.writer("fc5_bn") is not None
    with pytest.raises(UserError, match="fc5"):
        runtime.features(raw_images(net, 2), "fc5")
    x = raw_images(net, 60)
    pairs = make_pairs(np.arange(60) % 3, 40, seed=1)
    _, codes = load_compressed(path)
    for layer, source in (("fc5", "decoded net"), (None, "runtime")):
        r = verify_compressed(path, net, codes, x, pairs, layer)
        assert r["embedding_source"] == source
        expected = verify_net(net, x, pairs, layer)
        assert r["verification_accuracy"] == pytest.approx(expected["verification_accuracy"], abs=1 / 40)
        assert r["auc"] == pytest.approx(expected["auc"], abs=0.01)


def test_with_pairs_the_score_takes_verification_accuracy(tmp_path):
    """A baseline verification accuracy above the file's by more than 0.008 makes A = 0 under the
    relative preset; the file's own verification accuracy as reference makes A = 1; the top-1
    accuracy stays in the result."""
    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS["resnet18"])
    _, codes = load_compressed(path)
    x, y = raw_images(net, 60), np.arange(60) % 3
    pairs = make_pairs(y, 40, seed=2)
    own = evaluate_compressed(path, net, codes, x, y, pairs=pairs)
    assert own["score_accuracy"] == "verification" and own["score_parts"]["A"] == 1.0
    assert own["score_parts"]["z"] == own["verification_accuracy"] < 1
    assert own["accuracy"] == float((net.predict(x).argmax(1) == y).mean())
    worse = evaluate_compressed(path, net, codes, x, y, baseline_accuracy=1.0, pairs=pairs)
    assert worse["score_parts"]["A"] == 0.0 and worse["score"] == 0.0
    plain = evaluate_compressed(path, net, codes, x, y)
    assert plain["score_accuracy"] == "top-1" and "verification_accuracy" not in plain
