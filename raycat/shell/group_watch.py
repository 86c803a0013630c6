"""What the console says about the Train worker group: each start, restart and resize, and every
wait for resources.

Ray Train's controller decides when the group starts, shrinks after a lost node or grows back
(an elastic `--workers MIN-MAX`); while it waits for resources it only logs to Ray's log folder.
`GroupWatch` is a Ray Train controller callback (it runs in the controller's process, on the
driver's node) that puts what it sees on the driver's console queue (console.Relay):

- ("group", {"workers", "reason", "at"}) when a worker group starts: the relay prints
  `resized: 2 -> 1 workers, node lost` into the epoch table and keeps the timeline for
  metrics.json;
- a line `waiting for resources: ...` once the group has waited WAIT_FIRST_S, then every
  WAIT_EVERY_S while it still waits, naming what it needs and what the cluster has free;
- ("kept", n) when a checkpoint holding the run's first n epochs is kept: the rows a tracker may
  log (an epoch whose checkpoint was not kept is trained again after a lost node).

The text is made by pure functions below; the callback is the thin Ray shell around them.
"""

from __future__ import annotations

import os
import re
import threading
import time

from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback

WAIT_FIRST_S = 20.0  # a group that starts in less is not "waiting" ($RAYCAT_WAIT_FIRST_S overrides)
WAIT_EVERY_S = 30.0
POLL_S = 2.0
_WAITING_STATES = {"INITIALIZING", "SCHEDULING", "RESCHEDULING", "RESTARTING", "RESIZING"}


def failure_reason(error: object, dead_nodes: set[str] = frozenset()) -> str:
    """Why a group was restarted, in a few words, from Ray Train's error and the nodes the cluster
    now knows to be dead (a killed node's workers fail their health check before the cluster
    marks the node dead, so the error alone may not say)."""
    text = str(error)
    low = text.lower()
    if set(re.findall(r"node_id='?([0-9a-f]{16,})", text)) & set(dead_nodes):
        return "node lost"
    if "node" in low and any(w in low for w in ("died", "dead", "removed", "lost", "preempt", "drain")):
        return "node lost"
    if "startuptimeout" in low.replace(" ", "") or "waiting for" in low:
        return "waiting for resources"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(error).__name__)
    return "worker failed: " + first[:100]


def resize_line(before: int | None, after: int, reason: str) -> str:
    if before is None:
        return f"worker group: {after} worker(s)"
    if before == after:
        return f"restarted: {after} worker(s), {reason}; from the latest checkpoint"
    return f"resized: {before} -> {after} workers, {reason}; from the latest checkpoint"


