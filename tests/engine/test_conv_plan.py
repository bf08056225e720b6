"""Tests for conv plans: the conv graph of a net, tuning, the plan in the model file and on the
command line (tune, --primitive, speed's per-layer report)."""

import json

import h5py
import numpy as np
import pytest

from npdc.engine.conv_plan import apply_plan, conv_edges, conv_layers, net_plan, tune_net
from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.io.modelfile import load_model, save_model, write_plan
from npdc.kernels.conv import PRIMITIVES, legal_primitives
from tests.conftest import TINY_CIFAR, TINY_RESNET18, run_cli


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NPDC_CACHE_DIR", str(tmp_path / "cache"))


def test_conv_edges_follow_the_residual_graph():
    """A block's second conv reads its first; the next block's first conv reads both the block's
    second conv (through add) and whatever fed the shortcut."""
    net = build_net(TINY_RESNET18)
    edges = set(conv_edges(net))
    assert ("res2a_2a", "res2a_2b") in edges
    assert ("res2a_2b", "res2b_2a") in edges and ("res2a_1", "res2b_2a") in edges
    assert ("conv1", "res2a_1") in edges and ("conv1", "res2a_2b") not in edges


def test_tune_picks_a_legal_fastest_primitive_per_layer(tmp_path, monkeypatch):
    """The plan is each layer's fastest primitive by the timings stored in the cache (read back
    from the file, keyed by the layer's shape), every legal primitive timed."""
    from npdc.engine.conv_select import cache_file, shape_key

    monkeypatch.setenv("NPDC_CACHE_DIR", str(tmp_path))
    net = build_net(TINY_CIFAR)
    plan, _ = tune_net(net, batch_size=2, mode="infer")
    stored = json.loads(cache_file().read_text())
    assert set(plan) == {n for n, _ in conv_layers(net)}
    for name, layer in conv_layers(net):
        shape = ((2,) + layer.in_shape, layer.params["W"].shape, layer.stride, layer.padding, layer.groups)
        timings = stored[shape_key(*shape, np.float32, "infer")]
        assert set(timings) == set(legal_primitives(*shape))
        # edges carry no cost while every primitive is NCHW, so the choice is each layer's minimum
        assert timings[plan[name]] == min(timings.values()), name


def test_plan_round_trips_through_the_model_file(tmp_path):
    """The plan is saved as an attribute, applied on load, and runs; a file without one loads
    with the default heuristic."""
    net = build_net(TINY_RESNET18)
    path = tmp_path / "m.h5"
    save_model(path, net)
    with h5py.File(path) as f:
        assert "conv_plan" not in f.attrs
    assert net_plan(load_model(path)) == {}
    plan = {name: "direct" for name, _ in conv_layers(net)}
    plan["res2a_2a"] = "fft"
    write_plan(path, plan)
    loaded = load_model(path)
    assert net_plan(loaded) == plan
    x = np.random.default_rng(0).standard_normal((2,) + loaded.in_shape).astype(np.float32)
    np.testing.assert_allclose(loaded.forward(x), net.forward(x), rtol=1e-4, atol=1e-5)
    assert {layer.ran for _, layer in conv_layers(loaded)} == {"direct", "fft"}


def test_bad_plans_are_user_errors(tmp_path):
    net = build_net(TINY_CIFAR)
    with pytest.raises(UserError, match="not a conv layer"):
        apply_plan(net, {"fc": "im2col"})
    with pytest.raises(UserError, match="unknown primitive"):
        apply_plan(net, {"conv1": "magic"})
    with pytest.raises(UserError, match="stride"):
        apply_plan(net, {"res3a_2a": "winograd2"})  # the stride-2 conv of stage 3
    path = tmp_path / "m.h5"
    save_model(path, net)
    with h5py.File(path, "r+") as f:
        f.attrs["conv_plan"] = json.dumps({"conv1": "magic"})
    with pytest.raises(UserError, match="unknown primitive"):
        load_model(path)


def test_cli_tune_writes_the_plan_and_speed_reports_it(tmp_path, capsys):
    path = tmp_path / "m.h5"
    save_model(path, build_net(TINY_CIFAR))
    code, out, _ = run_cli(["tune", str(path), "--batch-size", "2", "--mode", "infer",
                            "--threads", "1", "--json"], capsys)
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert net_plan(load_model(path)) == report["plan"]
    code, out, _ = run_cli(["speed", "--model", str(path), "--batch-size", "2", "--repeats", "1",
                            "--threads", "1", "--json"], capsys)
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["primitives"] == report["plan"]


def test_cli_primitive_forces_where_legal(capsys):
    code, out, _ = run_cli(["speed", "--arch", "cifar-resnet20", "--input-shape", "3,8,8",
                            "--batch-size", "2", "--repeats", "1", "--threads", "1", "--json",
                            "--primitive", "fft"], capsys)
    assert code == 0
    ran = json.loads(out.strip().splitlines()[-1])["primitives"]
    assert ran["res2a_2a"] == "fft" and ran["res3a_2a"] == "fft"
    code, out, _ = run_cli(["speed", "--arch", "resnet18", "--input-shape", "1,8,8", "--batch-size", "2",
                            "--repeats", "1", "--threads", "1", "--json", "--primitive", "fft"], capsys)
    ran = json.loads(out.strip().splitlines()[-1])["primitives"]
    assert ran["res2a_2a"] == "fft" and ran["res2a_1"] != "fft"  # fft refuses 1x1: keeps its own
    code, _, err = run_cli(["speed", "--arch", "cifar-resnet20", "--primitive", "magic"], capsys)
    assert code == 2 and "unknown primitive" in err
    from npdc.kernels.conv import choose_primitive, default_primitive
    case = ((1, 16, 8, 8), (16, 16, 3, 3), 1, 1, 1)
    assert choose_primitive(None, *case) == default_primitive(*case)  # not inherited
    assert choose_primitive(None, (1, 16, 8, 8), (16, 16, 1, 1), 1, 0, 1) == "kn2row"  # not winograd2
    assert set(ran.values()) <= set(PRIMITIVES)


def test_a_clone_keeps_the_plan_so_a_distilled_student_runs_it():
    from npdc.engine.resnet import clone_net

    net = build_net(TINY_CIFAR)
    plan = {name: "im2col" for name, _ in conv_layers(net)[::2]}
    apply_plan(net, plan)
    assert net_plan(clone_net(net)) == plan
