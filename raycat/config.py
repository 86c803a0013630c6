"""What each command computes and where it runs, as dataclasses. Plain Python: no torch, no Ray.

A job's config composes parts: `Recipe` (what a training run computes: the model, its data
transforms and every rate and stage), `Resources` (where it runs: workers, GPUs, CPUs, cache,
cluster) and the job's own inputs and outputs. Resume notes and `best_recipe.json` are the
`Recipe` part alone.

Every field is a CLI flag (or a positional) and a `--config` key; its help text sits in
`metadata["help"]`. `cli.py` builds each command's parser from these classes, so defaults, help
and choices live here only, and each value is validated once, in `__post_init__`, before any
cluster time is spent; errors name the flag.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from raycat.core.names import STEMS, TORCHVISION_ARCHS  # noqa: F401 - (the face's names for them too)
from raycat.core.schedules import steps_per_epoch
from raycat.errors import ConfigError

# Bodies (raycat/core/bodies.py): torchvision's ResNets by their names (core/names.py), any other
# CNN of timm's zoo by its name; the default's ImageNet weights come with the install (raycat/edge/weights.py).
DEFAULT_ARCH = "tf_efficientnet_lite0"
AUG_PRESETS = ("side_on", "top_down", "flip_shift", "none")
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("sgdr", "one_cycle")
LR_SUGGESTIONS = ("minimum", "valley", "steepest")
CACHE_MODES = ("auto", "memory", "stream")
TRACKERS = ("none", "mlflow", "tensorboard")


def arg(default: Any, help: str, positional: bool = False, choices: tuple | None = None,
        metavar: str | None = None) -> Any:
    meta = {"help": help, "positional": positional, "choices": choices, "metavar": metavar}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def given(help: str) -> Any:
    """A value the runner of the command passes in, never a flag (the command line as typed)."""
    return field(default="", metadata={"given": True, "help": help})


COMMAND_HELP = "the command as typed (`raycat train DATA ...`): what the run's report shows; set by the CLI"


def part(cls: type) -> Any:
    """A component of a job's config (its fields are the job's flags too)."""
    return field(default_factory=cls, metadata={"part": True})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{flag_name(name)}: {message}")


def _choice(cfg: Any, name: str, choices: tuple) -> None:
    value = getattr(cfg, name)
    _check(value in choices, name, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        _check(getattr(cfg, n) > 0, n, f"must be > 0, got {getattr(cfg, n)}")


def _non_negative(cfg: Any, *names: str) -> None:
    for n in names:
        _check(getattr(cfg, n) >= 0, n, f"must be >= 0, got {getattr(cfg, n)}")


DEFAULT_BATCH, MIN_STEPS = 64, 16  # Recipe.batch_for
PRECOMPUTE_CAP = 20  # epochs on precomputed activations at most, by default (Recipe.resolved)




@dataclass
class Recipe:
    """What a training run computes (docs/contract.md, 'The staged recipe'). None means: chosen from
    --weights (see `resolved`)."""

    arch: str = arg(DEFAULT_ARCH, "the body: torchvision's resnet18|34|50|101|152, resnext50_32x4d..., or any CNN of "
                    "timm's (tf_efficientnet_lite0, convnext_tiny, resnet50d, ...)")
    weights: str = arg("imagenet", "imagenet | none | path or URI of a state dict or a raycat model/ folder")
    stem: str = arg("imagenet", "the body's stem: imagenet (7x7 stride 2, max-pool), small (3x3 stride 1, "
                    "for images of 64 px or less), small_pool (small, then a max-pool)", choices=STEMS)
    size: int = arg(224, "image side in pixels, after resize and crop")
    batch_size: int | None = arg(None, "images per batch per worker (default: 64, halved down to 8 while an epoch "
                                 "would have fewer than 16 steps: a small set still gets updates enough)")
    aug: str = arg("side_on", "augmentation preset (flip_shift: a mirror and a 2-pixel shift, for small images)",
                   choices=AUG_PRESETS)
    max_zoom: float = arg(1.1, "largest random zoom of side_on/top_down")
    seed: int = arg(0, "seed for model initialisation, data order and augmentation")
    lr: float | None = arg(None, "base learning rate of the head (default: from lr_find)")
    lr_suggest: str = arg("minimum", "how lr_find picks the rate: minimum (the loss minimum / 10), valley, steepest",
                          choices=LR_SUGGESTIONS)
    lr_mult: float | None = arg(None, "m: layer groups train at [lr/m^2, lr/m, lr] after unfreezing "
                                "(default: 3 with pretrained weights, 1 from scratch)")
    precompute_epochs: int | None = arg(None, "epochs of the head on precomputed body activations at most: the "
                                        "stage ends at the first epoch that does not lower the valid loss "
                                        "(--until-overfit); default: 20 with pretrained weights, 0 from scratch")
    head_cycles: int | None = arg(None, "SGDR cycles (cycle_len=1) of the head with augmentation "
                                  "(default: 1 with pretrained weights, 0 from scratch)")
    unfrozen_cycles: int | None = arg(None, "SGDR cycles after unfreezing at most (cycle_mult=2: 1+2 epochs for 2, "
                                      "1+2+4 for 3; default: 4 with pretrained weights, 3 from scratch)")
    until_overfit: bool = arg(True, "end the precompute stage at the first epoch, and the unfrozen stage after the "
                              "first SGDR cycle, that does not lower the valid loss (the lesson's 'until "
                              "over-fitting'); --no-until-overfit runs every epoch and cycle")
    min_gain: float = arg(0.05, "with --until-overfit, an unfrozen cycle must lower the best valid loss by this "
                          "fraction of it for the next cycle, twice as long, to run (0: any drop)")
    cycle_len: int = arg(1, "epochs in the first SGDR cycle")
    cycle_mult: int = arg(2, "each unfrozen cycle is this many times longer than the one before")
    schedule: str = arg("sgdr", "the unfrozen stage's rates: sgdr (cosine, restarting each cycle) or one_cycle "
                        "(warm up, then anneal, over all the stage's epochs)", choices=SCHEDULES)
    patience: int = arg(2, "stop the unfrozen stage when valid loss has risen this many epochs")
    momentum: float = arg(0.9, "SGD momentum")
    weight_decay: float = arg(1e-4, "SGD weight decay")
    nesterov: bool = arg(False, "Nesterov momentum")
    label_smoothing: float = arg(0.0, "label smoothing of the training loss (0: none)")
    bn_freeze: bool | None = arg(None, "keep the body's BatchNorm statistics as pretrained when it is unfrozen (the "
                                 "2017 course's bn_freeze; default: on with pretrained weights, off from scratch)")
    bn_images: int = arg(256, "BatchNorm's statistics re-estimated at the end of each epoch from up to this many of "
                         "its last training images, under its final weights (0: keep the running averages)")
    precision: str = arg("auto", "auto (bf16 on GPU and on CPUs with AMX, else fp32) | fp32 | bf16 (autocast)",
                         choices=PRECISIONS)
    tta: int = arg(4, "augmented views for TTA on the valid set at the end (0: none)")

    def __post_init__(self) -> None:
        _check(bool(self.arch) and isinstance(self.arch, str), "arch", "must name a body")
        for name, choices in (("aug", AUG_PRESETS), ("stem", STEMS), ("precision", PRECISIONS),
                              ("schedule", SCHEDULES), ("lr_suggest", LR_SUGGESTIONS)):
            _choice(self, name, choices)
        _check(bool(self.weights), "weights", "must be imagenet, none, or a path or URI")
        _positive(self, "size", "cycle_len", "cycle_mult", "patience")
        _check(self.batch_size is None or self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.size >= 16, "size", f"must be at least 16 pixels, got {self.size}")
        _check(self.max_zoom >= 1.0, "max_zoom", f"must be >= 1.0, got {self.max_zoom}")
        _check(self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.lr_mult is None or self.lr_mult >= 1, "lr_mult", f"must be >= 1, got {self.lr_mult}")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        _check(0 <= self.min_gain < 1, "min_gain", f"must be in [0, 1), got {self.min_gain}")
        _non_negative(self, "tta", "weight_decay", "momentum", "bn_images")
        for name in ("precompute_epochs", "head_cycles", "unfrozen_cycles"):
            _check(getattr(self, name) is None or getattr(self, name) >= 0, name, "must be >= 0")

    @property
    def pretrained(self) -> bool:
        """A body that learnt something already (ImageNet's, or a file's): the frozen stages pay."""
        return self.weights != "none"

    def resolved(self) -> "Recipe":
        """The recipe with every automatic value chosen. From scratch there is nothing to keep
        frozen: the frozen stages would train a head on a random body's activations, and the
        random early layers need the full rate, so both are off and every group shares one rate."""
        pre = self.pretrained
        return dataclasses.replace(
            self,
            # (a cap: an epoch on the activations costs about a second; until_overfit ends the stage)
            precompute_epochs=(PRECOMPUTE_CAP if pre else 0) if self.precompute_epochs is None
            else self.precompute_epochs,
            # (chosen by time to accuracy on ants/bees from ImageNet: bench/RESULTS.md, "Choosing the defaults")
            head_cycles=(1 if pre else 0) if self.head_cycles is None else self.head_cycles,
            # (a cap: the stage ends at the first cycle that does not lower the valid loss, until_overfit)
            unfrozen_cycles=(4 if pre else 3) if self.unfrozen_cycles is None else self.unfrozen_cycles,
            lr_mult=(3.0 if pre else 1.0) if self.lr_mult is None else self.lr_mult,
            bn_freeze=pre if self.bn_freeze is None else self.bn_freeze,
        )

    def batch_for(self, n_train: int, workers: int) -> int:
        """--batch-size, or by default 64, halved (to 8 at least) while an epoch of `n_train` images
        over `workers` would take fewer than MIN_STEPS steps. From scratch, ants/bees (245 photos)
        at 64 is 4 steps an epoch, 28 in the whole default run, and stayed at chance; at 16 it
        learns (bench/RESULTS.md, real photos)."""
        if self.batch_size is not None:
            return self.batch_size
        bs = DEFAULT_BATCH
        while bs > 8 and steps_per_epoch(n_train, workers, bs) < MIN_STEPS:
            bs //= 2
        return bs

    def stepping(self, n_train: int, workers: int) -> dict:
        """What the schedule steps by on `n_train` images at `workers` (MAX) workers: the global
        batch and the steps an epoch. An elastic group keeps both whatever its size; a resumed
        run must have the same (resume.settings)."""
        bs = self.batch_for(n_train, workers)
        return {"global_batch": bs * workers, "steps_per_epoch": steps_per_epoch(n_train, workers, bs)}

    @property
    def frozen_stages(self) -> bool:
        r = self.resolved()
        return (r.precompute_epochs or 0) + (r.head_cycles or 0) > 0


@dataclass
class Resources:
    """Where a run executes; may change between a run and its resume (docs/contract.md, 'Connecting')."""

    workers: int = arg(1, "Ray Train workers (data-parallel processes); for predict, scoring actors")
    gpu: bool = arg(False, "one GPU per worker (CUDA, bf16, nccl; JPEGs decoded on the GPU)")
    cpus_per_worker: int = arg(0, "CPUs each worker reserves and runs threads on (0: the cluster's CPUs shared "
                               "out; on a local instance, cores / workers)")
    address: str | None = arg(None, "Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance)")
    verbose: bool = arg(False, "show Ray's own logs and warnings too (by default they stay in Ray's log folder)")

    def __post_init__(self) -> None:
        self._check_workers()
        _non_negative(self, "cpus_per_worker")

    def _check_workers(self) -> None:
        if not isinstance(self.workers, int) or isinstance(self.workers, bool):
            raise ConfigError(f"--workers: expected a whole number (a range MIN-MAX is for train and tune), got "
                              f"{self.workers!r}")
        _positive(self, "workers")


class WorkerRange(typing.NamedTuple):
    """Train workers: `--workers N` (min == max) or `--workers MIN-MAX`, an elastic group that starts
    with what the cluster has (at least MIN), shrinks when a node is lost and grows back to MAX
    (docs/contract.md, 'Elastic training')."""

    min: int
    max: int

    @classmethod
    def parse(cls, value: "int | str | WorkerRange") -> "WorkerRange":
        """From a flag or config value: 3, "3" or "2-8"; errors name --workers."""
        if isinstance(value, WorkerRange):
            return value
        text = str(value).strip()
        parts = text.split("-")
        if isinstance(value, bool) or len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"--workers: expected N or MIN-MAX (e.g. 2-8), got {text!r}")
        lo, hi = int(parts[0]), int(parts[-1])
        _check(lo >= 1, "workers", f"must be >= 1 (MIN too), got {text!r}")
        _check(lo <= hi, "workers", f"MIN must be <= MAX, got {text!r}")
        return cls(lo, hi)

    @property
    def elastic(self) -> bool:
        return self.min < self.max

    def __str__(self) -> str:
        return str(self.max) if self.min == self.max else f"{self.min}-{self.max}"


@dataclass
class TrainResources(Resources):
    # Train and tune take a range (WorkerRange); given as N or "MIN-MAX", held as the pair.
    workers: WorkerRange = arg(WorkerRange(1, 1), "Ray Train workers: N, or MIN-MAX for an elastic group that "
                               "rides out lost nodes", metavar="N|MIN-MAX")
    placement: str = arg("PACK", "Train workers on nodes: PACK (fewest nodes) or SPREAD (one per node if possible)",
                         choices=("PACK", "SPREAD"))
    cache: str = arg("auto", "decoded images: memory (each worker keeps its shard after the first epoch), stream "
                     "(read and decode every epoch), auto (memory when it fits)", choices=CACHE_MODES)

    def _check_workers(self) -> None:
        self.workers = WorkerRange.parse(self.workers)

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self, "placement", ("PACK", "SPREAD"))
        _choice(self, "cache", CACHE_MODES)


def _data_source(cfg: Any) -> None:
    _check(cfg.valid_pct is None or 0 < cfg.valid_pct < 1, "valid_pct", f"must be in (0, 1), got {cfg.valid_pct}")


LABELS_HELP = "a CSV of labels for a folder of images (columns id|fname|path, label, optional split|is_valid)"
VALID_PCT_HELP = "a seeded, stratified validation split of this fraction, when DATA has no valid/ folder or the " \
    "labels file no split column"


def _require(cfg: Any, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n):
            what = flag_name(n) if n == "out" else n.upper()
            raise ConfigError(f"{what}: required (a folder or s3:// URI)")


@dataclass
class TrainConfig:
    """`raycat train DATA --out OUT`."""

    data: str = arg("", "dataset folder or s3:// URI (train/<class>/, valid/<class>/)", positional=True)
    out: str = arg("", "output folder or s3:// URI")
    labels: str | None = arg(None, LABELS_HELP)
    valid_pct: float | None = arg(None, VALID_PCT_HELP)
    tracking: str = arg("none", "log params, every epoch's metrics and the outputs: mlflow ($MLFLOW_TRACKING_URI; "
                        "pip install 'raycat[mlflow]') or tensorboard (event files in OUT/tensorboard)",
                        choices=TRACKERS)
    top: int = arg(16, "valid images in each grid of the images worth a look (top_losses.png, most_uncertain.png)")
    lr_find: bool = arg(False, "with --lr, run the lr_find sweeps anyway for their curves (without --lr they "
                        "always run; with it, lr_find.csv says not run)")
    recipe: Recipe = part(Recipe)
    resources: TrainResources = part(TrainResources)

    command: str = given(COMMAND_HELP)

    def __post_init__(self) -> None:
        _require(self, "data", "out")
        _choice(self, "tracking", TRACKERS)
        _data_source(self)
        _non_negative(self, "top")


@dataclass
class LrFindConfig:
    """`raycat lr-find DATA --out OUT`: the range test alone. It trains nothing to the end, so it
    has no flags for tracking or the grids of images worth a look."""

    data: str = arg("", "dataset folder or s3:// URI (train/<class>/, valid/<class>/)", positional=True)
    out: str = arg("", "output folder or s3:// URI")
    labels: str | None = arg(None, LABELS_HELP)
    valid_pct: float | None = arg(None, VALID_PCT_HELP)
    recipe: Recipe = part(Recipe)
    resources: TrainResources = part(TrainResources)

    command: str = given(COMMAND_HELP)

    def __post_init__(self) -> None:
        _require(self, "data", "out")
        _data_source(self)

    def as_train(self) -> TrainConfig:
        """The same data, recipe and resources as a `raycat train` (whose first unit is this sweep)."""
        return TrainConfig(data=self.data, out=self.out, labels=self.labels, valid_pct=self.valid_pct,
                           recipe=self.recipe, resources=self.resources)


@dataclass
class TuneConfig:
    """`raycat tune DATA --out OUT --samples N`."""

    data: str = arg("", "dataset folder or s3:// URI", positional=True)
    out: str = arg("", "output folder or s3:// URI")
    labels: str | None = arg(None, LABELS_HELP)
    valid_pct: float | None = arg(None, VALID_PCT_HELP)
    samples: int = arg(8, "trials to run")
    max_concurrent: int = arg(0, "trials at once (0: as many as the cluster's resources allow)")
    space: str | None = arg(None, "JSON or YAML file overriding the search space")
    tracking: str = arg("none", "log each trial: mlflow (Ray's MLflowLoggerCallback) or tensorboard (Ray's "
                        "TBX logger, in OUT/tune/)", choices=TRACKERS)
    recipe: Recipe = part(Recipe)
    resources: TrainResources = part(TrainResources)

    command: str = given(COMMAND_HELP)

    def __post_init__(self) -> None:
        _require(self, "data", "out")
        _choice(self, "tracking", TRACKERS)
        _data_source(self)
        _positive(self, "samples")
        _non_negative(self, "max_concurrent")

    def trial(self, recipe: Recipe, out: str) -> TrainConfig:
        """One trial's `raycat train`: this sweep's data and resources, a sampled recipe."""
        return TrainConfig(data=self.data, out=out, labels=self.labels, valid_pct=self.valid_pct, recipe=recipe,
                           resources=self.resources, command=self.command)


@dataclass
class PredictConfig:
    """`raycat predict MODEL IMAGES --out OUT [--tta N]`. The model's card fixes its arch, size,
    classes and augmentation: predict has no flags for them."""

    model: str = arg("", "a raycat model/ folder (or its parent OUT), local or s3://", positional=True)
    images: list = arg([], "with --out: a folder or prefix of images, or a manifest (.csv or .parquet with a path "
                       "column and an optional label column); without --out: image files, scored here",
                       positional=True)
    out: str = arg("", "output folder or s3:// URI (without it: print each file's class, no cluster)")
    tta: int = arg(4, "augmented views averaged with the plain view (0: plain inference)")
    tta_beta: float = arg(0.25, "weight of the augmented views' mean against the plain view")
    batch_size: int = arg(64, "images per batch per scoring actor")
    precision: str = arg("auto", "auto (bf16 on GPU and on CPUs with AMX, else fp32; each scoring actor decides on "
                         "its node) | fp32 | bf16 (autocast)", choices=PRECISIONS)
    top: int = arg(16, "images in each grid of the images worth a look (top_losses.png, ...)")
    resources: Resources = part(Resources)

    command: str = given(COMMAND_HELP)

    def __post_init__(self) -> None:
        self.images = [self.images] if isinstance(self.images, str) else list(self.images)
        _require(self, "model", "images")
        if self.out and len(self.images) != 1:
            raise ConfigError(f"IMAGES: one folder, prefix or manifest with --out, got {len(self.images)}")
        _non_negative(self, "tta", "top")
        _check(0 <= self.tta_beta <= 1, "tta_beta", f"must be in [0, 1], got {self.tta_beta}")
        _positive(self, "batch_size")
        _choice(self, "precision", PRECISIONS)


@dataclass
class CheckConfig:
    """`raycat check DATA`."""

    data: str = arg("", "dataset folder or s3:// URI", positional=True)
    labels: str | None = arg(None, LABELS_HELP)
    valid_pct: float | None = arg(None, VALID_PCT_HELP)
    seed: int = arg(0, "seed of the --valid-pct split")
    size: int = arg(64, "decode size used to test each image")
    address: str | None = arg(None, "Ray cluster to join (default: $RAY_ADDRESS, else local)")
    verbose: bool = arg(False, "show Ray's own logs and warnings too")

    def __post_init__(self) -> None:
        _require(self, "data")
        _data_source(self)
        _check(self.size >= 16, "size", f"must be at least 16 pixels, got {self.size}")


@dataclass
class DemoConfig:
    """`raycat demo`: make a synthetic dataset, then lr-find, train and predict on it."""

    out: str = arg("raycat-demo", "folder for the dataset and every output")
    size: int = arg(64, "image side in pixels")
    workers: int = arg(1, "Ray Train workers")
    seed: int = arg(0, "seed for the data and the model")
    address: str | None = arg(None, "Ray cluster to join (default: $RAY_ADDRESS, else local)")
    verbose: bool = arg(False, "show Ray's own logs and warnings too")

    def __post_init__(self) -> None:
        _positive(self, "workers")
        _check(self.size >= 16, "size", f"must be at least 16 pixels, got {self.size}")


@dataclass
class SubmitConfig:
    """`raycat submit JOB ARGS...`: run jobs/JOB.py on the cluster at $RAY_ADDRESS, follow its logs."""

    job: str = arg("", "train | predict | tune", positional=True, choices=("train", "predict", "tune"))
    args: list = arg([], "the job's arguments, as for `raycat JOB`")  # filled from the command line's rest
    address: str | None = arg(None, "the cluster's dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS)")
    working_dir: str = arg(".", "folder uploaded as the job's working dir (this repository)")
    python: str = arg("python", "the interpreter on the cluster's nodes")
    wait: bool = arg(True, "follow the logs until the job ends (--no-wait: submit and return)")

    def __post_init__(self) -> None:
        _choice(self, "job", ("train", "predict", "tune"))
        self.args = list(self.args or [])


# ---- flat keys (flags, --config files) <-> nested configs ------------------------------------

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flat_fields(cls: type) -> list[tuple[dataclasses.Field, Any, type | None]]:
    """(field, its type, the part class holding it or None) for every flag of a job's config."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("given"):
            continue
        if f.metadata.get("part"):
            sub = hints[f.name]
            sub_hints = _hints(sub)
            out += [(g, sub_hints[g.name], sub) for g in dataclasses.fields(sub)]
        else:
            out.append((f, hints[f.name], None))
    return out


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Check a config value against a field's type; the error names the key."""
    if typ is WorkerRange:  # N or "MIN-MAX": WorkerRange.parse checks the value itself
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key {key!r}: expected int or str, got {type(value).__name__} {value!r}")
        return value
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(options) > 1:  # int | str (--workers N or MIN-MAX): the config checks the value itself
            if isinstance(value, bool) or not isinstance(value, tuple(options)):
                raise ConfigError(f"config key {key!r}: expected {' or '.join(a.__name__ for a in options)}, "
                                  f"got {type(value).__name__} {value!r}")
            return value
        typ = options[0]
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(typ)
    if ok is None:
        return value
    if not ok(value):
        raise ConfigError(f"config key {key!r}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if typ is float else value


def build(cls: type, values: dict[str, Any]) -> Any:
    """A job's config from flat keys (flag names with underscores), rejecting unknown keys and
    wrong types by name; each part gets its own keys."""
    fields = flat_fields(cls)
    known = {f.name: (typ, owner) for f, typ, owner in fields}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} for `{command_of(cls)}`; known keys: "
                          f"{', '.join(sorted(known))}")
    top: dict[str, Any] = {}
    parts: dict[type, dict[str, Any]] = {}
    for k, v in values.items():
        typ, owner = known[k]
        v = coerce(k, v, typ)
        (top if owner is None else parts.setdefault(owner, {}))[k] = v
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("given"):
            continue
        if f.metadata.get("part"):
            top[f.name] = hints[f.name](**parts.get(hints[f.name], {}))
    return cls(**top)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def command_of(cls: type) -> str:
    return {TrainConfig: "train", TuneConfig: "tune", PredictConfig: "predict", CheckConfig: "check",
            DemoConfig: "demo", SubmitConfig: "submit"}.get(cls, cls.__name__)
