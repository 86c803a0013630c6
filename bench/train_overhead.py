"""Training throughput: raycat's unfrozen epochs on Ray Train (1 worker x all cores, and 2 workers x
1 core each) against a plain single-process PyTorch loop on the same model, images and cores; and
raycat's fixed cost from the start of the command to its first optimizer step.

Both train resnet18 from scratch, all layers, batch 64 per process, side_on augmentation (the
same function, core/augment.py), SGD with momentum, on the same decoded images held in memory
(the plain loop decodes them before its clock starts; raycat's first epoch decodes, so its figure
is taken from the later epochs, and its first epoch is reported apart). Neither figure includes
validation: raycat times it apart (history.csv's `seconds` against `valid_seconds`). Each figure is
the median of 3 epochs of --images images.

usage: python bench/train_overhead.py [--images N] [--size S]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat.core.augment import AugmentSpec, augment  # noqa: E402
from raycat.core.decode import decode_one  # noqa: E402
from raycat.core.model import create_model  # noqa: E402
from raycat.datasets import make_shapes_dataset  # noqa: E402
from raycat.edge import storage  # noqa: E402
from raycat.edge.layout import scan_layout  # noqa: E402

EPOCHS = 3
BS = 64


def plain_loop(data: str, size: int) -> list[float]:
    """Seconds per epoch of the loop a user would write, on all cores of one process."""
    torch.set_num_threads(os.cpu_count() or 1)
    lay = scan_layout(data)
    x = torch.stack([decode_one(storage.read_bytes(p), size) for p in lay.train.paths])
    y = torch.tensor(lay.train.labels)
    torch.manual_seed(0)
    model = create_model("resnet18", len(lay.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    gen, spec = torch.Generator().manual_seed(0), AugmentSpec()
    model.train()
    times = []
    for _ in range(EPOCHS):
        t = time.perf_counter()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BS):
            idx = perm[i:i + BS]
            loss = F.cross_entropy(model(augment(x[idx], spec, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return times


def raycat_run(data: str, out: str, size: int, workers: int) -> dict:
    """One `raycat train` (its own local Ray): 1 + EPOCHS unfrozen epochs at a fixed rate."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "raycat", "train", data, "--out", out, "--arch", "resnet18", "--weights", "none",
           "--size", str(size), "--batch-size", str(BS), "--workers", str(workers), "--lr", "0.01",
           "--unfrozen-cycles", str(EPOCHS + 1), "--cycle-mult", "1", "--patience", "99", "--tta", "0"]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"raycat train failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "history.csv")) as f:
        hist = list(csv.DictReader(f))
    m = json.load(open(os.path.join(out, "metrics.json")))
    return {"first": float(hist[0]["seconds"]), "later": [float(h["seconds"]) for h in hist[1:]],
            "valid": [float(h["valid_seconds"]) for h in hist], "wall": wall, "ray_start": m["ray_start_seconds"],
            "to_first_step": m["to_first_step_seconds"], "cpus": m["cpus_per_worker"], "cache": m["cache"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="raycat-train-bench-")
    data = make_shapes_dataset(os.path.join(tmp, "data"), classes=("circle", "square", "triangle", "star"),
                               n_train=args.images // 4, n_valid=50, seed=0, min_side=args.size,
                               max_side=args.size + 24)
    n = 4 * (args.images // 4)
    base = plain_loop(data, args.size)
    print("plain", base, flush=True)
    runs = {w: raycat_run(data, os.path.join(tmp, f"out{w}"), args.size, w) for w in (1, 2)}
    for w, r in runs.items():
        print(w, r, flush=True)
    rate = lambda secs: n / statistics.median(secs)  # noqa: E731
    b = rate(base)
    rows = [f"| plain PyTorch loop, 1 process ({os.cpu_count()} threads) | {b:.1f} | 1.00x | - | - |"]
    for w, r in runs.items():
        rows.append(f"| raycat, {w} worker(s) x {r['cpus']} CPU | {rate(r['later']):.1f} | {rate(r['later']) / b:.2f}x "
                    f"| {n / r['first']:.1f} | {r['ray_start']:.1f} s + {r['to_first_step']:.1f} s |")
    body = f"""## Training throughput (`bench/train_overhead.py`)

resnet18 from scratch, all layers training, {args.size} px, batch {BS} per process, side_on augmentation,
{n:,} images, SGD; median of {EPOCHS} epochs each. raycat's figure is from its epochs after the first
(decoded images in memory: `--cache memory`); its first epoch (which reads and decodes) is apart.
Validation is timed apart by raycat and not run by the plain loop. Machine: {machine()}.

| run | train img/s | vs plain loop | raycat epoch 1 img/s | fixed: Ray start + command to first step |
|---|---|---|---|---|
{chr(10).join(rows)}

Targets: 1 worker >= 0.95x the plain loop; 2 workers on 2 cores no slower per image than 1 worker;
command to first optimizer step <= 15 s after Ray is up.
"""
    print(body)
    if not args.no_write:
        write_section("train_overhead", body)


if __name__ == "__main__":
    main()
