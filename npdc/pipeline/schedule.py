"""The compression schedule: typed stage settings, the presets, and a TOML file over them.

A schedule is TOML (stdlib tomllib) read into dataclasses with typed, validated fields; an unknown
key, a wrong type or a value out of range is a UserError that names it. `digest()` identifies a
schedule, so checkpoints made under another one are not reused.
"""

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field

from npdc.errors import UserError
from npdc.io.datasets import VAL_FRACTION

PRUNE_METHODS = ("auto", "agp", "std", "percent", "none")
GRANULARITIES = ("element", "vector", "kernel", "filter")
KD_LOSSES = ("kl", "l2", "cosine", "none")


@dataclass
class PruneStage:
    method: str = "agp"           # auto: per-layer sparsity searched within [search]'s budget
                                  # (npdc.pipeline.auto); agp: gradual, during retraining;
                                  # std: |w| < std(W)*s; percent; none: quantize and encode only
    target: float = 80.0          # agp and percent: sparsity in percent
    s: float = 0.0                # std: the threshold multiplier
    layer_s: str = ""             # per-layer overrides; with agp only 0 (kept dense) is allowed
    keep_first: bool = True       # the first conv (conv1, features.0.0: it sees the pixels) stays
                                  # dense unless layer_s names it
    granularity: str = "element"
    agp_scope: str = "global"     # agp: one cut across layers, or every layer to the target
    epochs: int = 1
    lr: float = 0.005
    kd: str = "kl"                # distillation loss from the unpruned model; none = labels only
    tau: float = 4.0
    hard_weight: float = 0.0
    on: str = "logits"            # distil on the logits or on a named layer's output
    kd_layer: str = ""            # also match this layer's output (e.g. fc5) beside `kd`
    kd_layer_loss: str = "cosine"  # l2 or cosine
    kd_layer_weight: float = 1.0
    labels: bool = True           # false: ignore the training labels
    augment: bool = True          # false: retrain on the images as stored (no crops, no flips),
                                  # the teacher's outputs on them computed once (faster)
    train_images: int = 0         # 0 = the whole training split


@dataclass
class QuantizeStage:
    method: str = "kmeans"
    widths: str = "fixed"         # fixed: conv_bits, fc_bits and layer_bits; auto: per-layer bits
                                  # searched within [search]'s budget (layer_bits still win)
    conv_bits: int = 7
    fc_bits: int = 4
    layer_bits: dict = field(default_factory=dict)
    epochs: int = 1               # centroid retraining
    lr: float = 0.001
    kd: str = "kl"
    tau: float = 4.0
    hard_weight: float = 0.0
    augment: bool = True          # false: retrain on the images as stored (as the auto preset's
                                  # climb does: batch norm's statistics then stay those it learnt)
    train_images: int = 0


@dataclass
class EncodeStage:
    raw_dtype: str = "float16"
    codebook_dtype: str = "float32"
    int8: bool = False            # calibrate int8 inference and store the activation scales
    int8_images: int = 256        # training images the scales are calibrated on
    int8_method: str = "minmax"   # minmax or percentile (npdc.runtime.calibrate)


@dataclass
class SearchStage:
    """What prune.method = "auto" and quantize.widths = "auto" search within (npdc.pipeline.auto)."""
    max_drop: float = 0.3         # points of validation accuracy the compressed model may lose
    margin: float = 0.1           # share of max_drop held back for the noise of other images
    prune_share: float = 0.6      # share of max_drop the pruning may spend
    allocation: str = "global"    # global: one magnitude cut, fragile layers kept dense;
                                  # knapsack: per-layer levels from the sweep (npdc.compress.allocate)
    protect_drop: float = 1.0     # global: a layer losing more points alone at the lowest level stays dense
    val_fraction: float = VAL_FRACTION  # training images held out for the decisions (seeded)
    sensitivity_images: int = 1000  # validation images of the sweeps (the checks use them all)
    levels: list = field(default_factory=lambda: [50.0, 70.0, 85.0, 95.0, 98.0])
    first_sparsity: float = 0.5   # the climb's first step; then each keeps density_ratio of the rest
    one_shot: bool = True         # the first steps tried as one-shot cuts (no retraining) while they pass
    density_ratio: float = 0.6
    max_steps: int = 8
    step_images: int = 54000      # retraining images per climb step (doubled after a recovered one;
                                  # never more than the training images)
    recoveries: int = 1           # further rounds of retraining for a step that fails its check
    bits: list = field(default_factory=lambda: [2, 3, 4, 5, 6, 8])
    bits_train_images: int = 4000  # centroid retraining images of each bit-width candidate before
                                   # it is judged (0: judged as quantized)
    time_budget: float = 0.0      # minutes for the whole run; 0 = no limit
    metric: str = "accuracy"      # accuracy: top-1 on the validation images; verification: LFW's
                                  # protocol on pairs drawn from them (npdc.engine.metrics)
    embedding: str = ""           # verification: the embedding layer ("" = the classifier's input)


@dataclass
class Schedule:
    seed: int = 0
    batch_size: int = 128
    prune: PruneStage = field(default_factory=PruneStage)
    quantize: QuantizeStage = field(default_factory=QuantizeStage)
    encode: EncodeStage = field(default_factory=EncodeStage)
    search: SearchStage = field(default_factory=SearchStage)
    keep: list = field(default_factory=list)  # layers left unpruned and unquantized (float)

    def digest(self):
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


