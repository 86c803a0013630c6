"""Ray's own processes during a one-worker `raycat train` on a local instance, and the command's
fixed costs: the CPU that GCS, the raylet, the dashboard and its agent, the log monitor and Ray
Data's and Ray Train's bookkeeping actors take from the cores the training runs on.

Each run is one `raycat train` in its own process (its own local Ray), sampled once a second from
/proc: every process of the run (the command and everything it started) by its command line, its
user + system CPU time. Reported: each group's share of the machine's CPU (seconds of CPU over
wall seconds x cores) between the first optimizer step and the end of training, and the fixed
costs from metrics.json. `--lean` settings against Ray's defaults (RAYCAT_FULL_RAY=1), the two
alternating, median of --runs each.

usage: python bench/ray_overhead.py [--images N] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procs import cpu_and_cmd, descendants  # noqa: E402
from results import machine, write_section  # noqa: E402

from raycat.datasets import make_shapes_dataset  # noqa: E402

# Ray's own processes, by what their command line holds (first match wins); the names are the
# process titles `ps` shows for a raycat train on Ray 2.60 (its agents and actors are titled
# ray::<class>). Everything else in the run (the driver, the Train worker, Ray Data's read tasks)
# is the work itself. The console queue is raycat's, but bookkeeping all the same.
GROUPS = [
    ("gcs", "gcs_server"),
    ("raylet", "/raylet"),
    ("dashboard agent", "ray::DashboardAgent"),
    ("dashboard agent", "dashboard/agent.py"),
    ("runtime env agent", "ray::RuntimeEnvAgent"),
    ("runtime env agent", "runtime_env/agent"),
    ("dashboard", "dashboard/dashboard.py"),
    ("log monitor", "log_monitor.py"),
    ("monitor", "autoscaler/_private/monitor.py"),
    ("train bookkeeping", "ray::TrainController"),
    ("train bookkeeping", "ray::SynchronizationActor"),
    ("train bookkeeping", "ray::PlacementGroupCleaner"),
    ("data bookkeeping", "ray::_StatsActor"),
    ("data bookkeeping", "ray::AutoscalingRequester"),
    ("data bookkeeping", "ray::_AutoscalingCoordinatorActor"),
    ("data bookkeeping", "ray::SplitCoordinator"),
    ("data bookkeeping", "ray::DatasetManager"),
    ("data bookkeeping", "ray::DefaultClusterAutoscaler"),
    ("console queue", "ray::_QueueActor"),
    ("idle workers", "ray::IDLE"),
]
SYSTEM = {g for g, _ in GROUPS}


def group_of(cmd: str) -> str:
    for name, needle in GROUPS:
        if needle in cmd:
            return name
    return "work"


class Sampler(threading.Thread):
    """CPU seconds of every process under `root`, once a second: (time, {pid: (cpu, cmd)})."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.samples, self.stop = root, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = time.time()
            snap = {}
            mine = set(descendants(self.root, include_root=True))
            # Ray's daemons (GCS, raylet, the dashboard) are reparented away from the command, so
            # they are taken by their command lines from every process (the bench runs alone).
            for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
                got = cpu_and_cmd(pid)
                if got and (pid in mine or group_of(got[1]) != "work"):
                    snap[pid] = got
            self.samples.append((now, snap))
            self.stop.wait(1.0)


def window_shares(samples, t_from: float, t_to: float) -> dict[str, float]:
    """Each group's CPU seconds between the samples nearest t_from and t_to, over wall x cores."""
    a = min(samples, key=lambda s: abs(s[0] - t_from))
    b = min(samples, key=lambda s: abs(s[0] - t_to))
    wall = b[0] - a[0]
    used: dict[str, float] = {}
    for pid, (cpu, cmd) in b[1].items():
        before = a[1].get(pid, (0.0, cmd))[0]  # a process started inside the window counts whole
        g = group_of(cmd)
        used[g] = used.get(g, 0.0) + cpu - before
    cores = os.cpu_count() or 1
    return {g: v / (wall * cores) for g, v in used.items()}


