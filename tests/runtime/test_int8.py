"""Int8 inference (npdc.runtime.int8): every step's bytes equal a NumPy simulation of the
quantised network (integer convolutions in int64, the paper's roundings written as floor
divisions), the VNNI and portable paths agree bit for bit on whole nets, the logits stay close
to the float runtime's, and the int32 bound holds for the shipped models' largest layers."""

from pathlib import Path

import numpy as np
import pytest

from npdc.engine.net import INPUT
from npdc.errors import UserError
from npdc.io.modelfile import load_model
from npdc.kernels import int8 as K
from npdc.kernels import int8_requant as R
from npdc.kernels.fused import RES_IDENTITY, RES_ZEROPAD
from npdc.kernels.vnni import cpu_has_vnni
from npdc.runtime.calibrate import calibrate
from npdc.runtime.infer import build_runtime, normalise_images
from npdc.runtime.int8 import Int8Runtime
from npdc.runtime.int8_params import BIAS_LIMIT, activation_scales, fixed_multipliers, int8_weights
from npdc.runtime.plan import Plan
from tests.runtime.conftest import NETS, make_npdc, raw_images

MODELS = Path(__file__).resolve().parents[2] / "data" / "models"


@pytest.fixture(scope="module", params=["resnet18", "cifar-resnet20"])
def quantised(request, tmp_path_factory):
    """(net, Int8Runtime at batch 3, images) of a small decoded .npdc net, calibrated; every conv
    that can runs its GEMM over the non-zero weight words (the simulation checks those too)."""
    net = make_npdc(tmp_path_factory.mktemp("int8") / "net.npdc", NETS[request.param])
    images = raw_images(net, 5)
    scales = activation_scales(calibrate(net, raw_images(net, 16, seed=7)))
    return net, Int8Runtime(net, scales, batch=3, sparse="always"), images


