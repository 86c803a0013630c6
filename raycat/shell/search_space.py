"""The sweep's search space as plain data: defaults, overrides from a JSON/YAML file, and the
translation to Ray Tune's samplers (the one function here that touches Ray)."""

from __future__ import annotations

import dataclasses
from typing import Any

from raycat.config import Recipe
from raycat.edge import storage
from raycat.errors import ConfigError

# key -> spec. A spec is {"loguniform": [lo, hi]}, {"uniform": [lo, hi]}, {"randint": [lo, hi]},
# {"choice": [...]}, {"grid": [...]} (every value, each --samples times), or a plain value (fixed).
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"loguniform": [1e-4, 1e-1]},
    "lr_mult": {"uniform": [3.0, 10.0]},
    "head_cycles": {"choice": [1, 2, 3]},
    "unfrozen_cycles": {"choice": [2, 3]},
    "cycle_mult": {"choice": [1, 2]},
}

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")
# Every recipe setting but the starting weights and the seed (vary those with separate sweeps).
TUNABLE = {f.name for f in dataclasses.fields(Recipe)} - {"weights", "seed"}


def check_spec(key: str, spec: Any) -> None:
    if key.replace("-", "_") not in TUNABLE:
        raise ConfigError(f"--space: {key!r} is not a tunable setting; choose from {', '.join(sorted(TUNABLE))}")
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"--space: {key!r} must be a value or one of "
                              f"{{{', '.join(k + ': ...' for k in KINDS)}}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if kind in ("choice", "grid"):
            if not isinstance(args, list) or not args:
                raise ConfigError(f"--space: {key}.{kind} must be a non-empty list")
        elif not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)
                  and args[0] < args[1]):
            raise ConfigError(f"--space: {key}.{kind} must be [low, high] with low < high, got {args!r}")
        elif kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"--space: {key}.loguniform needs low > 0")


def load_space(path: str | None) -> dict[str, Any]:
    """The default space, with a file's keys replacing (or adding to) the defaults."""
    space = dict(DEFAULT_SPACE)
    if path:
        for k, v in storage.read_mapping(path, "--space").items():
            check_spec(k, v)
            space[k.replace("-", "_")] = v
    return space


def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, spec in space.items():
        if isinstance(spec, dict):
            kind, args = next(iter(spec.items()))
            out[key] = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
                        "randint": lambda a: tune.randint(a[0], a[1] + 1), "choice": tune.choice,
                        "grid": tune.grid_search}[kind](args)
        else:
            out[key] = spec
    return out


def n_trials(space: dict[str, Any], samples: int) -> int:
    """Trials a sweep runs: Tune repeats every combination of the grid values `samples` times."""
    n = samples
    for spec in space.values():
        if isinstance(spec, dict) and "grid" in spec:
            n *= len(spec["grid"])
    return n