PRESETS = {
    "auto": {"prune": {"method": "auto", "lr": 0.02, "hard_weight": 1.0, "augment": False},
             "quantize": {"widths": "auto", "epochs": 1, "train_images": 20000, "augment": False},
             "search": {"time_budget": 10.0}},
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


def load_schedule(path=None, preset="auto", overrides=None):
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
        except IsADirectoryError:
            raise UserError(f"{path}: a directory, not a schedule file") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read the schedule ({e.strerror or e})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid TOML ({str(e).splitlines()[0]})") from None
    table = _merge(table, overrides or {})
    schedule = _fill(Schedule, table, "")
    validate_schedule(schedule)
    return schedule


def validate_schedule(s):
    """UserError naming the first setting of `s` out of range; nothing when all are valid."""
    checks = [(s.prune.method in PRUNE_METHODS, f"prune.method: {', '.join(PRUNE_METHODS)}"),
              (s.prune.method == "std" or 0 < s.prune.target < 100,
               "prune.target must be between 0 and 100"),
              (s.prune.granularity in GRANULARITIES, f"prune.granularity: {', '.join(GRANULARITIES)}"),
              (s.prune.agp_scope in ("global", "layer"), "prune.agp_scope: global or layer"),
              (s.batch_size >= 1, "batch_size must be >= 1"),
              (s.seed >= 0, f"seed must be >= 0, not {s.seed}"),
              (s.prune.epochs >= 0, "prune.epochs must be >= 0"),
              (s.prune.s >= 0, "prune.s must be >= 0"),
              (s.prune.train_images >= 0, "prune.train_images must be >= 0"),
              (s.quantize.train_images >= 0, "quantize.train_images must be >= 0"),
              (s.quantize.epochs >= 0, "quantize.epochs must be >= 0"),
              (s.quantize.method in ("linear", "kmeans", "optimal"), "quantize.method: linear, kmeans or optimal"),
              (s.prune.kd in KD_LOSSES, f"prune.kd: {', '.join(KD_LOSSES)}"),
              (s.prune.kd != "none" or s.prune.labels or s.prune.kd_layer,
               "prune.kd = none needs labels = true or a kd_layer"),
              (s.prune.kd_layer_loss in ("l2", "cosine"), "prune.kd_layer_loss: l2 or cosine"),
              (s.quantize.kd in ("kl", "l2", "cosine"), "quantize.kd: kl, l2 or cosine"),
              (s.encode.raw_dtype in ("float16", "float32"), "encode.raw_dtype: float16 or float32"),
              (s.encode.codebook_dtype in ("float16", "float32"), "encode.codebook_dtype: float16 or float32"),
              (s.encode.int8_images >= 1, "encode.int8_images must be >= 1"),
              (s.encode.int8_method in ("minmax", "percentile"), "encode.int8_method: minmax or percentile")]
    checks.append((all(isinstance(name, str) for name in s.keep), "keep must be a list of layer names"))
    q = s.search
    checks += [(s.quantize.widths in ("fixed", "auto"), "quantize.widths: fixed or auto"),
               (0 <= q.max_drop <= 100, f"search.max_drop must be 0..100 points, not {q.max_drop}"),
               (0 <= q.margin < 1 and 0 < q.prune_share <= 1, "search.margin in [0, 1), prune_share in (0, 1]"),
               (0 < q.val_fraction < 1, "search.val_fraction must be between 0 and 1"),
               (min(q.sensitivity_images, q.step_images) >= 1
                and min(q.max_steps, q.bits_train_images, q.recoveries) >= 0,
                "search.sensitivity_images and step_images must be >= 1, max_steps, "
                "bits_train_images and recoveries >= 0"),
               (q.allocation in ("global", "knapsack"), "search.allocation: global or knapsack"),
               (q.metric in ("accuracy", "verification"), "search.metric: accuracy or verification"),
               (q.metric == "accuracy" or s.prune.method == "auto" or s.quantize.widths == "auto",
                "search.metric = verification judges a search, and this schedule searches nothing "
                "(prune.method = auto or quantize.widths = auto; the auto preset does both)"),
               (q.protect_drop >= 0, "search.protect_drop must be >= 0 points"),
               (0 < q.first_sparsity < 1 and 0 < q.density_ratio < 1,
                "search.first_sparsity and density_ratio must be between 0 and 1"),
               (q.time_budget >= 0, "search.time_budget must be >= 0 minutes"),
               (bool(q.levels) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 100
                                       for v in q.levels), "search.levels: sparsities in percent, 0 < v < 100"),
               (bool(q.bits) and all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16
                                     for b in q.bits), "search.bits: integers 1..16")]
    for bits in [s.quantize.conv_bits, s.quantize.fc_bits, *s.quantize.layer_bits.values()]:
        checks.append((isinstance(bits, int) and 1 <= bits <= 16, "quantize bits must be integers 1..16"))
    for stage in (s.prune, s.quantize, s.search):
        for f in dataclasses.fields(stage):
            value = getattr(stage, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                checks.append((False, f"{type(stage).__name__.removesuffix('Stage').lower()}.{f.name} "
                                      f"must be finite, not {value}"))
    for ok, message in checks:
        if not ok:
            raise UserError(f"schedule: {message}")
