"""The compress pipeline: Deep Compression's three stages (Han, Mao & Dally 2016) as one run.

evaluate the baseline -> prune gradually with distillation (npdc.compress.agp, .distill) ->
quantize with k-means and retrain the centroids (npdc.compress.quantize) -> encode the .npdc file
(npdc.codec.model) -> decode what was written and evaluate it.

The schedule is TOML (stdlib tomllib) with typed, validated fields; an unknown key is an error
that names it. Each finished stage is checkpointed atomically in the work folder together with the
schedule's hash, so re-running the same command after a kill resumes after the last finished
stage, and a changed schedule starts over.
"""

import dataclasses
import functools
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npdc.errors import UserError


@dataclass
class PruneStage:
    target: float = 80.0          # final sparsity in percent (AGP, one global magnitude cut)
    layer_s: str = "conv1=0"      # layers with 0 stay dense
    epochs: int = 1
    lr: float = 0.005
    kd: str = "kl"
    tau: float = 4.0
    hard_weight: float = 0.0
    train_images: int = 0         # 0 = the whole training split


@dataclass
class QuantizeStage:
    method: str = "kmeans"
    conv_bits: int = 7
    fc_bits: int = 4
    layer_bits: dict = field(default_factory=dict)
    epochs: int = 1               # centroid retraining
    lr: float = 0.001
    kd: str = "kl"
    tau: float = 4.0
    hard_weight: float = 0.0
    train_images: int = 0


@dataclass
class EncodeStage:
    raw_dtype: str = "float16"
    codebook_dtype: str = "float32"


@dataclass
class Schedule:
    seed: int = 0
    batch_size: int = 128
    prune: PruneStage = field(default_factory=PruneStage)
    quantize: QuantizeStage = field(default_factory=QuantizeStage)
    encode: EncodeStage = field(default_factory=EncodeStage)

    def digest(self):
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


PRESETS = {
    "fast": {"prune": {"target": 80.0, "epochs": 1, "train_images": 30000},
             "quantize": {"epochs": 1, "train_images": 10000}},
    "full": {"prune": {"target": 91.0, "epochs": 6, "lr": 0.02, "hard_weight": 1.0},
             "quantize": {"conv_bits": 5, "fc_bits": 4, "epochs": 2, "hard_weight": 1.0}},
}


def _fill(cls, table, where):
    """Build dataclass `cls` from a TOML table, checking names and types."""
    if not isinstance(table, dict):
        raise UserError(f"schedule: [{where}] must be a table")
    kinds = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        name = f"{where}.{key}" if where else key
        if key not in kinds:
            raise UserError(f"schedule: unknown key {name!r}; known: {', '.join(kinds)}")
        default = kinds[key].default if kinds[key].default is not dataclasses.MISSING else kinds[key].default_factory()
        if dataclasses.is_dataclass(default):
            values[key] = _fill(type(default), value, name)
            continue
        want = type(default)
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise UserError(f"schedule: {name} must be {want.__name__}, not {type(value).__name__}")
        values[key] = value
    return cls(**values)