def _half_up(a, b):
    return np.floor_divide(a + b // 2, b)  # round(a / b), ties toward +inf (b even)


def _half_away(a, e):
    """round(a / 2^e), ties away from zero, e >= 0 (arrays broadcast)."""
    e = np.asarray(e, np.int64)
    half = np.where(e > 0, np.left_shift(1, np.maximum(e - 1, 0)), 0)
    return np.sign(a) * np.floor_divide(np.abs(a) + half, np.left_shift(1, e))


def _requantise(v, m0, shift):
    """The paper's requantisation, written as floor divisions on int64 arrays (v, m0, shift
    broadcast)."""
    v, m0, shift = np.broadcast_arrays(np.asarray(v, np.int64), np.asarray(m0, np.int64),
                                       np.asarray(shift, np.int64))
    v = np.clip(np.clip(v, -2 ** 31, 2 ** 31 - 1) * np.left_shift(1, np.maximum(-shift, 0)),
                -2 ** 31, 2 ** 31 - 1)
    return _half_away(_half_up(v * m0, 1 << 31), np.maximum(shift, 0))


def _conv_sum(xq, zx, Wq, kh, kw, stride, pad):
    """sum_k W (x - Zx) in int64 over zero-point padded windows: (N, O, Ho, Wo)."""
    x = np.pad(xq.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, Wq.reshape(Wq.shape[0], -1, kh, kw).astype(np.int64))


def _simulate(rt, s, values):
    """The uint8 output of step s from the simulated values of its inputs."""
    (sx, zx), (sy, zy) = rt.scales[s.inputs[0]], rt.scales[s.output]
    x = values[s.inputs[0]].astype(np.int64)
    if s.kind == "pool":
        hw = x.shape[2] * x.shape[3]
        m0, shift = (a[0] for a in fixed_multipliers(sx / (hw * sy)))
        v = (x - zx).sum(axis=(2, 3))
        return np.clip(zy + _requantise(v, m0, shift), 0, 255)
    q = rt.q[s.name]
    o = q.Wq.shape[0]
    if s.kind == "linear":
        v = (x.reshape(len(x), -1) - zx) @ q.Wq.T.astype(np.int64)
        b = (q.bias[:o] + zx * q.Wq.astype(np.int64).sum(axis=1))
        return np.clip(zy + _requantise(v + b, q.m0[:o], q.shift[:o]), zy if s.act else 0, 255)
    kh, kw = s.w_shape[2], s.w_shape[3]
    v = _conv_sum(values[s.inputs[0]], zx, q.Wq, kh, kw, s.stride, s.pad)
    b = (q.bias[:o] + zx * q.Wq.astype(np.int64).sum(axis=1))[None, :, None, None]
    m0, shift = q.m0[:o, None, None], q.shift[:o, None, None]
    low = zy if s.act else 0
    if not s.residual:
        return np.clip(zy + _requantise(v + b, m0, shift), low, 255)
    zr, r_mul, r_shift = q.meta[6], q.meta[7], q.meta[8]
    r = values[s.residual].astype(np.int64) - zr
    if s.res_mode == RES_ZEROPAD:
        full = np.zeros(v.shape, np.int64)
        sub = r[:, :, ::s.res_stride, ::s.res_stride]
        full[:, s.res_front:s.res_front + sub.shape[1]] = sub
        r = full
    else:
        assert s.res_mode == RES_IDENTITY
    total = (_requantise(v + b, m0, shift - R.RES_FRACTION)
             + ((r * r_mul + (np.int64(1) << r_shift) // 2) >> r_shift))  # the term, ties up
    return np.clip(zy + _half_away(total, R.RES_FRACTION), low, 255)


def test_every_step_equals_the_simulated_quantised_network(quantised):
    net, rt, images = quantised
    n = rt.load_input(images[:3])
    values, kept = {INPUT: rt.view(INPUT, n).copy()}, {}  # the arena reuses the input's bytes
    rt.run(n, keep=kept)
    s_in, z_in = rt.scales[INPUT]
    x = np.empty((n,) + net.in_shape, np.float32)
    normalise_images(images[:3], rt.plan.mean, rt.plan.std, x)
    assert np.array_equal(values[INPUT], np.clip(np.round(x.astype(np.float64) / s_in) + z_in, 0, 255))
    kinds = set()
    for s in rt.plan.steps[:-1]:
        expected = _simulate(rt, s, values)
        assert np.array_equal(kept[s.output], expected.reshape(kept[s.output].shape)), s.name
        values[s.output] = kept[s.output]
        kinds.add((s.kind, s.res_mode, s.stride))
    assert {k[0] for k in kinds} >= {"conv"} and any(k[1] for k in kinds)  # residuals were checked
    last = rt.plan.steps[-1]
    q = rt.q[last.name]
    xl = values[last.inputs[0]].reshape(n, -1).astype(np.int64)
    o = q.Wq.shape[0]
    logits = ((xl @ q.Wq.T.astype(np.int64) + q.bias[:o]) * q.dequant).astype(np.float32)
    assert np.array_equal(rt.output(n), logits)


def _walk_equals_steps(rt, images, n):
    """The compiled walk's logits equal those of the step-by-step calls, from a cleared arena."""
    rt.run(rt.load_input(images[:n]), keep={})
    steps = rt.output(n).copy()
    rt.arena[:], rt.logits[:] = 0, 0
    rt.run(rt.load_input(images[:n]))
    return np.array_equal(rt.output(n), steps)


def test_the_compiled_walk_gives_the_bits_of_the_steps(quantised):
    net, rt, images = quantised
    assert rt.segments == [(0, len(rt.plan.steps))]  # one compiled call: no float layer
    assert _walk_equals_steps(rt, images, 3) and _walk_equals_steps(rt, images, 2)
    one = Int8Runtime(net, rt.scales, batch=1)  # batch 1: tiles split an image's rows
    assert _walk_equals_steps(one, images, 1)


def _sparse_convs(rt):
    return [name for name, (kernel, _) in rt.kernels().items() if kernel.startswith("int8-conv-sparse-")]


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=pytest.mark.skipif(not cpu_has_vnni(),
                                                                                    reason="no AVX-512 VNNI"))])
def test_the_sparse_and_dense_gemms_give_the_same_network_bits(quantised, vnni):
    net, rt, images = quantised
    sparse, dense = (Int8Runtime(net, rt.scales, batch=3, vnni=vnni, sparse=how) for how in ("always", "never"))
    assert _sparse_convs(sparse) and not _sparse_convs(dense) and sparse.sparse_layers() == []
    a, b = {}, {}
    for runtime, keep in ((sparse, a), (dense, b)):
        runtime.run(runtime.load_input(images[:3]), keep=keep)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(sparse.predict(images), dense.predict(images))
    measured = Int8Runtime(net, rt.scales, batch=3, vnni=vnni)  # the default: each candidate timed
    assert set(_sparse_convs(measured)) <= set(_sparse_convs(sparse))
    assert np.array_equal(measured.predict(images), dense.predict(images))


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=pytest.mark.skipif(not cpu_has_vnni(),
                                                                                    reason="no AVX-512 VNNI"))])
def test_output_channels_in_the_lanes_give_the_same_network_bits(quantised, vnni):
    """Every conv and linear that can runs npdc.kernels.int8_blocked: each step's bytes are the
    dense GEMM's (the cifar net's 64-channel stage fits; resnet18's narrow one has nothing to)."""
    net, rt, images = quantised
    lanes, dense = (Int8Runtime(net, rt.scales, batch=3, vnni=vnni, sparse="never", blocked=how)
                    for how in ("always", "never"))
    wide = [s.name for s in lanes.plan.steps if s.kind in ("conv", "linear") and lanes.q[s.name].bias.size % 64 == 0]
    chosen = [name for name, (kernel, _) in lanes.kernels().items() if "-blocked-" in kernel]
    assert chosen and set(chosen) <= set(wide) if wide else not chosen
    a, b = {}, {}
    for runtime, keep in ((lanes, a), (dense, b)):
        runtime.run(runtime.load_input(images[:3]), keep=keep)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(lanes.predict(images), dense.predict(images))


def test_int8_logits_stay_close_to_the_float_runtime(quantised):
    net, rt, images = quantised
    ref = build_runtime(net, {}, "dense", 3, walk="python").predict(images)
    got = rt.predict(images)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


