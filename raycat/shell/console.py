"""What the user sees: raycat's own lines, printed once, by the driver, wherever they come from.

Train workers (and scoring actors) don't print: they put their lines on a queue that the driver
relays to its own stdout, so the epoch table appears once, without Ray's `(RayTrainWorker pid=...)`
prefix and without the second copy Ray Train's print patch makes. Within an epoch, a worker sends
progress every few seconds; in a terminal the driver shows it on one line that the next row
replaces, elsewhere (a log file) it shows the rows alone.

Ray's own logs (workers' output, Ray Data's execution lines, Ray Train's controller, deprecation
warnings) go to Ray's log folder (`/tmp/ray/session_latest/logs` on the head node) unless
`--verbose`, which shows everything as Ray prints it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

PROGRESS_EVERY_S = 2.0  # seconds between a worker's progress messages within an epoch
GET_WAIT_S = 30.0  # the longest a relay's get waits on its queue before asking again
_STOP = ("stop", None)  # what close() queues to wake the relay's thread


class Relay:
    """The driver's end: a Ray queue (an actor that reserves no CPU) and a thread printing from it."""

    def __init__(self, out=None, on_epoch: Callable[[dict, int], None] | None = None):
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: a queue on another node would go with it when that node is lost,
        # and with it every line after (the resize, the epochs of the group that goes on).
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.on_epoch = on_epoch  # (row, index in the run's history): each epoch's row, for a tracker
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self._stop = threading.Event()
        self._progress_shown = False
        self._told: set[int] = set()  # epoch indices passed to on_epoch by this command
        # Epoch rows wait here until a checkpoint holding them is kept: a row sent before its
        # checkpoint was written may be trained again after a lost node (with other values), and a
        # tracker logs each step once. `_kept`: the rows the latest kept checkpoint holds.
        self._pending: dict[int, dict] = {}
        self._kept = 0
        # The Train worker groups this command ran, as group_watch.GroupWatch reported them: their
        # size, why each started, when, and the index of the first epoch each one ended.
        self.groups: list[dict] = []
        self._thread = threading.Thread(target=self._run, name="raycat-console", daemon=True)
        self._thread.start()

    def _show(self, item) -> None:
        kind, text = item
        if kind == "group":
            self.groups.append({**text, "from_epoch": None})
            return
        if kind == "epoch":
            # The worker numbers the rows: a resumed run's first row is not this relay's first.
            # A group that starts from a checkpoint re-tells the checkpoint's rows ("again"): a
            # command that resumes a killed one may never have seen them (the killed driver can die
            # after Ray Train registered an epoch and before its row came through this queue). They
            # are kept by definition, reach the tracker once per command and don't mark where a
            # group began training. A new row waits for its checkpoint ("kept"); a row trained
            # again replaces the one it redoes.
            index, row, again = text
            if not again and self.groups and self.groups[-1]["from_epoch"] is None:
                self.groups[-1]["from_epoch"] = index
            self._pending[index] = row
            if again:
                self._kept = max(self._kept, index + 1)
            self._release(self._kept)
            return
        if kind == "kept":  # a checkpoint holding the run's first `text` epochs is kept (GroupWatch)
            self._kept = max(self._kept, int(text))
            self._release(self._kept)
            return
        if kind == "progress":
            if self.tty:
                self.out.write("\r" + text[:120].ljust(120))
                self.out.flush()
                self._progress_shown = True
            return
        if self._progress_shown:
            self.out.write("\r" + " " * 120 + "\r")
            self._progress_shown = False
        self.out.write(text + "\n")
        self.out.flush()

    def _release(self, upto: int) -> None:
        """Pass the waiting rows with an index below `upto` to the tracker, in order, once each."""
        for index in sorted(i for i in self._pending if i < upto):
            row = self._pending.pop(index)
            if index in self._told:
                continue
            self._told.add(index)
            if self.on_epoch is not None:
                try:
                    self.on_epoch(row, index)
                except Exception as e:  # noqa: BLE001 - a tracker's failure must not silence the console
                    self.out.write(f"warning: could not log epoch {index + 1} to the tracker: {e}\n")

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                # A get returns as soon as a line comes; the long wait only spares the queue's
                # actor (and the driver) two idle calls a second over a whole run. close() wakes it.
                item = self.queue.get(timeout=GET_WAIT_S)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue's actor is gone (shutdown): nothing more to show
                return
            if item == _STOP:
                return
            self._show(item)

    def close(self) -> None:
        """Show what is still queued, then stop."""
        from ray.util.queue import Empty

        self._stop.set()
        try:
            self.queue.put_nowait(_STOP)  # behind every line already queued
        except Exception:  # noqa: BLE001 - the actor is gone: the thread has stopped already
            pass
        self._thread.join(timeout=5)
        try:
            while True:
                item = self.queue.get_nowait()
                if item != _STOP:
                    self._show(item)
        except (Empty, Exception):  # noqa: BLE001 - drained, or the actor is gone
            pass
        try:
            self.queue.shutdown()
        except Exception:  # noqa: BLE001 - already gone
            pass


def sender(queue) -> tuple[Callable[[str], None], Callable[[str], None], Callable[[int, dict], None]]:
    """A worker's (log line, progress line, epoch row) functions for a relay's queue; none blocks.
    An epoch row goes with its index in the run's history: `epoch_row(index, row, again=False)`,
    `again` for a row of the checkpoint a group started from (trained before, told again)."""

    def send(kind: str, item) -> None:
        try:
            queue.put_nowait((kind, item))
        except Exception:  # noqa: BLE001 - a full or vanished queue must never stop training
            pass

    return ((lambda text: send("line", text)), (lambda text: send("progress", text)),
            (lambda index, row, again=False: send("epoch", (index, row, again))))


def throttled(progress: Callable[[str], None], every_s: float = PROGRESS_EVERY_S) -> Callable[[str, int, int], None]:
    """on_step(stage, step, total) for the training loop: a progress line at most every `every_s`."""
    last = [0.0]

    def on_step(stage: str, step: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or step == total:
            last[0] = now
            progress(f"  {stage}: step {step}/{total}")

    return on_step
