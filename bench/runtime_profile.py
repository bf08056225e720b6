"""Where the compiled float runtime's time goes, on the bench's 90 %-cut files of cifar-resnet20
or the shipped fmnist-resnet18 (`auto` weights, as the runtime bench's `npdc` engine).

    python bench/runtime_profile.py steps cifar-resnet20 1      # best time of each step alone
    python bench/runtime_profile.py ab fmnist-resnet18 128      # with and without a kernel, and ONNX Runtime
    python bench/runtime_profile.py ort cifar-resnet20 1        # ONNX Runtime's own time per node
    python bench/runtime_profile.py after fmnist-resnet18 1     # Python right after a forward
    python bench/runtime_profile.py prefix fmnist-resnet18 1    # each step in place, in the forward

`ort` runs ONNX Runtime (when installed) on the same net exported by npdc, with its profiler on,
and prints each node's best kernel time: the per-layer figures to hold `steps` against.
`after` times, in alternating rounds: `predict` (images in, logits out: one compiled call); the
same three parts called from Python; the compiled walk of loaded images alone; and Python's own
work right after a walk (loading the images from Python, three NumPy calls; copying ten floats;
a loop of 100 iterations), each also right after itself, warm.
`prefix` times every prefix of the plan as one walk (steps 0..k, best over the rounds) and prints
the differences: each step's time where it runs in a forward, its inputs and weights as cold as
the steps before leave them (the plan must have no host steps). Differences of two best times:
a step's figure is good to a few microseconds only, and may come out below zero.
`steps` prints each step's kernel, shapes, best time over the rounds and multiply-add rate, then
the sum of the steps and the whole forward. `ab` builds the runtime twice, once with every
candidate and once without the `--without` kernels (default `blocked`), and times both and ONNX
Runtime (when installed) in alternation, one call of each per round in an order that turns
round by round (whichever engine runs right after ONNX Runtime loses: its workers spin after a
call and npdc's, waiting passively, then wait for a core); per-layer choices are
measured when the runtimes are built (set NPDC_CACHE_DIR to a new folder to measure afresh).
"""

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npdc  # noqa: E402

npdc.tune_process()

from bench.test_runtime_bench import SHIPPED, _compress  # noqa: E402
from npdc.engine.resnet import build_net  # noqa: E402
from npdc.io.modelfile import load_model  # noqa: E402
from npdc.kernels import walk as W  # noqa: E402
from npdc.runtime import program  # noqa: E402
from npdc.runtime.infer import build_runtime  # noqa: E402


def _model(name, folder):
    net = load_model(SHIPPED) if name == "fmnist-resnet18" else build_net({"arch": name}, seed=0)
    path = folder / "m.npdc"
    return (path,) + tuple(_compress(net, path))


def steps(path, net, codes, batch, rounds):
    x = np.random.default_rng(0).random((batch,) + tuple(net.in_shape)).astype(np.float32)
    rt = build_runtime(net, codes, "auto", batch, path, "compiled")
    whole = []
    for _ in range(rounds):
        t = time.perf_counter()
        rt.predict(x)
        whole.append(time.perf_counter() - t)
    segments = rt.program.segments(len(rt.plan.steps) - 1)
    host = {seg[0]: call for seg, call in zip(segments, rt.calls) if len(seg) == 1}
    best = [np.inf] * len(rt.plan.steps)
    rt.load_input(x)
    for _ in range(rounds):
        for k in range(len(rt.plan.steps)):
            call = host.get(k, lambda k=k: rt.program.run(k, k + 1, batch))
            t = time.perf_counter()
            call()
            best[k] = min(best[k], time.perf_counter() - t)
    kernels = rt.kernels()
    for k, s in enumerate(rt.plan.steps):
        xs, ys = rt.plan.values[s.inputs[0]].shape, rt.plan.values[s.output].shape
        macs = batch * int(np.prod(ys)) * int(np.prod(s.w_shape[1:])) if s.kind == "conv" else 0
        print(f"{s.name:12s} {'/'.join(map(str, kernels[s.name])):14s} {str(xs):15s} -> {str(ys):15s}"
              f" {best[k] * 1e3:8.3f} ms {macs / best[k] / 1e9:6.1f} GMAC/s")
    print(f"sum of steps {sum(best) * 1e3:.3f} ms; whole forward best {min(whole) * 1e3:.3f} ms, "
          f"median {np.median(whole) * 1e3:.3f} ms")


def after(path, net, codes, batch, rounds):
    x = np.random.default_rng(0).random((batch,) + tuple(net.in_shape)).astype(np.float32)
    rt = build_runtime(net, codes, "auto", batch, path, "compiled")
    stop, small = len(rt.plan.steps), np.ones(10, np.float32)
    walk = lambda: rt.program.run(0, stop, batch)  # noqa: E731

    def loop():
        for _ in range(100):
            pass

    work = {"load_input": lambda: rt.load_input(x), "copy 10 floats": small.copy, "loop of 100": loop}
    calls = {"predict": (None, lambda: rt.predict(x)), "walk alone": (None, walk),
             "load, walk, copy from Python": (None, lambda: (rt.load_input(x), rt.forward(batch).copy()))}
    for name, fn in work.items():
        calls[f"{name} after a walk"] = (walk, fn)
        calls[f"{name} warm"] = (fn, fn)
    names, times = list(calls), {k: [] for k in calls}
    rt.predict(x)
    for i in range(rounds):
        for k in names[i % len(names):] + names[:i % len(names)]:
            before, fn = calls[k]
            if before is not None:
                before()
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    for k, t in times.items():
        print(f"{k:28s} median {np.median(t) * 1e3:8.4f} ms, best {min(t) * 1e3:8.4f} ms")


