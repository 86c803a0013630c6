"""Joining a Ray cluster or starting a local one (the only place that calls ray.init), and the
rule for how many CPUs a worker or actor reserves.

The rule: a process reserves in Ray the CPUs its threads keep busy, and runs that many threads.
A local instance has exactly the machine's cores. Processes that only wait on storage (the tasks
that read file bytes) reserve none: their few microseconds of CPU per file are spent inside the
consumer's figures, and reserving a core for them would leave it idle.
"""

from __future__ import annotations

import os
import sys


def local_cpus() -> int:
    return os.cpu_count() or 1


def quiet(verbose: bool) -> None:
    """Ray's own chatter off the console (it stays in Ray's log folder), unless `verbose`."""
    import logging
    import warnings

    if verbose:
        return
    # Set before Ray starts: the raylet and every worker inherit them.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # execution lines, progress logs, their warnings
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module=r"ray\..*")


# What a local instance turns off unless asked (--verbose, or RAYCAT_FULL_RAY=1): on one machine
# nobody reads Ray's metrics or usage report, and no node is drained, so these would only take CPU
# from the training (bench/ray_overhead.py measures it). Env vars: the raylet, GCS and every worker
# read them at start.
LEAN_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # the usage report (and its tries to reach the internet)
    "RAY_enable_metrics_collection": "0",  # every process's metrics, the agent's collection and export
    "RAY_metrics_report_interval_ms": "60000",
    "RAY_TRAIN_METRICS_ENABLED": "0",  # Ray Train's gauges for that export
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # an actor polling for node drains every 5 s
    # Ray Train's JSON log files of its controller and workers (raycat's console says what happens)
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "RAY_enable_timeline": "0",  # per-task profiling events nobody reads on one machine
    # Idle workers started with the first driver: Ray Train's actors can't use them (each carries
    # env vars in its runtime env), so on 2 cores they only took CPU from the ones that start.
    "RAY_prestart_worker_first_driver": "0",
    "REPORTER_UPDATE_INTERVAL_MS": "60000",  # the dashboard agent's sweep of every process (5 s)
}


def lean(verbose: bool, env=os.environ) -> bool:
    """Whether a local instance starts only what raycat uses."""
    return not verbose and env.get("RAYCAT_FULL_RAY", "") in ("", "0")


def local_settings(verbose: bool, dashboard: bool, env=os.environ) -> tuple[dict[str, str], bool]:
    """(env vars to set, include_dashboard) for a local instance. The dashboard only when the
    caller needs its State API (`dashboard`) or Ray's defaults are asked for."""
    if not lean(verbose, env):
        return {}, True
    return {k: v for k, v in LEAN_ENV.items() if k not in env}, dashboard


def connect(address: str | None = None, verbose: bool = False, dashboard: bool = False) -> None:
    """Join `address` (or $RAY_ADDRESS) if given, else start a local Ray instance.

    A local instance is lean (local_settings): no dashboard, metrics or usage report. `dashboard`
    keeps the dashboard: Ray Train's placement-group cleaner asks its State API whether a run's
    controller is alive, and without it a run that dies while the instance lives on (a tune trial
    ASHA stops) leaves its placement group holding the cores, and the next run waits for them for
    ever. A `raycat train` or `predict` ends its instance with it, so it needs none."""
    import ray

    if ray.is_initialized():
        return
    quiet(verbose)
    # Workers' and actors' output reaches this console only with --verbose: raycat's own lines come
    # through console.Relay; the rest is in Ray's log folder.
    level = "INFO" if verbose else "ERROR"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
    else:
        env, include_dashboard = local_settings(verbose, dashboard)
        os.environ.update(env)
        ray.init(num_cpus=local_cpus(), include_dashboard=include_dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=verbose, configure_logging=True, logging_level=level)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # Progress bars stay in a terminal (elsewhere raycat prints a line per stage); the plan printed
    # at the start of every dataset execution does not.
    ctx.print_on_execution_start = False
    ctx.enable_progress_bars = verbose or sys.stderr.isatty()
    # A task's own error (raycat's StorageError naming a URI, say) reaches the driver as raised, not
    # wrapped in Ray Data's UserCodeException.
    ctx.raise_original_map_exception = True
    if lean(verbose):
        # A thread in every read task sampling its memory each second, and checks for shuffles and
        # memory pressure every 30 s: for tuning Ray Data's operators, not for reading files.
        ctx.memory_usage_poll_interval_s = None
        detectors = getattr(ctx, "issue_detectors_config", None)
        if detectors is not None and hasattr(detectors, "detectors"):
            detectors.detectors = []


def node_cpus() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each alive node of the cluster this process is connected to."""
    return [(r.get("CPU", 0.0), r.get("GPU", 0.0)) for r in node_totals()]


def node_totals() -> list[dict[str, float]]:
    """Every resource of each alive node (what a group could hold were nothing else running)."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]


def worker_cpus(requested: int, workers: int, gpu: bool, nodes: list[tuple[float, float]]) -> int:
    """CPUs each of `workers` Train workers (or scoring actors) reserves, and the threads it runs.

    `requested` > 0 wins. Otherwise the cluster's CPUs are shared out: with GPUs, each worker
    takes its GPU node's CPUs per GPU (they decode what the GPU can't and feed it); on CPU, the
    cluster's CPUs divided among the workers, never more than the largest node holds.
    """
    if requested > 0:
        return requested
    if gpu:
        per_gpu = [c / g for c, g in nodes if g > 0]
        return max(1, int(min(per_gpu))) if per_gpu else 1
    total = sum(c for c, _ in nodes)
    largest = max((c for c, _ in nodes), default=1)
    return max(1, int(min(total // max(1, workers), largest)))
