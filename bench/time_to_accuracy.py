"""The recipe on real data: Fashion-MNIST (Debian's dataset-fashion-mnist) exported to the
folder layout, trained from scratch with `raycat train`; accuracy and wall time go to RESULTS.md.

Install the data with: apt-get install dataset-fashion-mnist (IDX files under
/usr/share/datasets/fashion-mnist/). Goal: >= 93% valid accuracy from scratch on a 2-core
machine within 30 minutes.

usage: python bench/time_to_accuracy.py [--out DIR] [--workers N] [--unfrozen-cycles K]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

IDX = "/usr/share/datasets/fashion-mnist"
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def export(root: str) -> str:
    """train/ from the 60,000 training images, valid/ from the 10,000 test images, as PNGs."""
    from PIL import Image

    if os.path.isdir(os.path.join(root, "valid", CLASSES[-1])):
        return root
    for split, prefix in (("train", "train"), ("valid", "t10k")):
        x = read_idx(os.path.join(IDX, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(IDX, f"{prefix}-labels-idx1-ubyte.gz"))
        for c in CLASSES:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            Image.fromarray(img).save(os.path.join(root, split, CLASSES[label], f"{i:05d}.png"))
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "fmnist"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--unfrozen-cycles", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    if not os.path.isdir(IDX):
        sys.exit(f"{IDX} not found: apt-get install dataset-fashion-mnist")
    t = time.perf_counter()
    data = export(os.path.join(args.out, "data"))
    export_s = time.perf_counter() - t

    from raycat.config import TrainConfig
    from raycat.train_job import run_train

    out = os.path.join(args.out, "run")
    cfg = TrainConfig(data=data, out=out, arch="resnet18", weights="none", size=args.size, batch_size=128,
                      workers=args.workers, aug="side_on", max_zoom=1.1, precompute_epochs=0, head_cycles=0,
                      unfrozen_cycles=args.unfrozen_cycles, cycle_mult=2, patience=3, tta=2)
    t = time.perf_counter()
    run_train(cfg)
    wall = time.perf_counter() - t
    m = json.load(open(os.path.join(out, "metrics.json")))
    body = f"""## Time to accuracy (`bench/time_to_accuracy.py`)

Fashion-MNIST (60,000 train / 10,000 valid), resnet18 from scratch (`--weights none`, no download),
{args.size} px, batch 128, {args.workers} Train worker(s), side_on, lr from lr_find, SGDR cycle_mult 2 for
{args.unfrozen_cycles} cycles (no frozen stages: a random body has nothing worth freezing).
Machine: {machine()}.

| valid accuracy | with TTA | epochs | wall time of `raycat train` | export to PNG folders |
|---|---|---|---|---|
| {m['valid_accuracy']:.4f} | {m['valid_accuracy_tta']:.4f} | {m['epochs']} | {wall / 60:.1f} min | {export_s:.0f} s |

Goal: >= 93% valid accuracy from scratch within 30 minutes on 2 cores.
"""
    print(body)
    write_section("time_to_accuracy", body)


if __name__ == "__main__":
    main()
