"""Turning failures (often wrapped by Ray) into one line a user can act on."""

from __future__ import annotations

from raycat.core.errors import BadInput  # noqa: F401 - the core's class: one class caught everywhere


class ConfigError(BadInput):
    """Bad flag or config value; the message names the flag or key."""


def root_cause(e: BaseException) -> BaseException:
    """The innermost user-level exception inside Ray's wrappers (RayTaskError, TrainingFailedError)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        if type(e).__module__.startswith("raycat"):
            break  # raycat's own errors already say what failed, naming the URI or flag
        inner = getattr(e, "cause", None) or e.__cause__
        if isinstance(inner, BaseException):
            e = inner
            continue
        # Train V2 keeps per-worker errors in a dict.
        worker_errors = getattr(e, "worker_failures", None) or getattr(e, "errors", None)
        if isinstance(worker_errors, dict) and worker_errors:
            e = next(iter(worker_errors.values()))
            continue
        break
    return e


def describe_failure(e: BaseException) -> str:
    cause = root_cause(e)
    msg = str(cause).strip().splitlines()
    # raycat's own message is its first line (Ray may append advice after it); a foreign error's
    # most telling line is usually its last.
    text = (msg[0] if type(cause).__module__.startswith("raycat") else msg[-1]) if msg else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
