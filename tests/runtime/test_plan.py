"""The plan folds BN, residual adds and activations into convs and packs the activations into an
arena close to the liveness lower bound without overlapping live values."""

import numpy as np
import pytest

from npdc.engine.net import INPUT
from npdc.engine.resnet import build_net
from npdc.runtime.plan import LINE, Plan, aligned_zeros, overlaps
from tests.runtime.conftest import NETS

BIG = {**NETS, "cifar-resnet56": {"arch": "cifar-resnet56", "input_shape": [3, 32, 32]},
       "fmnist-resnet18": {"arch": "resnet18", "input_shape": [1, 28, 28]}}


def live_pairs(plan):
    """(a, b) of values alive at a common step, from the steps' reads and writes (written here
    independently of the plan's own liveness)."""
    first, last = {INPUT: -1}, {}
    for t, step in enumerate(plan.steps):
        for name in step.reads():
            last[name] = t
        first[step.output] = t
    last[plan.output] = len(plan.steps)
    names = sorted(first)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if first[a] <= last[b] and first[b] <= last[a]]


@pytest.mark.parametrize("name", sorted(BIG))
def test_live_values_never_share_memory_and_the_arena_is_near_the_bound(name):
    plan = Plan(build_net(BIG[name]), batch=2)
    shared = {(s.residual, s.output) for s in plan.steps if s.inplace}
    for a, b in live_pairs(plan):
        if (a, b) in shared or (b, a) in shared:
            continue
        va, vb = plan.values[a], plan.values[b]
        assert va.offset + va.size <= vb.offset or vb.offset + vb.size <= va.offset, (a, b)
    assert overlaps(plan) == []
    assert plan.lower_bound <= plan.arena_size <= 1.1 * plan.lower_bound
    assert plan.activation_bytes() == 4 * 2 * plan.arena_size


def test_a_broken_placement_is_caught():
    plan = Plan(build_net(NETS["cifar-resnet20"]))
    step = next(s for s in plan.steps if s.kind == "conv" and s.residual and not s.inplace)
    plan.values[step.output].offset = plan.values[step.inputs[0]].offset
    assert overlaps(plan)


def test_bn_relu_add_and_zero_pad_shortcuts_are_folded_into_convs():
    net = build_net(NETS["cifar-resnet20"])
    plan = Plan(net)
    assert [s.kind for s in plan.steps] == ["conv"] * 19 + ["pool", "linear"]
    covered = [node for s in plan.steps for node in s.nodes]
    assert sorted(covered) == sorted(name for name, _, _ in net.nodes)
    assert sum(s.inplace for s in plan.steps) == 7  # identity blocks: the residual is overwritten
    assert sum(s.res_mode == 2 for s in plan.steps) == 2  # option-A shortcuts read in the tail


def test_projection_shortcut_takes_the_main_path_as_residual():
    net = build_net(NETS["resnet18"])
    plan = Plan(net)
    proj = [s for s in plan.steps if s.name.endswith("_1")]
    assert len(proj) == 4 and all(s.residual.endswith("_2b_bn") and s.act for s in proj)
    fc5 = next(s for s in plan.steps if s.name == "fc5")
    bn = net.layers["fc5_bn"]
    scale = bn.params["gamma"] / np.sqrt(bn.buffers["running_var"] + bn.eps)
    np.testing.assert_allclose(fc5.scale, scale, rtol=1e-6)
    assert "flatten" not in plan.values and fc5.inputs == ["res5b_relu"]


def test_a_later_step_never_reads_a_value_that_was_overwritten():
    """Running the plan on tagged data: every read sees the value its writer produced."""
    plan = Plan(build_net(NETS["resnet18"]))
    arena = np.full(plan.arena_size, -1.0)
    writer_tag = {INPUT: 0}
    arena[plan.values[INPUT].offset:plan.values[INPUT].offset + plan.values[INPUT].size] = 0
    for t, step in enumerate(plan.steps, start=1):
        for name in step.reads():
            v = plan.values[name]
            assert np.all(arena[v.offset:v.offset + v.size] == writer_tag[name]), (step.output, name)
        v = plan.values[step.output]
        arena[v.offset:v.offset + v.size] = t
        writer_tag[step.output] = t


def test_a_folded_batch_norm_scales_and_shifts_as_the_file_stores_it():
    """A conv without bias followed by a BN gets exactly inference_affine's float32 scale and
    shift, the values npdc.codec.model.fold_batch_norms writes into a .npdc file."""
    from npdc.engine.layers import BatchNorm2d
    from npdc.engine.layers.batchnorm import inference_affine

    net = build_net(NETS["cifar-resnet20"], seed=1)
    rng = np.random.default_rng(2)
    for layer in net.layers.values():
        if isinstance(layer, BatchNorm2d):
            c = layer.params["gamma"].shape
            layer.params["gamma"][:] = rng.uniform(0.5, 2.0, c)
            layer.params["beta"][:] = rng.normal(0, 0.5, c)
            layer.buffers["running_mean"][:] = rng.normal(0, 1.0, c)
            layer.buffers["running_var"][:] = rng.uniform(0.01, 3.0, c)
    checked = 0
    for step in Plan(net).steps:
        bns = [n for n in step.nodes if isinstance(net.layers.get(n), BatchNorm2d)]
        if step.kind == "conv" and bns and "b" not in net.layers[step.name].params:
            bn = net.layers[bns[0]]
            scale, shift = inference_affine(bn.params["gamma"], bn.params["beta"],
                                            bn.buffers["running_mean"], bn.buffers["running_var"], bn.eps)
            assert step.scale.dtype == step.shift.dtype == np.float32
            np.testing.assert_array_equal(step.scale, scale)
            np.testing.assert_array_equal(step.shift, shift)
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("shape, dtype", [(1, np.float32), (1001, np.uint8), ((3, 7), np.float32),
                                          ((2, 1000), np.int32), ((2, 4097), np.uint8)])
def test_aligned_zeros_start_every_row_on_a_line(shape, dtype):
    """The arena and the threads' workspace rows start on 64-byte lines, zeroed, at least as
    large as asked: NumPy's own large arrays start 16 bytes into one."""
    held = [np.zeros(1 << 16, np.uint8) for _ in range(4)]  # moves where malloc puts the next ones
    for _ in range(3):
        a = aligned_zeros(shape, dtype)
        assert a.dtype == dtype and not a.any()
        want = (shape,) if np.isscalar(shape) else shape
        assert a.ndim == len(want) and a.shape[0] == want[0] and a.shape[-1] >= want[-1]
        rows = a.reshape(1, -1) if a.ndim == 1 else a
        assert all(r.ctypes.data % LINE == 0 for r in rows)
        assert a.flags.c_contiguous and a.flags.writeable
        held.append(a)