def prefix(path, net, codes, batch, rounds):
    x = np.random.default_rng(0).random((batch,) + tuple(net.in_shape)).astype(np.float32)
    rt = build_runtime(net, codes, "auto", batch, path, "compiled")
    stop = len(rt.plan.steps)
    rt.load_input(x)
    best = np.full(stop + 1, np.inf)
    for _ in range(rounds):
        for k in range(stop + 1):
            t = time.perf_counter()
            rt.program.run(0, k, batch)
            best[k] = min(best[k], time.perf_counter() - t)
    kernels = rt.kernels()
    for k, s in enumerate(rt.plan.steps):
        print(f"{s.name:12s} {'/'.join(map(str, kernels[s.name])):16s} {(best[k + 1] - best[k]) * 1e3:8.3f} ms")
    print(f"no step {best[0] * 1e3:.4f} ms; the whole walk {best[stop] * 1e3:.3f} ms")


def ab(path, net, codes, batch, rounds, without, folder):
    x = np.random.default_rng(0).random((batch,) + tuple(net.in_shape)).astype(np.float32)
    every = program.candidates
    drop = {op for op, name in W.OP_NAMES.items() if name in without}
    engines = {"with": build_runtime(net, codes, "auto", batch, path, "compiled")}
    program.candidates = lambda rt, s: [c for c in every(rt, s) if c[0] not in drop]
    try:
        engines["without"] = build_runtime(net, codes, "auto", batch, path, "compiled")
    finally:
        program.candidates = every
    print("kernels with:", dict(Counter(v[0] for v in engines["with"].kernels().values())))
    calls = {k: rt.predict for k, rt in engines.items()}
    try:
        import onnxruntime as ort

        from npdc.io.onnx_export import export_onnx
        export_onnx(net, folder / "m.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
        session = ort.InferenceSession(str(folder / "m.onnx"), options, providers=["CPUExecutionProvider"])
        calls["onnxruntime"] = lambda x: session.run(None, {"images": x})[0]
    except ImportError:
        pass
    names, times = list(calls), {k: [] for k in calls}
    for i in range(rounds):  # the order turns each round: the engine after ONNX Runtime's
        for k in names[i % len(names):] + names[:i % len(names)]:  # spinning workers waits
            t = time.perf_counter()
            calls[k](x)
            times[k].append(time.perf_counter() - t)
    for k, t in times.items():
        print(f"{k:12s} median {np.median(t) * 1e3:9.3f} ms, best {min(t) * 1e3:9.3f} ms "
              f"({batch / min(t):8.1f} images/s at best)")


def ort_nodes(net, batch, rounds, folder):
    """Each ONNX Runtime node's best kernel time (its profiler's "<node>_kernel_time" events)."""
    import json

    import onnxruntime as ort

    from npdc.io.onnx_export import export_onnx
    export_onnx(net, folder / "m.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.enable_profiling, options.profile_file_prefix = True, str(folder / "ort")
    session = ort.InferenceSession(str(folder / "m.onnx"), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch,) + tuple(net.in_shape)).astype(np.float32)
    whole = []
    for _ in range(rounds):
        t = time.perf_counter()
        session.run(None, {"images": x})
        whole.append(time.perf_counter() - t)
    best = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            key = (name[:-len("_kernel_time")], event.get("args", {}).get("op_name", ""))
            best[key] = min(best.get(key, np.inf), event["dur"])
    for (name, op), us in best.items():
        print(f"{name:32s} {op:20s} {us / 1e3:8.3f} ms")
    print(f"sum of nodes {sum(best.values()) / 1e3:.3f} ms; whole run best {min(whole) * 1e3:.3f} ms "
          f"(profiling on)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("steps", "ab", "ort", "after", "prefix"))
    parser.add_argument("model", choices=("cifar-resnet20", "fmnist-resnet18"))
    parser.add_argument("batch", type=int)
    parser.add_argument("--rounds", type=int, default=0, help="default: 200 at batch 1, else 7")
    parser.add_argument("--without", action="append", default=None, help="kernel names (ab); default blocked")
    args = parser.parse_args()
    rounds = args.rounds or (200 if args.batch == 1 else 7)
    folder = Path(tempfile.mkdtemp())
    path, net, codes = _model(args.model, folder)
    if args.what == "steps":
        steps(path, net, codes, args.batch, rounds)
    elif args.what == "prefix":
        prefix(path, net, codes, args.batch, rounds)
    elif args.what == "after":
        after(path, net, codes, args.batch, rounds)
    elif args.what == "ort":
        ort_nodes(net, args.batch, rounds, folder)
    else:
        ab(path, net, codes, args.batch, rounds, args.without or ["blocked"], folder)


if __name__ == "__main__":
    main()
