"""Load test: `raycat predict` over >= 20,000 small images, 1 in 100 unreadable, with its own local
Ray, as a user runs it. Reports the driver's peak RSS at a tenth of the images and at all of them
(bounded memory: the ratio stays near 1), the rate, and that every image is accounted for:
predicted + skipped = total, each path exactly once.

usage: python bench/predict_load.py [--images 20000] [--size 32]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.dataset as pads
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat import outputs  # noqa: E402
from raycat.datasets import SHAPES, draw_shape  # noqa: E402
from raycat.model import create_model  # noqa: E402

CLASSES = list(SHAPES[:4])


def make_images(root: str, n: int, seed: int = 0) -> tuple[int, int]:
    """n files under root/<class>/: 100 distinct small JPEGs reused, every 100th file truncated.
    Returns (readable, unreadable)."""
    rng = np.random.default_rng(seed)
    import io

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
        with open(os.path.join(root, CLASSES[i % 4], f"{i:06d}.jpg"), "wb") as f:
            f.write(data)
    return n - bad, bad


def run(model: str, images: str, out: str, workers: int, address: str | None = None) -> dict:
    """One `raycat predict` in a child process (its own local Ray, or the one at `address`); the
    driver's peak RSS as the command reports it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if address:
        env["RAY_ADDRESS"] = address
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    cmd = [sys.executable, "-m", "raycat", "predict", model, images, "--out", out, "--tta", "0",
           "--workers", str(workers), "--batch-size", "128"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    text = proc.communicate()[0]
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{text[-3000:]}")
    m = re.search(r"driver peak RSS (\d+) MB", text)
    fs_table = pads.dataset(os.path.join(out, "predictions"), format="parquet").to_table(columns=["path"])
    paths = fs_table.column("path").to_pylist()
    with open(os.path.join(out, "skipped.csv")) as f:
        skipped = [r["path"] for r in csv.DictReader(f)]
    return {"seconds": seconds, "peak_mb": int(m.group(1)) if m else None, "predicted": len(paths),
            "unique": len(set(paths)), "skipped": len(skipped), "skipped_unique": len(set(skipped)),
            "overlap": len(set(paths) & set(skipped))}


def check(r: dict, n: int) -> None:
    assert r["predicted"] + r["skipped"] == n, r
    assert r["unique"] == r["predicted"] and r["skipped_unique"] == r["skipped"] and r["overlap"] == 0, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="raycat-load-")
    try:
        torch.manual_seed(0)
        model = os.path.join(tmp, "m")
        outputs.write_model(model, create_model("resnet18", 4, "none").state_dict(), "resnet18", CLASSES,
                            args.size)
        rows = []
        for n in (args.images // 10, args.images):
            images = os.path.join(tmp, f"images{n}")
            good, bad = make_images(images, n)
            r = run(model, images, os.path.join(tmp, f"out{n}"), args.workers)
            check(r, n)
            rows.append((n, good, bad, r))
            print(f"{n} images: {r}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n0, r0 = rows[0][0], rows[0][3]
    table = "\n".join(
        f"| {n:,} | {good:,} | {bad:,} | {r['predicted']:,} + {r['skipped']:,} = {r['predicted'] + r['skipped']:,} "
        f"| {r['peak_mb']} MB | {r['seconds']:.0f} s | {n / r['seconds']:.0f} |" for n, good, bad, r in rows)
    ratio = rows[-1][3]["peak_mb"] / r0["peak_mb"] if r0["peak_mb"] else float("nan")
    body = f"""## Predict load test (`bench/predict_load.py`)

`raycat predict` (its own local Ray, {args.workers} actors, --tta 0, batch 128) over small JPEGs
(48x40 -> {args.size} px, resnet18 with random weights: the load, not the accuracy), every 100th file
truncated. Peak RSS is the driver's, as the command reports it (getrusage). Every image accounted
for: predicted + skipped = total, each path exactly once, none both. Machine: {machine()}.

| images | readable | unreadable | predicted + skipped | driver peak RSS | wall (incl. Ray start) | img/s |
|---|---|---|---|---|---|---|
{table}

Driver peak RSS at {rows[-1][0]:,} images / at {n0:,}: {ratio:.2f}x (bounded: the driver streams
the scored Parquet in batches and never holds the rows).
"""
    print(body)
    if not args.no_write:
        write_section("predict_load", body)


if __name__ == "__main__":
    main()
