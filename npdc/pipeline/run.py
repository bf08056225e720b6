"""The compress run: the stages of npdc.pipeline.stages in order, each checkpointed.

baseline -> prune -> quantize -> encode -> verify. Each finished stage writes its products into
the work folder and its record into `state.json` (atomically, with the run's key), so the
same command after a kill resumes after the last finished stage. The key (run_key) is the
schedule's digest and a sha256 of the input model file's bytes and of the dataset's arrays, so a
changed schedule, model or dataset starts over, with a one-line notice; so does a damaged
state.json. The encode and verify stages re-run when the output file is missing or another
`out` is asked for.
"""

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npdc.atomic import atomic_path, write_text
from npdc.codec.model import load_compressed
from npdc.compress.prune import sparsity_table
from npdc.compress.quantize import QuantizedLayer
from npdc.engine.metrics import search_metric
from npdc.engine.train import evaluate
from npdc.io.modelfile import load_model, save_model
from npdc.progress import say
from npdc.pipeline.auto_stages import Clock, auto_bits, auto_prune, guarded_quantize, layer_choices, searching
from npdc.pipeline.stages import (check_schedule_names, encode_stage, layer_bits, prune_stage, quantize_stage,
                                  verify_stage)


def run_key(schedule, model_path, data):
    """What a checkpoint must match to be resumed: the schedule's digest and the sha256 of the
    model file and of the dataset's arrays (shape, dtype and bytes of each split; an image
    folder's file names, sizes and times)."""
    model = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    arrays = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a = getattr(data, name, None)
        arrays.update(f"{name}:{None if a is None else (a.shape, a.dtype.str)};".encode())
        if hasattr(a, "fingerprint"):  # an image folder: its files, not every decoded image
            arrays.update(a.fingerprint())
        elif a is not None:
            arrays.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return {"schedule": schedule.digest(), "model": model, "data": arrays.hexdigest()}


class Checkpoints:
    """Finished stages in a work folder: state.json names them, with the run's key (run_key).
    A state of another key, or one that cannot be read, is a fresh start, told through `log`."""

    def __init__(self, folder, key, log=say):
        self.folder, self.key = Path(folder), key
        self.folder.mkdir(parents=True, exist_ok=True)
        state_path = self.folder / "state.json"
        self.done, self.out, self.partial = {}, None, {}
        if not state_path.is_file():
            return
        try:
            state = json.loads(state_path.read_text())
            done, out, partial = state["done"], state.get("out"), state.get("partial", {})
            if not isinstance(done, dict) or not all(isinstance(r, dict) for r in done.values()):
                raise ValueError("its stages are not records")
            if not isinstance(partial, dict) or not all(isinstance(r, dict) for r in partial.values()):
                raise ValueError("its unfinished stages are not records")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log(f"starting over: {state_path} is damaged ({str(e).splitlines()[0][:80]})")
            return
        if state.get("key") != key:
            old = state.get("key") if isinstance(state.get("key"), dict) else {}
            changed = [k for k in key if old.get(k) != key[k]] if isinstance(key, dict) else []
            log(f"starting over: the {' and '.join(changed) or 'run'} changed since the checkpoint in {self.folder}")
            return
        self.done, self.out, self.partial = done, out, partial

    def mark(self, stage, record, out=None):
        self.done[stage] = record
        self.partial.pop(stage, None)
        self.out = out if out is not None else self.out
        self._write()

    def mark_partial(self, stage, record):
        """How far an unfinished stage got, for it to go on from there after a kill."""
        self.partial[stage] = record
        self._write()

    def _write(self):
        write_text(self.folder / "state.json",
                   json.dumps({"key": self.key, "out": self.out, "done": self.done,
                               "partial": self.partial}, indent=1))

    def need_output(self, out, log=say):
        """Forget encode and verify when the output they made is missing or another is asked for."""
        out = str(Path(out).resolve())
        if "encode" in self.done and (self.out != out or not Path(out).is_file()):
            log(f"re-encoding from the last checkpoint: {out} is missing or new")
            self.done.pop("encode", None)
            self.done.pop("verify", None)


@dataclass
class _Run:
    """What every stage of one run may read: the teacher, the splits, the schedule, the paths,
    the checkpoints, the clock. The searching schedules train on x, y without the validation
    images x_val, y_val (held out of the training split), and judge by `metric`
    (npdc.engine.metrics) on them; the others train on all of it."""
    teacher: object
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    schedule: object
    work: Path
    out: Path
    progress: bool
    ck: object = None
    clock: object = None
    executor: object = None
    log: object = say
    metric: object = None

    @property
    def hyper(self):
        return {"batch_size": self.schedule.batch_size, "seed": self.schedule.seed,
                "progress": self.progress, "keep": tuple(self.schedule.keep)}


def _baseline(r):
    record = {"accuracy": evaluate(r.teacher, r.x_test, r.y_test, progress=r.progress)["accuracy"]}
    if searching(r.schedule):
        record.update(val_accuracy=r.metric.score(r.teacher), val_images=len(r.y_val),
                      val_count=r.metric.count, val_units=r.metric.units)
    return record


def _prune(r):
    if r.schedule.prune.method == "auto":
        student, record = auto_prune(r)
    else:
        student, record = prune_stage(r.teacher, r.x, r.y, r.schedule.prune, **r.hyper)
    save_model(r.work / "pruned.h5", student, {"stage": "prune"})
    return {**record, "accuracy": evaluate(student, r.x_test, r.y_test)["accuracy"],
            "sparsity": sparsity_table(student)[1]["sparsity"]}


