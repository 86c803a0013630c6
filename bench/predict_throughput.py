"""Batch inference throughput: `raycat predict` with --tta 0 and --tta 4 on 1 and 2 actors,
against a plain PyTorch loop (decode, resize, forward) over the same images and model.

usage: python bench/predict_throughput.py [--images N] [--size S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat import outputs, storage  # noqa: E402
from raycat.augment import eval_batch  # noqa: E402
from raycat.config import PredictConfig  # noqa: E402
from raycat.datasets import SHAPES, draw_shape  # noqa: E402
from raycat.decode import load_image  # noqa: E402
from raycat.model import create_model  # noqa: E402

BS = 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="raycat-bench-")
    imgs = os.path.join(tmp, "images")
    os.makedirs(imgs)
    rng = np.random.default_rng(0)
    for i in range(args.images):
        draw_shape(SHAPES[i % 4], rng, 96, 80).save(os.path.join(imgs, f"{i:06d}.jpg"), quality=90)
    classes = list(SHAPES[:4])
    torch.manual_seed(0)
    model = create_model("resnet18", 4, "none").eval()
    outputs.write_model(os.path.join(tmp, "m"), model.state_dict(), "resnet18", classes, args.size)
    paths = sorted(storage.list_files(imgs))

    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), BS):
            x = np.stack([load_image(storage.read_bytes(p), args.size) for p in paths[i:i + BS]])
            torch.softmax(model(eval_batch(x)), 1)
    plain = len(paths) / (time.perf_counter() - t)

    from raycat import ray_session
    from raycat.predict_job import run_predict

    ray_session.connect(None)
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    run_predict(PredictConfig(model=os.path.join(tmp, "m"), images=imgs, out=os.path.join(tmp, "warm"), tta=0,
                              batch_size=BS, workers=2))  # start Ray's workers once: a fixed cost
    rows = []
    for tta in (0, 4):
        for actors in (1, 2):
            out = os.path.join(tmp, f"p{tta}_{actors}")
            t = time.perf_counter()
            run_predict(PredictConfig(model=os.path.join(tmp, "m"), images=imgs, out=out, tta=tta, batch_size=BS,
                                      workers=actors))
            rate = len(paths) / (time.perf_counter() - t)
            n = json.load(open(os.path.join(out, "metrics.json")))["n_images"]
            assert n == len(paths)
            rows.append((tta, actors, rate))
    table = "\n".join(f"| raycat predict --tta {t}, {a} actor{'s' if a > 1 else ''} | {r:.1f} | {r / plain:.2f}x |"
                      for t, a, r in rows)
    body = f"""## Predict throughput (`bench/predict_throughput.py`)

{len(paths)} JPEGs of 96x80 -> {args.size} px, resnet18, batch {BS}; raycat's time is the whole command
(listing, decode, scoring, Parquet, metrics) after Ray's workers are warm. Machine: {machine()}.

| run | img/s | vs plain loop |
|---|---|---|
| plain PyTorch loop (decode, resize, forward; 1 process) | {plain:.1f} | 1.00x |
{table}

Goal: at --tta 0, >= 0.9x the plain loop on one machine.
"""
    print(body)
    write_section("predict_throughput", body)


if __name__ == "__main__":
    main()
