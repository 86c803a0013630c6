"""One config dataclass per job. Each field is a CLI flag (or positional) and a `--config` key.

Fields carry their help text in `metadata["help"]`; `cli.py` builds each command's parser from
its dataclass, so defaults and help live here only. Validation happens in `__post_init__`, before
any cluster time is spent; errors name the flag.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from raycat.augment import PRESETS
from raycat.errors import BadInput

ARCHS = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d")


class ConfigError(BadInput):
    """Bad flag or config value; the message names the flag or key."""


def arg(default: Any, help: str, positional: bool = False, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "positional": positional, "choices": choices})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) <= 0:
            raise ConfigError(f"{flag_name(n)}: must be > 0, got {getattr(cfg, n)}")


def _non_negative(cfg: Any, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) < 0:
            raise ConfigError(f"{flag_name(n)}: must be >= 0, got {getattr(cfg, n)}")


@dataclass
class ModelArgs:
    """Flags every model-using job shares (CONTRACT.md, 'Common flags')."""

    arch: str = arg("resnet34", "torchvision architecture", choices=ARCHS)
    weights: str = arg("imagenet", "imagenet | none | path or URI of a state dict or a raycat model/ folder")
    size: int = arg(224, "image side in pixels, after resize and crop")
    batch_size: int = arg(64, "images per batch per worker")
    workers: int = arg(1, "Ray Train workers (data-parallel processes)")
    gpu: bool = arg(False, "one GPU per worker (CUDA, mixed precision, nccl)")
    aug: str = arg("side_on", "augmentation preset", choices=PRESETS)
    max_zoom: float = arg(1.1, "largest random zoom of side_on/top_down")
    seed: int = arg(0, "seed for model initialisation and data order")
    address: str | None = arg(None, "Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance)")

    def _check_model_args(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"--arch: unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.aug not in PRESETS:
            raise ConfigError(f"--aug: unknown preset {self.aug!r}; choose one of {', '.join(PRESETS)}")
        _positive(self, "size", "batch_size", "workers")
        if self.size < 16:
            raise ConfigError(f"--size: must be at least 16 pixels, got {self.size}")
        if self.max_zoom < 1.0:
            raise ConfigError(f"--max-zoom: must be >= 1.0, got {self.max_zoom}")


@dataclass
class RecipeArgs(ModelArgs):
    """The staged recipe's settings (CONTRACT.md, 'The staged recipe')."""

    lr: float | None = arg(None, "base learning rate of the head (default: from lr_find)")
    lr_mult: float = arg(3.0, "m: layer groups train at [lr/m^2, lr/m, lr] after unfreezing")
    precompute_epochs: int = arg(1, "epochs of the head on precomputed body activations")
    head_cycles: int = arg(2, "SGDR cycles (cycle_len=1) of the head with augmentation")
    unfrozen_cycles: int = arg(3, "SGDR cycles after unfreezing (cycle_mult=2: 1+2+4 epochs for 3)")
    cycle_len: int = arg(1, "epochs in the first SGDR cycle")
    cycle_mult: int = arg(2, "each unfrozen cycle is this many times longer than the one before")
    patience: int = arg(2, "stop the unfrozen stage when valid loss has risen this many epochs")
    tta: int = arg(4, "augmented views for TTA on the valid set at the end (0: none)")
    placement: str = arg("PACK", "Train workers on nodes: PACK (fewest nodes) or SPREAD (one per node if possible)",
                         choices=("PACK", "SPREAD"))
    momentum: float = arg(0.9, "SGD momentum")
    weight_decay: float = arg(1e-4, "SGD weight decay")

    def _check_recipe_args(self) -> None:
        self._check_model_args()
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr: must be > 0, got {self.lr}")
        if self.lr_mult < 1:
            raise ConfigError(f"--lr-mult: must be >= 1, got {self.lr_mult}")
        _non_negative(self, "precompute_epochs", "head_cycles", "unfrozen_cycles", "tta", "weight_decay", "momentum")
        _positive(self, "cycle_len", "cycle_mult", "patience")


@dataclass
class TrainConfig(RecipeArgs):
    """`raycat train DATA --out OUT` and `raycat lr-find DATA --out OUT`."""

    data: str = arg("", "dataset folder or s3:// URI (train/<class>/, valid/<class>/)", positional=True)
    out: str = arg("", "output folder or s3:// URI", )

    def __post_init__(self) -> None:
        _require_data_and_out(self)
        self._check_recipe_args()