def _bits(r):
    return auto_bits(r) if r.schedule.quantize.widths == "auto" else {"layer_bits": {}}


def _quantize(r):
    stage = r.schedule.quantize
    stage = dataclasses.replace(stage, layer_bits={**r.ck.done["bits"]["layer_bits"], **stage.layer_bits})
    student = load_model(r.work / "pruned.h5")
    bits = {n: b for n, b in layer_bits(student, stage).items() if n not in r.schedule.keep}
    student, quantized, record = quantize_stage(student, r.teacher, r.x, r.y, stage, **r.hyper)
    if r.schedule.quantize.widths == "auto":
        student, quantized, record = guarded_quantize(r, stage, student, quantized, record)
    save_model(r.work / "quantized.h5", student, {"stage": "quantize"})
    save_quantized(r.work / "quantized.npz", quantized)
    return {**record, "layer_bits": bits}


def _encode(r):
    return encode_stage(load_model(r.work / "quantized.h5"), load_quantized(r.work / "quantized.npz"),
                        r.schedule.encode, r.out, r.x)


def _verify(r):
    record = verify_stage(r.out, r.x_test, r.y_test, r.progress)
    if searching(r.schedule):
        record["val_accuracy"] = r.metric.score(load_compressed(r.out)[0])
    return record


STAGES = (("baseline", _baseline), ("prune", _prune), ("bits", _bits), ("quantize", _quantize),
          ("encode", _encode), ("verify", _verify))
_LOGGED = {"baseline": "baseline accuracy", "prune": "pruned accuracy"}


def run(model_path, data, schedule, out, workdir, progress=True, log=say, executor=None):
    """Compress the model at `model_path` on dataset `data`; returns the result dict. The
    searching schedules decide on images held out of the training split (data.held_out) and
    run `executor`'s jobs (npdc.jobs); the test split only reports."""
    if searching(schedule):
        x, y, x_val, y_val = data.held_out(schedule.search.val_fraction, schedule.seed)
    else:
        (x, y), x_val, y_val = data.require("train"), None, None
    x_test, y_test = data.require("test")
    ck = Checkpoints(workdir, run_key(schedule, model_path, data), log)
    r = _Run(load_model(model_path), x, y, x_val, y_val, x_test, y_test, schedule, Path(workdir),
             Path(out), progress, ck, Clock(schedule.search.time_budget, ck), executor, log)
    check_schedule_names(r.teacher, schedule)
    if searching(schedule):
        r.metric = search_metric(schedule.search.metric, r.teacher, x_val, y_val,
                                 schedule.search.embedding or None, schedule.seed)
    ck.need_output(out, log)
    for name, stage in STAGES:
        if name not in ck.done:
            started = time.monotonic()
            record = stage(r)
            record["seconds"] = time.monotonic() - started
            ck.mark(name, record, str(r.out.resolve()))
            r.clock.save()
        if name in _LOGGED:
            log(f"{_LOGGED[name]} {ck.done[name]['accuracy']:.4f}")
    teacher = r.teacher
    size_before = 4 * (teacher.num_params() + sum(b.size for b in teacher.buffers().values()))
    size_after = r.out.stat().st_size
    result = {"accuracy_before": ck.done["baseline"]["accuracy"], "accuracy_pruned": ck.done["prune"]["accuracy"],
              "accuracy_after": ck.done["verify"]["accuracy"], "size_before_bytes": size_before,
              "size_after_bytes": size_after, "ratio": size_before / size_after,
              "schedule": dataclasses.asdict(schedule), "minutes": r.clock.elapsed() / 60,
              "compile_seconds": r.clock.compiling(),
              "stage_seconds": {name: ck.done[name].get("seconds") for name, _ in STAGES}}
    if searching(schedule):
        result["search"] = {"val_images": len(r.y_val), "settings": dataclasses.asdict(schedule.search),
                            "metric": r.metric.name, "val_count": r.metric.count, "val_units": r.metric.units,
                            "embedding": getattr(r.metric, "layer", None),
                            "val_accuracy_before": ck.done["baseline"]["val_accuracy"],
                            "val_accuracy_after": ck.done["verify"]["val_accuracy"],
                            "prune": {k: v for k, v in ck.done["prune"].items() if k != "accuracy"},
                            "bits": ck.done["bits"],
                            "layers": layer_choices(teacher, load_model(r.work / "pruned.h5"),
                                                    ck.done["quantize"]["layer_bits"], schedule.keep)}
    return result


def save_quantized(path, quantized):
    """The quantize stage's result, {path: QuantizedLayer}, as plain arrays in an .npz."""
    arrays = {}
    for p, q in quantized.items():
        arrays[f"indices:{p}"], arrays[f"codebook:{p}"] = q.indices, q.codebook
        arrays[f"sparse:{p}"] = np.bool_(q.sparse)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_quantized(path):
    with np.load(path, allow_pickle=False) as f:
        paths = [k.split(":", 1)[1] for k in f.files if k.startswith("indices:")]
        return {p: QuantizedLayer(f[f"indices:{p}"], f[f"codebook:{p}"], bool(f[f"sparse:{p}"]))
                for p in paths}
