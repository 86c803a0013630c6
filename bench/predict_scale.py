"""Scale: `raycat predict` over 20,000 and 200,000 small generated images, 1 in 100 unreadable, from a
folder and from a Parquet manifest of the same files: img/s, the driver's peak RSS (flat), the
fixed cost, and every image accounted for (predicted + skipped = total, each path once, none both).

Each run is a `raycat predict` of its own (a child process, so its peak RSS is its own) on one Ray
instance started first (the fixed cost of Ray's start is reported apart). The model is a resnet18
with random weights at 32 px: the load, not the accuracy.

usage: python bench/predict_scale.py [--images N ...] [--workers W]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_random_model, write_section  # noqa: E402

from raycat.datasets import SHAPES, draw_shape  # noqa: E402

CLASSES = list(SHAPES[:4])


def make_images(root: str, n: int, seed: int = 0) -> tuple[int, int]:
    """n JPEGs of 48x40 in 4 class folders (100 distinct images, repeated); every 100th truncated.
    Returns (readable, unreadable)."""
    rng = np.random.default_rng(seed)
    bases = []
    for i in range(100):
        buf = io.BytesIO()
        draw_shape(CLASSES[i % 4], rng, 48, 40).save(buf, format="JPEG", quality=85)
        bases.append(buf.getvalue())
    for c in CLASSES:
        os.makedirs(os.path.join(root, c), exist_ok=True)
    bad = 0
    for i in range(n):
        data = bases[i % 100]
        if i % 100 == 99:
            data, bad = data[: len(data) // 3], bad + 1
        with open(os.path.join(root, CLASSES[i % 4], f"{i:07d}.jpg"), "wb") as f:
            f.write(data)
    return n - bad, bad


def make_manifest(root: str, n: int, path: str) -> str:
    """A Parquet manifest of the images make_images wrote: path (relative to the manifest) and label."""
    rel = [f"{os.path.basename(root)}/{CLASSES[i % 4]}/{i:07d}.jpg" for i in range(n)]
    pq.write_table(pa.table({"path": rel, "label": [CLASSES[i % 4] for i in range(n)]}), path)
    return path


def run(model: str, images: str, out: str, workers: int, address: str | None = None, tta: int = 0) -> dict:
    """One `raycat predict` in a child process; the driver's peak RSS as the command reports it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [sys.executable, "-m", "raycat", "predict", model, images, "--out", out, "--tta", str(tta),
           "--workers", str(workers), "--batch-size", "128"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    m = re.search(r"driver peak RSS (\d+) MB", proc.stdout)
    first = re.search(r"first shard after ([\d.]+)s", proc.stdout)
    paths = pads.dataset(os.path.join(out, "predictions"), format="parquet").to_table(columns=["path"]) \
        .column("path").to_pylist()
    skipped = []
    if os.path.exists(os.path.join(out, "skipped.csv")):
        with open(os.path.join(out, "skipped.csv")) as f:
            skipped = [r["path"] for r in csv.DictReader(f)]
    return {"seconds": seconds, "peak_mb": int(m.group(1)) if m else None,
            "first_shard_s": float(first.group(1)) if first else None, "predicted": len(paths),
            "unique": len(set(paths)), "skipped": len(skipped), "skipped_unique": len(set(skipped)),
            "overlap": len(set(paths) & set(skipped))}


def check(r: dict, n: int) -> None:
    assert r["predicted"] + r["skipped"] == n, r
    assert r["unique"] == r["predicted"] and r["skipped_unique"] == r["skipped"] and r["overlap"] == 0, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="raycat-scale-")
    head = None
    try:
        model = write_random_model(os.path.join(tmp, "m"), CLASSES, 32)
        t = time.perf_counter()
        # `ray start` turns token auth on (Ray 2.60's default); the commands that join it need to know.
        os.environ["RAY_AUTH_MODE"] = "token"
        head = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head",
                               f"--num-cpus={os.cpu_count()}", "--include-dashboard=true", "--disable-usage-stats",
                               f"--temp-dir={tmp}/ray"], capture_output=True, text=True, check=True)
        ray_start = time.perf_counter() - t
        address = re.search(r"ray start --address='([^']+)'", head.stdout).group(1)
        rows = []
        for n in args.images:
            images = os.path.join(tmp, f"images{n}")
            good, bad = make_images(images, n)
            manifest = make_manifest(images, n, os.path.join(tmp, f"manifest{n}.parquet"))
            for source, where in (("folder", images), ("manifest", manifest)):
                r = run(model, where, os.path.join(tmp, f"out{n}{source}"), args.workers, address)
                check(r, n)
                rows.append((n, source, good, bad, r))
                print(n, source, r, flush=True)
            shutil.rmtree(images, ignore_errors=True)
    finally:
        subprocess.run(["pkill", "-9", "-f", f"{tmp}/ray"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    table = "\n".join(
        f"| {n:,} | {source} | {r['predicted']:,} + {r['skipped']:,} = {r['predicted'] + r['skipped']:,} | "
        f"{r['peak_mb']} MB | {r['first_shard_s']:.1f} s | {r['seconds']:.0f} s | {n / r['seconds']:.0f} |"
        for n, source, good, bad, r in rows)
    peaks = [r["peak_mb"] for *_, r in rows]
    body = f"""## Predict at scale (`bench/predict_scale.py`)

`raycat predict` ({args.workers} scoring actor(s), --tta 0, batch 128) over small JPEGs (48x40 -> 32 px, resnet18
with random weights: the load, not the accuracy), every 100th file truncated, in 4 class folders or
listed in a Parquet manifest (`path`, `label`). Each run joins one Ray instance started before them
(Ray's start: {ray_start:.1f} s, not counted). Peak RSS is the driver's, as the command reports it
(getrusage). Every image accounted for: predicted + skipped = total, each path once, none both.
Machine: {machine()}.

| images | source | predicted + skipped | driver peak RSS | first shard done after | wall (whole command) | img/s |
|---|---|---|---|---|---|---|
{table}

Driver peak RSS, largest / smallest run: {max(peaks) / min(peaks):.2f}x (flat: the driver holds per-shard
summaries, never paths or rows).
"""
    print(body)
    if not args.no_write:
        write_section("predict_scale", body)


if __name__ == "__main__":
    main()
