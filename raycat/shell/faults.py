"""Fault-injection points, for tests that act on a running job (as Ray's own `RAY_testing_*`
settings are): each is named here, listed in docs/reliability.md, and inert unless its variables
are set in the processes of the job (a test cluster's nodes pass their environment on).

A test decides before the event what the job will do: it names the point where the job stops
and waits (an epoch, a shard), the job writes a marker file when it gets there, and the test waits
for that marker (an event), never for a printed line read by polling, which a fast job outruns.

- `RAYCAT_TESTING_HOLD_FILE=PATH`: the hold. While PATH exists, a process that reaches a hold
  point waits there; on arriving it writes `PATH.held-<pid>` (JSON: where, the count, the group's
  size, the node). Removing PATH lets every held process go on. The file may name its own points,
  one kind a line (`epoch=2,3`, `shard=5`): then the job holds at those alone, not at the
  variables', so each test picks its points in the file it makes.
- `RAYCAT_TESTING_HOLD_AT_EPOCH=N[,N...]`: a Train worker holds after reporting the checkpoint
  that holds the run's first N epochs (all ranks hold; rank 0 writes the marker).
- `RAYCAT_TESTING_HOLD_AT_SHARD=N[,N...]`: a scoring actor process holds before scoring its
  (N+1)th shard (a restarted actor is a new process: it counts from 0 again).
- `RAYCAT_TESTING_HOLD_AT_TRIAL=N[,N...]`: a Tune trial holds before it trains, where it is the
  sweep's (N+1)th trial (Tune numbers its trials in its ids: `..._00001` is the second).
"""

from __future__ import annotations

import json
import os
import time

HOLD_FILE = "RAYCAT_TESTING_HOLD_FILE"
HOLD_AT_EPOCH = "RAYCAT_TESTING_HOLD_AT_EPOCH"
HOLD_AT_SHARD = "RAYCAT_TESTING_HOLD_AT_SHARD"
HOLD_AT_TRIAL = "RAYCAT_TESTING_HOLD_AT_TRIAL"


def _counts(var: str) -> set[int]:
    return {int(v) for v in os.environ.get(var, "").split(",") if v.strip().isdigit()}


KINDS = {HOLD_AT_EPOCH: "epoch", HOLD_AT_SHARD: "shard", HOLD_AT_TRIAL: "trial"}


def _points(path: str, var: str) -> set[int]:
    """The counts to hold at: those the hold file names for this kind (a file that names any
    points holds at those alone), else the variable's."""
    try:
        with open(path) as f:
            named = dict(line.strip().partition("=")[::2] for line in f if "=" in line)
    except OSError:
        return set()
    if not named:
        return _counts(var)
    return {int(v) for v in named.get(KINDS[var], "").split(",") if v.strip().isdigit()}


def hold(where: str, var: str, count: int, marker: dict | None = None) -> bool:
    """Waits while the hold file exists, if this is a point it (or `var`) names (count among its
    values). `marker`: what to write in the marker file (None: write none, another rank of the
    same group does). True when it held."""
    path = os.environ.get(HOLD_FILE)
    if not path or not os.path.exists(path) or count not in _points(path, var):
        return False
    if marker is not None:
        tmp = f"{path}.held-{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"where": where, "count": count, "pid": os.getpid(), **marker}, f)
        os.replace(tmp, f"{path}.held-{os.getpid()}")  # whole when the test sees it
    while os.path.exists(path):
        time.sleep(0.2)
    return True


def held(path: str) -> list[dict]:
    """The markers of the processes that held on `path` (for tests)."""
    folder, name = os.path.split(path)
    found = []
    for entry in sorted(os.listdir(folder or ".")):
        if entry.startswith(name + ".held-") and not entry.endswith(".tmp"):
            with open(os.path.join(folder, entry)) as f:
                found.append(json.load(f))
    return found