def one_run(data: str, lean: bool, extra_env: dict | None = None) -> dict:
    out = tempfile.mkdtemp(prefix="bench-ro-")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if not lean:
        env["RAYCAT_FULL_RAY"] = "1"
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "raycat", "train", data, "--out", out, "--arch", "resnet18", "--weights", "none",
           "--size", "48", "--batch-size", "64", "--workers", "1", "--lr", "0.01", "--unfrozen-cycles", "4",
           "--cycle-mult", "1", "--patience", "99", "--tta", "0", "--cache", "memory"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    text = proc.stdout.read()
    proc.wait()
    sampler.stop.set()
    sampler.join()
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"raycat train failed:\n{text[-3000:]}")
    m = json.load(open(os.path.join(out, "metrics.json")))
    first_step = t0 + m["ray_start_seconds"] + m["to_first_step_seconds"]
    # The training window: from the first step to the end of the last unit (metrics.json's
    # `seconds`, the recipe's units from lr_find on). Not the last sample: as the command ends, Ray
    # shuts down, and a window ending there saw GCS, the raylet and the actors gone (their CPU
    # uncounted) while the dashboard and the log monitor, slower to stop, were still there.
    shares = window_shares(sampler.samples, first_step + 2, first_step + m["seconds"] - 2)
    return {"wall": wall, "ray_start": m["ray_start_seconds"], "to_first_step": m["to_first_step_seconds"],
            "shares": shares, "system": sum(v for g, v in shares.items() if g in SYSTEM)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-ro-data-")
    per = args.images // 3
    data = make_shapes_dataset(os.path.join(root, "data"), classes=("circle", "square", "triangle"), n_train=per,
                               n_valid=max(8, per // 10), seed=0, easy=True, clutter=False)
    # Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s); it also
    # takes their reports and sees the run end at a poll, so a longer interval costs latency.
    poll10 = "raycat's lean local Ray, Train's controller polling every 10 s"
    runs = {"Ray's defaults (RAYCAT_FULL_RAY=1)": [], "raycat's lean local Ray": [], poll10: []}
    for _ in range(args.runs):
        for name in runs:
            extra = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "10"} if name == poll10 else None
            runs[name].append(one_run(data, lean=name.startswith("raycat"), extra_env=extra))
            r = runs[name][-1]
            print(f"{name}: system {r['system']:.1%}, ray start {r['ray_start']:.1f}s, first step "
                  f"{r['to_first_step']:.1f}s, wall {r['wall']:.0f}s", flush=True)
    groups = sorted({g for rs in runs.values() for r in rs for g in r["shares"]} & SYSTEM)
    med = lambda rs, f: statistics.median(f(r) for r in rs)  # noqa: E731
    rows = []
    for name, rs in runs.items():
        cells = [f"{med(rs, lambda r, g=g: r['shares'].get(g, 0.0)):.2%}" for g in groups]
        rows.append(f"| {name} | {med(rs, lambda r: r['system']):.2%} | {' | '.join(cells)} | "
                    f"{med(rs, lambda r: r['ray_start']):.1f} s | {med(rs, lambda r: r['to_first_step']):.1f} s | "
                    f"{med(rs, lambda r: r['wall']):.0f} s |")
    body = f"""## Ray's own processes during training (`bench/ray_overhead.py`)

`raycat train` (its own local Ray), 1 worker x all cores, resnet18 from scratch, 48 px, {per * 3} train
images, 4 epochs at a fixed rate, decoded images in memory. Share of the machine's CPU (CPU seconds
over wall seconds x {os.cpu_count()} cores) between the first optimizer step and the end of training,
sampled each second from /proc; median of {args.runs} runs each, the kinds alternating.
Machine: {machine()}.

| Ray | all of Ray's own | {' | '.join(groups)} | Ray start | to first step | whole command |
|---|---|{'---|' * len(groups)}---|---|---|
{chr(10).join(rows)}

Target: Ray's own processes <= 2% of the CPU during a 1-worker train on 2 cores.
"""
    print(body)
    write_section("ray_overhead", body)


if __name__ == "__main__":
    main()
