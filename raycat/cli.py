"""`raycat COMMAND ...`: a table maps each command to its config dataclass and a plain function.

A command's flags are its dataclass's fields (those of its parts too) and nothing else: a flag
another command reads is a usage error here (exit 2, naming it). `--config FILE` supplies any of
them from JSON or YAML, and flags given on the command line win. Exit status: 0 done, 2 bad usage
or input, 1 a failure while running. Importing this module imports neither torch nor Ray, so
`--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import typing
from typing import Any, Callable

from raycat import __version__
from raycat.config import (
    CheckConfig,
    DemoConfig,
    LrFindConfig,
    PredictConfig,
    SubmitConfig,
    TrainConfig,
    TuneConfig,
    build,
    flag_name,
    flat_fields,
)
from raycat.errors import BadInput


def _lazy(module: str, func: str) -> Callable[[Any], int]:
    # Import on use: `raycat --help` and `raycat check` don't pay for torch and Ray Train imports.
    def run(cfg: Any) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(cfg)

    return run


# command -> (config dataclass, function, one-line help)
COMMANDS: dict[str, tuple[type, Callable[[Any], int], str]] = {
    "demo": (DemoConfig, _lazy("raycat.demo", "run_demo"),
             "make a small synthetic dataset and run lr-find, train and predict on it"),
    "check": (CheckConfig, _lazy("raycat.check", "run_check"), "validate a dataset without training"),
    "lr-find": (LrFindConfig, _lazy("raycat.shell.lr_find_job", "run_lr_find"),
                "learning-rate range test on the new head"),
    "train": (TrainConfig, _lazy("raycat.shell.train_job", "run_train"), "the staged fast.ai recipe on Ray Train"),
    "predict": (PredictConfig, _lazy("raycat.shell.predict_job", "run_predict"), "batch inference with TTA"),
    "tune": (TuneConfig, _lazy("raycat.shell.tune_job", "run_tune"), "a Ray Tune sweep over the recipe's settings"),
    "submit": (SubmitConfig, _lazy("raycat.submit", "run_submit"),
               "run jobs/JOB.py on the Ray cluster at $RAY_ADDRESS and follow its logs"),
}


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    fields = flat_fields(cls)
    for f, typ, _ in sorted(fields, key=lambda t: not t[0].metadata.get("positional")):
        help_ = f.metadata.get("help", "")
        if typing.get_origin(typ) is not None:  # Optional[X]
            options = [a for a in typing.get_args(typ) if a is not type(None)]
            typ = str if str in options else options[0]
        if hasattr(typ, "parse"):  # read as text, parsed by the config (--workers N|MIN-MAX)
            typ = str
        if f.metadata.get("positional"):
            more = {"nargs": "+"} if typ is list else {"choices": f.metadata.get("choices")}
            parser.add_argument(f.name, metavar=f.name.upper(), help=help_, **more)
            continue
        if typ is list:  # everything after the positionals, passed through untouched
            parser.add_argument(f.name, nargs=argparse.REMAINDER, metavar="ARGS", help=help_)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            help_ += f" (default: {_default(f)})"
        else:
            kwargs["type"] = typ
            kwargs["metavar"] = f.metadata.get("metavar") or typ.__name__.upper()
            help_ += f" (default: {_default(f)})"
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag_name(f.name), help=help_, **kwargs)
    if cls not in (DemoConfig, CheckConfig, SubmitConfig):
        parser.add_argument("--config", metavar="FILE", default=None,
                            help="JSON or YAML recipe whose keys are these flags' names; flags win")


def _default(f) -> Any:
    import dataclasses

    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping of flag names (dashes or underscores) to values."""
    from raycat.edge import storage

    data = storage.read_mapping(path, "--config")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raycat", description="The fast.ai image-classifier recipe as a distributed batch system on Ray.")
    parser.add_argument("--version", action="version", version=f"raycat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (cls, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=(cls.__doc__ or help_).strip())
        _add_fields(p, cls)
    return parser


def parse_config(argv: list[str]) -> tuple[str, Any]:
    """(command, its config) from the command line and any --config file."""
    parser = make_parser()
    ns = vars(parser.parse_args(argv))
    command = ns.pop("command")
    if command is None:
        parser.print_help()
        raise SystemExit(2)
    cls = COMMANDS[command][0]
    values: dict[str, Any] = {}
    config_path = ns.pop("config", None)
    if config_path:
        values.update(load_config_file(config_path))
    values.update(ns)  # flags given on the command line override the file
    return command, build(cls, values)


def command_line(argv: list[str]) -> str:
    """The raycat command `argv` runs (`raycat train DATA ...`), for what a run writes."""
    import shlex

    return shlex.join(["raycat", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, cfg = parse_config(argv)
        if hasattr(cfg, "command"):  # passed on as a value: workers and trials never read sys.argv
            cfg.command = command_line(argv)
        return int(COMMANDS[command][1](cfg) or 0)
    except BadInput as e:
        print(f"raycat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raycat: interrupted; finished outputs were kept, nothing half-written was left", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the top level turns any failure into exit 1 and a message
        from raycat.errors import describe_failure

        print(f"raycat: failed: {describe_failure(e)}", file=sys.stderr)
        return 1