def _merge(base, extra):
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_schedule(path=None, preset="fast"):
    """The preset's schedule, overridden by the TOML file at `path` if given."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    table = PRESETS[preset]
    if path is not None:
        try:
            with open(path, "rb") as f:
                table = _merge(table, tomllib.load(f))
        except FileNotFoundError:
            raise UserError(f"no schedule file at {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
    schedule = _fill(Schedule, table, "")
    _validate(schedule)
    return schedule


def _validate(s):
    checks = [(0 < s.prune.target < 100, "prune.target must be between 0 and 100"),
              (s.batch_size >= 1, "batch_size must be >= 1"),
              (s.prune.epochs >= 1, "prune.epochs must be >= 1"),
              (s.quantize.epochs >= 0, "quantize.epochs must be >= 0"),
              (s.quantize.method in ("linear", "kmeans", "optimal"), "quantize.method: linear, kmeans or optimal"),
              (s.prune.kd in ("kl", "l2", "cosine"), "prune.kd: kl, l2 or cosine"),
              (s.quantize.kd in ("kl", "l2", "cosine"), "quantize.kd: kl, l2 or cosine"),
              (s.encode.raw_dtype in ("float16", "float32"), "encode.raw_dtype: float16 or float32"),
              (s.encode.codebook_dtype in ("float16", "float32"), "encode.codebook_dtype: float16 or float32")]
    for bits in [s.quantize.conv_bits, s.quantize.fc_bits, *s.quantize.layer_bits.values()]:
        checks.append((isinstance(bits, int) and 1 <= bits <= 16, "quantize bits must be integers 1..16"))
    for ok, message in checks:
        if not ok:
            raise UserError(f"schedule: {message}")


# -- the run ---------------------------------------------------------------------------------------
class Checkpoints:
    """Finished stages in a work folder: state.json names them, with the schedule digest."""

    def __init__(self, folder, digest):
        self.folder, self.digest = Path(folder), digest
        self.folder.mkdir(parents=True, exist_ok=True)
        state_path = self.folder / "state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.done = state.get("done", {}) if state.get("digest") == digest else {}

    def mark(self, stage, record):
        from npdc.atomic import write_text

        self.done[stage] = record
        write_text(self.folder / "state.json", json.dumps({"digest": self.digest, "done": self.done}, indent=1))


def _subset(x, y, n, seed):
    if not n or n >= len(x):
        return x, y
    pick = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[pick], y[pick]


def _layer_bits(net, schedule):
    from npdc.compress.prune import prunable_layers
    from npdc.engine.layers import Conv2d

    q = schedule.quantize
    return {n: q.layer_bits.get(n, q.conv_bits if isinstance(net.layers[n], Conv2d) else q.fc_bits)
            for n in prunable_layers(net)}


def run(model_path, data, schedule, out, workdir, progress=True, log=print):
    """Compress the model at `model_path` on dataset `data`; returns the result dict."""
    from npdc.codec.model import load_compressed, save_compressed
    from npdc.compress.agp import GradualPruner
    from npdc.compress.distill import Distillation, prune_and_retrain
    from npdc.compress.prune import masks_from_zeros, parse_layer_s
    from npdc.compress.quantize import CentroidSGD, quantize_net
    from npdc.engine.train import evaluate, fit
    from npdc.io.modelfile import load_model, save_model

    teacher = load_model(model_path)
    x, y = data.require("train")
    x_test, y_test = data.require("test")
    ck = Checkpoints(workdir, schedule.digest())
    hyper = dict(batch_size=schedule.batch_size, seed=schedule.seed)

    if "baseline" not in ck.done:
        ck.mark("baseline", {"accuracy": evaluate(teacher, x_test, y_test, progress=progress)["accuracy"]})
    log(f"baseline accuracy {ck.done['baseline']['accuracy']:.4f}")

    pruned_path = Path(workdir) / "pruned.h5"
    if "prune" not in ck.done:
        p = schedule.prune
        overrides = parse_layer_s(p.layer_s)
        xs, ys = _subset(x, y, p.train_images, schedule.seed)
        steps = p.epochs * -(-len(xs) // schedule.batch_size)
        gradual = functools.partial(GradualPruner, target=p.target / 100, total_steps=steps, per_layer=False,
                                    exclude=[n for n, (v, _) in overrides.items() if v == 0])
        student, _, _ = prune_and_retrain(teacher, xs, ys, None, gradual, kd=p.kd, tau=p.tau,
                                          hard_weight=p.hard_weight, epochs=p.epochs, lr=p.lr,
                                          progress=progress, **hyper)
        save_model(pruned_path, student, {"stage": "prune"})
        ck.mark("prune", {"accuracy": evaluate(student, x_test, y_test)["accuracy"]})
    log(f"pruned accuracy {ck.done['prune']['accuracy']:.4f}")

    quantized_path, codes_path = Path(workdir) / "quantized.h5", Path(workdir) / "codes.npz"
    if "quantize" not in ck.done:
        q = schedule.quantize
        student = load_model(pruned_path)
        masks = masks_from_zeros(student)
        codes = quantize_net(student, _layer_bits(student, schedule), q.method, masks)
        if q.epochs:
            shared = {p: (full[full > 0] - 1, cb, masks[p]) for p, (full, cb, _) in codes.items()}
            xs, ys = _subset(x, y, q.train_images, schedule.seed + 1)
            fit(student, xs, ys, q.epochs, lr=q.lr, weight_decay=0.0, progress=progress,
                objective=Distillation(teacher, q.kd, q.tau, hard_weight=q.hard_weight),
                optimizer=functools.partial(CentroidSGD, shared=shared), **hyper)
            codes = {p: (full, _trained_codebook(student.params()[p], full, cb), sparse)
                     for p, (full, cb, sparse) in codes.items()}
        save_model(quantized_path, student, {"stage": "quantize"})
        _save_codes(codes_path, codes)
        ck.mark("quantize", {})

    out = Path(out)
    if "encode" not in ck.done:
        size = save_compressed(out, load_model(quantized_path), _load_codes(codes_path),
                               schedule.encode.raw_dtype, schedule.encode.codebook_dtype)
        ck.mark("encode", {"size_bytes": size})

    if "verify" not in ck.done:
        net, _ = load_compressed(out)
        ck.mark("verify", {"accuracy": evaluate(net, x_test, y_test, progress=progress)["accuracy"]})
    size_before = 4 * (teacher.num_params() + sum(b.size for b in teacher.buffers().values()))
    size_after = out.stat().st_size
    return {"accuracy_before": ck.done["baseline"]["accuracy"], "accuracy_pruned": ck.done["prune"]["accuracy"],
            "accuracy_after": ck.done["verify"]["accuracy"], "size_before_bytes": size_before,
            "size_after_bytes": size_after, "ratio": size_before / size_after,
            "schedule": dataclasses.asdict(schedule)}


def _save_codes(path, codes):
    """The quantize stage's result, {path: (indices, codebook, sparse)}, as plain arrays."""
    from npdc.atomic import atomic_path

    arrays = {}
    for p, (indices, codebook, sparse) in codes.items():
        arrays[f"indices:{p}"], arrays[f"codebook:{p}"] = indices, codebook
        arrays[f"sparse:{p}"] = np.bool_(sparse)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_codes(path):
    with np.load(path, allow_pickle=False) as f:
        paths = [k.split(":", 1)[1] for k in f.files if k.startswith("indices:")]
        return {p: (f[f"indices:{p}"], f[f"codebook:{p}"], bool(f[f"sparse:{p}"]) or None) for p in paths}


def _trained_codebook(W, full, before):
    """The centroids after retraining, read back from the weights that share them (a centroid
    nobody uses keeps its old value)."""
    codebook = np.array(before, np.float32)
    flat = W.reshape(-1)
    member = np.full(len(codebook), -1)
    positions = np.flatnonzero(full)
    member[full[positions] - 1] = positions  # any member will do: they all hold the centroid
    used = member >= 0
    codebook[used] = flat[member[used]]
    return codebook