def _require_data_and_out(cfg: Any) -> None:
    if not cfg.data:
        raise ConfigError("DATA: a dataset folder or s3:// URI is required")
    if not cfg.out:
        raise ConfigError("--out: an output folder or s3:// URI is required")


@dataclass
class CheckConfig:
    """`raycat check DATA`."""

    data: str = arg("", "dataset folder or s3:// URI", positional=True)
    size: int = arg(64, "decode size used to test each image")
    address: str | None = arg(None, "Ray cluster to join (default: $RAY_ADDRESS, else local)")

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("DATA: a dataset folder or s3:// URI is required")


@dataclass
class DemoConfig:
    """`raycat demo`: make a synthetic dataset, then lr-find, train and predict on it."""

    out: str = arg("raycat-demo", "folder for the dataset and every output")
    size: int = arg(64, "image side in pixels")
    workers: int = arg(1, "Ray Train workers")
    seed: int = arg(0, "seed for the data and the model")
    address: str | None = arg(None, "Ray cluster to join (default: $RAY_ADDRESS, else local)")


@dataclass
class SubmitConfig:
    """`raycat submit JOB ARGS...`: run jobs/JOB.py on the cluster at $RAY_ADDRESS, follow its logs."""

    job: str = arg("", "train | predict | tune", positional=True, choices=("train", "predict", "tune"))
    args: list = arg(None, "the job's arguments, as for `raycat JOB`")  # filled from the command line's rest
    address: str | None = arg(None, "the cluster's dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS)")
    working_dir: str = arg(".", "folder uploaded as the job's working dir (this repository)")
    python: str = arg("python", "the interpreter on the cluster's nodes")
    wait: bool = arg(True, "follow the logs until the job ends (--no-wait: submit and return)")

    def __post_init__(self) -> None:
        if self.job not in ("train", "predict", "tune"):
            raise ConfigError(f"JOB: must be train, predict or tune, got {self.job!r}")
        self.args = list(self.args or [])


@dataclass
class PredictConfig(ModelArgs):
    """`raycat predict MODEL IMAGES --out OUT [--tta N]`."""

    model: str = arg("", "a raycat model/ folder (or its parent OUT), local or s3://", positional=True)
    images: str = arg("", "folder tree of images, local or s3://", positional=True)
    out: str = arg("", "output folder or s3:// URI")
    tta: int = arg(4, "augmented views averaged with the plain view (0: plain inference)")
    tta_beta: float = arg(0.25, "weight of the augmented views' mean against the plain view")

    def __post_init__(self) -> None:
        for name in ("model", "images"):
            if not getattr(self, name):
                raise ConfigError(f"{name.upper()}: required")
        if not self.out:
            raise ConfigError("--out: an output folder or s3:// URI is required")
        _non_negative(self, "tta")
        if not 0 <= self.tta_beta <= 1:
            raise ConfigError(f"--tta-beta: must be in [0, 1], got {self.tta_beta}")
        _positive(self, "batch_size", "workers")


@dataclass
class TuneConfig(RecipeArgs):
    """`raycat tune DATA --out OUT --samples N`."""

    data: str = arg("", "dataset folder or s3:// URI", positional=True)
    out: str = arg("", "output folder or s3:// URI")
    samples: int = arg(8, "trials to run")
    max_concurrent: int = arg(0, "trials at once (0: as many as the cluster's resources allow)")
    space: str | None = arg(None, "JSON or YAML file overriding the search space")

    def __post_init__(self) -> None:
        _require_data_and_out(self)
        self._check_recipe_args()
        _positive(self, "samples")
        _non_negative(self, "max_concurrent")


# ---- reading config files and coercing values ------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Check a config value against a field's type; error names the key."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        typ = args[0]
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"config key {key!r}: expected {typ.__name__}, got {type(value).__name__} {value!r}")


def read_mapping(path: str, flag: str) -> dict[str, Any]:
    """A JSON or YAML file (by extension) holding a mapping; errors name `flag` and the file."""
    from raycat import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{flag}: no such file {path}") from None
    kind = "YAML" if path.endswith((".yaml", ".yml")) else "JSON"
    try:
        if kind == "YAML":
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes a usage error naming the file
        raise ConfigError(f"{flag}: {path} is not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: {path} must hold a mapping of names to values")
    return data


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping of flag names (dashes or underscores) to values."""
    data = read_mapping(path, "--config")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def build(cls: type, values: dict[str, Any]) -> Any:
    """Make a config from a mapping, rejecting unknown keys and wrong types by name."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} for {cls.__name__}; known keys: "
                          f"{', '.join(sorted(types_))}")
    return cls(**{k: coerce(k, v, types_[k]) for k, v in values.items()})


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
