"""Joining a Ray cluster or starting a local one: the only place that calls ray.init."""

from __future__ import annotations

import os


def local_cpus() -> int:
    # Ray Data tasks and Train workers block on each other's output; on a small machine, more
    # logical CPUs than cores keeps both sides scheduled instead of starving one another.
    return max(6, 2 * (os.cpu_count() or 1))


def connect(address: str | None = None) -> None:
    """Join `address` (or $RAY_ADDRESS) if given, else start a local Ray instance without a dashboard."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=local_cpus(), include_dashboard=False, log_to_driver=True,
                 configure_logging=True, logging_level="WARNING")
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # Row order matters for reproducible shards and for matching predictions to paths in tests.
    ctx.execution_options.preserve_order = True
    # Progress bars stay; the plan printed at the start of every dataset execution does not.
    ctx.print_on_execution_start = False
