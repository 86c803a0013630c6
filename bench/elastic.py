"""Time lost to one node loss: an elastic group (`--workers 1-2`) against today's fixed group
(`--workers 2`), each against an uninterrupted run, on the local two-node cluster the tests start
(tests/test_cluster.py: two `ray start` nodes of 3 CPUs on this machine, token auth on).

Each run trains the same recipe (resnet18 from scratch, 32 px, 72 train images,
7 epochs; 2 CPUs a worker, so each node holds one worker). In the interrupted runs the second
node's raylet is killed as the first unfrozen epoch ends, and the node is started again
NODE_BACK_S later, the same for both: the fixed group waits for it, the elastic one goes on with
one worker and grows back when the node returns. Whole-command wall times, medians of REPEATS.

On this machine both "nodes" share 2 cores, so one worker of 2 CPUs trains about as fast as two:
the figures measure what a node loss costs in waiting and restarts, not in lost capacity.

    .venv/bin/python bench/elastic.py          # about 35 minutes on a 2-core machine
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.results import machine, write_section  # noqa: E402
from tests.test_cluster import (  # noqa: E402  (the same cluster and driver the tests use)
    RUN,
    Driver,
    kill_cluster,
    lose_second_node,
    second_node_back,
    start_cluster,
)

REPEATS = 3
NODE_BACK_S = 60.0


def one_run(cluster, data, out, mode):
    workers = {"uninterrupted": "2", "fixed": "2", "elastic": "1-2"}[mode]
    t0 = time.monotonic()
    run = Driver(cluster, data, "--out", out, "--workers", workers, *RUN)
    lost = back = None
    try:
        if mode != "uninterrupted":
            run.wait_for(r"^unfrozen\s+1\s", 300)
            lose_second_node(cluster)
            lost = time.monotonic()
            while time.monotonic() - lost < NODE_BACK_S and run.proc.poll() is None:
                time.sleep(1)
            second_node_back(cluster)
            back = time.monotonic()
        rc = run.finish(900)
    finally:
        second_node_back(cluster)
    end = time.monotonic()
    assert rc == 0, run.text()[-3000:]
    m = json.load(open(os.path.join(out, "metrics.json")))
    epoch_s = statistics.median(r["seconds"] + r["valid_seconds"] for r in _history(out))
    # Restart: from the kill to the first epoch the next group ended, less one epoch (the unit redone).
    restart = None
    if lost is not None:
        after = [w for w, line in run.lines if w > lost and re.match(r"^unfrozen\s+\d", line)]
        restart = (after[0] - lost - epoch_s) if after else None
    return {"wall": end - t0, "groups": [g["workers"] for g in m["worker_groups"]], "epoch_s": epoch_s,
            "restart_s": restart, "waited_for_node_s": (back - lost) if lost else 0.0,
            "accuracy": m["valid_accuracy"], "epochs": len(_history(out))}


def _history(out):
    import csv

    with open(os.path.join(out, "history.csv")) as f:
        return [{k: float(v) if k not in ("stage",) else v for k, v in r.items()} for r in csv.DictReader(f)]


def main() -> None:
    from raycat.datasets import make_shapes_dataset

    work = tempfile.mkdtemp(prefix="raycat-elastic-")
    data = make_shapes_dataset(os.path.join(work, "data"), classes=("circle", "square", "triangle"), n_train=24,
                               n_valid=8, seed=0, easy=True, clutter=False)
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    cluster = start_cluster(temp_dir)
    results = {m: [] for m in ("uninterrupted", "elastic", "fixed")}
    try:
        for rep in range(REPEATS):
            for mode in results:
                r = one_run(cluster, data, os.path.join(work, f"{mode}-{rep}"), mode)
                print(mode, rep, r, flush=True)
                results[mode].append(r)
    finally:
        kill_cluster(temp_dir)
    med = {m: statistics.median(r["wall"] for r in rs) for m, rs in results.items()}
    base = med["uninterrupted"]
    rows = ["| run | wall (median) | lost vs uninterrupted | groups | accuracy (each run) |", "|---|---|---|---|---|"]
    for m, rs in results.items():
        accs = ", ".join(f"{r['accuracy']:.3f}" for r in rs)
        rows.append(f"| {m} | {med[m]:.0f} s | {med[m] - base:+.0f} s | {rs[0]['groups']} | {accs} |")
    el = results["elastic"]
    unit = statistics.median(r["epoch_s"] for r in el)
    restart = statistics.median(r["restart_s"] for r in el if r["restart_s"] is not None)
    lost = med["elastic"] - base
    text = "\n".join([
        f"Machine: {machine()}. Local two-node cluster (3 + 3 logical CPUs on this machine's 2 cores), 2 CPUs a "
        f"worker; resnet18 from scratch, 72 images at 32 px, 7 epochs. The second node is killed as unfrozen "
        f"epoch 1 ends and started again {NODE_BACK_S:.0f} s later. Medians of {REPEATS}.",
        "",
        *rows,
        "",
        f"Elastic: the unit in flight (one epoch with its validation) {unit:.1f} s; Ray's restart (kill to the next "
        f"group's first epoch, less that epoch: node-death detection, the group's new processes, the data "
        f"streamed again) {restart:.0f} s; the elastic run lost {lost:.0f} s in all, with its second restart when it "
        f"grew back. Target (at most the unit in flight plus Ray's restart, per resize): "
        f"{'met' if lost <= 2 * (unit + restart) else 'NOT met'}. The fixed group lost {med['fixed'] - base:.0f} s: "
        f"it waited for the node.",
    ])
    print(text)
    write_section("elastic", "## Elastic training: time lost to one node loss (bench/elastic.py)\n\n" + text)


if __name__ == "__main__":
    main()