def workers_that_fit(free_by_node: list[dict[str, float]], per_worker: dict[str, float]) -> int:
    """How many workers of `per_worker` resources fit in what each node has free."""
    need = {k: v for k, v in per_worker.items() if v > 0}
    if not need:
        return 10**9
    return sum(int(min(free.get(k, 0.0) // v for k, v in need.items())) for free in free_by_node)


def _fmt(resources: dict[str, float]) -> str:
    shown = {"CPU": "CPU", "GPU": "GPU", "memory": "memory"}
    parts = []
    for key, name in shown.items():
        v = resources.get(key, 0.0)
        if key == "memory":
            if v >= 2**30:
                parts.append(f"{v / 2**30:.1f} GiB {name}")
            elif v >= 2**20:
                parts.append(f"{v / 2**20:.0f} MiB {name}")
        elif v or key == "CPU":
            parts.append(f"{v:g} {name}")
    return " + ".join(parts)


def waiting_line(waited_s: float, needs: int, per_worker: dict[str, float],
                 free_by_node: list[dict[str, float]], elastic_max: int | None = None) -> str:
    """`waiting for resources` with what the group needs and what each alive node has free."""
    fits = workers_that_fit(free_by_node, per_worker)
    free = "; ".join(_fmt(f) for f in free_by_node) or "no node"
    wanted = f"{needs} worker(s)" + (f" (up to {elastic_max})" if elastic_max and elastic_max > needs else "")
    return (f"waiting for resources ({waited_s:.0f}s): needs {wanted} x {_fmt(per_worker)}; the cluster has "
            f"{len(free_by_node)} node(s) alive, free: {free} (room for {fits}). It goes on by itself when "
            "room is made; stop it with Ctrl-C, or `ray job stop`.")


def dead_nodes() -> set[str]:
    import ray

    try:
        return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
    except Exception:  # noqa: BLE001
        return set()


def free_by_node() -> list[dict[str, float]]:
    """What each alive node of the cluster has free now."""
    import ray

    try:
        from ray._private.state import available_resources_per_node

        return [dict(r) for r in available_resources_per_node().values()]
    except Exception:  # noqa: BLE001 - a private API: fall back to the cluster's total
        return [dict(ray.available_resources())]


class GroupWatch(ControllerCallback, ReportCallback):
    """Puts the worker group's starts and waits on the console queue (see the module's doc), and
    each checkpoint kept: ("kept", epochs it holds), so the relay passes an epoch's row to a
    tracker only once it can no longer be trained again."""

    def __init__(self, queue, per_worker: dict[str, float], min_workers: int, max_workers: int, command: str):
        self.queue, self.per_worker, self.command = queue, dict(per_worker), command
        self.min_workers, self.max_workers = min_workers, max_workers
        # read here, in the driver: the controller that runs the watch has the cluster's env, not the job's
        self.wait_first_s = float(os.environ.get("RAYCAT_WAIT_FIRST_S", WAIT_FIRST_S))
        self._lock = threading.Lock()
        self._workers: int | None = None  # the running group's size
        self._pending: int | None = None  # the size Ray Train is starting
        self._reason = "start"
        self._error: object | None = None  # the failure that stopped the last group
        self._waiting_since: float | None = time.monotonic()
        self._said_at = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self):  # the queue and settings travel to the controller; the thread starts there
        return {k: v for k, v in self.__dict__.items() if k in ("queue", "per_worker", "command", "min_workers",
                                                                 "max_workers", "wait_first_s")}

    def __setstate__(self, d):
        self.__init__(d["queue"], d["per_worker"], d["min_workers"], d["max_workers"], d["command"])
        self.wait_first_s = d["wait_first_s"]

    def _send(self, kind: str, item) -> None:
        try:
            self.queue.put_nowait((kind, item))
        except Exception:  # noqa: BLE001 - the console must never stop training
            pass

    # ---- ControllerCallback --------------------------------------------------------------------
    def after_controller_start(self, train_run_context) -> None:
        self._thread = threading.Thread(target=self._watch, name="raycat-group-watch", daemon=True)
        self._thread.start()

    def before_controller_execute_resize_decision(self, resize_decision) -> None:
        with self._lock:
            self._pending = resize_decision.num_workers
            if self._reason == "running":  # a healthy group Ray Train grows: nodes came back
                self._reason = "room for more workers"

    def after_controller_state_update(self, previous_state, current_state) -> None:
        prev, cur = previous_state._state_type.name, current_state._state_type.name
        with self._lock:
            if cur in ("RESTARTING", "RESCHEDULING"):
                error = current_state.training_failed_error
                if failure_reason(error) != "waiting for resources":  # a start that timed out keeps the cause
                    self._error = error
            if cur in _WAITING_STATES and self._waiting_since is None:
                self._waiting_since = time.monotonic()
            if cur == "RUNNING" and prev == "SCHEDULING":
                if self._error is not None:  # judged now: by now the cluster knows which nodes are gone
                    self._reason, self._error = failure_reason(self._error, dead_nodes()), None
                before, self._workers = self._workers, self._pending
                self._send("group", {"workers": self._workers, "reason": self._reason, "at": time.time()})
                if before is not None or self.min_workers < self.max_workers:
                    self._send("line", f"raycat {self.command}: {resize_line(before, self._workers, self._reason)}")
                self._reason, self._waiting_since = "running", None
            if current_state.is_terminal():
                self._done.set()

    def before_controller_abort(self) -> None:
        self._done.set()

    # ---- ReportCallback: called after Ray Train registered the checkpoint as the latest ----------
    def after_report(self, training_report, metrics) -> None:
        if training_report.checkpoint is not None and metrics and "epochs" in metrics[0]:
            self._send("kept", metrics[0]["epochs"])

    # ---- the waiting line ----------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._done.wait(POLL_S):
            with self._lock:
                since = self._waiting_since
            if since is None:
                continue
            now = time.monotonic()
            if now - since < self.wait_first_s or now - self._said_at < WAIT_EVERY_S:
                continue
            self._said_at = now
            try:
                free = free_by_node()
            except Exception:  # noqa: BLE001
                free = []
            needs = self.min_workers
            self._send("line", f"raycat {self.command}: " + waiting_line(
                now - since, needs, self.per_worker, free, self.max_workers if self.max_workers > needs else None))