@pytest.mark.skipif(not cpu_has_vnni(), reason="the CPU has no AVX-512 VNNI")
def test_vnni_and_portable_paths_give_the_same_network_bits(quantised):
    net, rt, images = quantised
    portable = Int8Runtime(net, rt.scales, batch=3, vnni=False)
    assert rt.vnni and not portable.vnni
    a, b = {}, {}
    for runtime, keep in ((rt, a), (portable, b)):
        runtime.run(runtime.load_input(images[:3]), keep=keep)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(rt.predict(images), portable.predict(images))


def test_the_portable_path_is_forced_by_the_environment(quantised, monkeypatch):
    net, rt, _ = quantised
    monkeypatch.setenv("NPDC_INT8_PORTABLE", "1")
    assert Int8Runtime(net, rt.scales, batch=1).vnni is False


@pytest.mark.parametrize("name", ["fmnist-resnet18", "fmnist-resnet20"])
def test_the_int32_bound_holds_for_the_largest_layer_of_the_shipped_models(name):
    net = load_model(MODELS / f"{name}.h5")
    plan = Plan(net, 1)
    k = max(int(np.prod(s.w_shape[1:])) for s in plan.steps if s.kind in ("conv", "linear"))
    assert k <= K.MAX_INPUTS
    assert k * 127 * 255 + BIAS_LIMIT < 2 ** 31  # the worst case |sum| of that layer, bias included


def test_weights_are_symmetric_per_output_channel():
    W = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.9]])
    Wq, scale = int8_weights(W)
    assert Wq[0].tolist() == [64, -127, 32] and Wq[1].tolist() == [0, 0, 0] and Wq[2, 0] == 127
    assert np.allclose(scale, [1 / 127, 1.0, 3 / 127])
    assert np.abs(Wq * scale[:, None] - W).max() <= scale.max() / 2


def test_prelu_is_refused_with_one_line(tmp_path):
    net = make_npdc(tmp_path / "p.npdc", NETS["resnet18-prelu"])
    scales = activation_scales(calibrate(net, raw_images(net, 4)))
    with pytest.raises(UserError, match="PReLU"):
        Int8Runtime(net, scales)


@pytest.mark.parametrize("name", ["tv-resnet50", "squeezenet1_1"])
def test_graph_nets_run_with_float_layers_between(tmp_path, name):
    """Max-pools and concats are generic steps: dequantised, run in float, quantised again."""
    net = make_npdc(tmp_path / "g.npdc", NETS[name])
    images = raw_images(net, 4)
    rt = Int8Runtime(net, activation_scales(calibrate(net, raw_images(net, 16, seed=3))), batch=2)
    assert rt.float_steps and len(rt.segments) > 2  # compiled runs between the float layers
    assert _walk_equals_steps(rt, images, 2)
    ref = build_runtime(net, {}, "dense", 2, walk="python").predict(images)
    assert np.abs(rt.predict(images) - ref).max() <= 0.15 * np.abs(ref).max()


def test_calibration_ranges_contain_zero_and_the_percentile_clips(quantised):
    net, _, _ = quantised
    images = raw_images(net, 8, seed=5)
    full = calibrate(net, images)
    clipped = calibrate(net, images, "percentile", 99.0)
    assert full.keys() == clipped.keys()
    for name, (lo, hi) in full.items():
        assert lo <= 0 <= hi
        assert lo <= clipped[name][0] <= 0 <= clipped[name][1] <= hi
    with pytest.raises(UserError, match="calibration method"):
        calibrate(net, images, "kl")


@pytest.mark.parametrize("how", ["blocked", "sparse"])
def test_the_shipped_models_wide_layers_give_the_dense_bits_in_every_kernel(how):
    """fmnist-resnet18's 4 x 4 stage and its 2048 -> 512 linear (pruned to a third of its words, so
    that it may run sparse) in each kernel that can run them: the same bytes at every step and
    the same logits, per step and through the compiled walk."""
    net = load_model(MODELS / "fmnist-resnet18.h5")
    fc5 = net.layers["fc5"].params["W"]
    fc5 *= np.random.default_rng(2).random(fc5.shape) < 0.1
    images = raw_images(net, 5)
    scales = activation_scales(calibrate(net, raw_images(net, 8, seed=7)))
    kw = {"sparse": "never", "blocked": "always"} if how == "blocked" else {"sparse": "always", "blocked": "never"}
    chosen, dense = (Int8Runtime(net, scales, batch=3, **k) for k in (kw, {"sparse": "never", "blocked": "never"}))
    kernels = {name: kernel for name, (kernel, _) in chosen.kernels().items() if f"-{how}-" in kernel}
    assert kernels["fc5"].startswith(f"int8-linear-{how}")
    assert how == "sparse" or {"res5b_2b", "res5a_2a"} <= kernels.keys()
    a, b = {}, {}
    for runtime, keep in ((chosen, a), (dense, b)):
        runtime.run(runtime.load_input(images[:3]), keep=keep)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(chosen.predict(images), dense.predict(images))
