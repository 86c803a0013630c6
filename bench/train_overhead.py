"""Training throughput: raycat's training step on Ray Train (1 and 2 workers) against a plain
single-process PyTorch loop on the same model and data, plus Ray's fixed start-up cost.

Both train resnet18 from scratch, all layers, batch 32, side_on augmentation, on the same
synthetic images. raycat's figure is its unfrozen-stage epochs (history.csv), so lr_find and
start-up are not in it; they are reported apart.

usage: python bench/train_overhead.py [--images-per-class N] [--size S]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat import storage  # noqa: E402
from raycat.augment import AugmentSpec, augment_batch  # noqa: E402
from raycat.config import TrainConfig  # noqa: E402
from raycat.datasets import make_shapes_dataset  # noqa: E402
from raycat.decode import load_image  # noqa: E402
from raycat.layout import scan_layout  # noqa: E402
from raycat.model import create_model  # noqa: E402

EPOCHS = 2
BS = 32


def plain_loop(data: str, size: int) -> float:
    lay = scan_layout(data)
    x = np.stack([load_image(storage.read_bytes(p), size) for p in lay.train.paths])
    y = torch.tensor(lay.train.labels)
    torch.manual_seed(0)
    model = create_model("resnet18", len(lay.classes), "none")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen, spec = torch.Generator().manual_seed(0), AugmentSpec()
    model.train()
    t = time.perf_counter()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x)).numpy()
        for i in range(0, len(x), BS):
            idx = perm[i:i + BS]
            loss = F.cross_entropy(model(augment_batch(x[idx], spec, gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return EPOCHS * len(x) / (time.perf_counter() - t)


def raycat_run(data: str, size: int, workers: int, out: str) -> tuple[float, float]:
    from raycat.train_job import fit_recipe

    cfg = TrainConfig(data=data, out=out, arch="resnet18", weights="none", size=size, batch_size=BS, workers=workers,
                      lr=0.01, precompute_epochs=0, head_cycles=0, unfrozen_cycles=EPOCHS, cycle_mult=1,
                      patience=EPOCHS + 1, tta=0)
    t = time.perf_counter()
    r = fit_recipe(cfg)
    wall = time.perf_counter() - t
    hist = [h for h in r["state"].history if h["stage"] == "unfrozen"]
    secs = sum(h["seconds"] for h in hist)
    return r["n_train"] * len(hist) / secs, wall - r["state"].seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images-per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="raycat-bench-")
    data = make_shapes_dataset(os.path.join(tmp, "data"), n_train=args.images_per_class, n_valid=10, seed=0)
    torch.set_num_threads(os.cpu_count() or 1)
    plain = plain_loop(data, args.size)
    from raycat import ray_session

    t = time.perf_counter()
    ray_session.connect(None)
    ray_start = time.perf_counter() - t
    rows = []
    for w in (1, 2):
        rate, fixed = raycat_run(data, args.size, w, os.path.join(tmp, f"out{w}"))
        rows.append((w, rate, fixed))
    table = "\n".join(f"| raycat, {w} worker{'s' if w > 1 else ''} | {r:.1f} | {r / plain:.2f}x | {f:.0f} s |"
                      for w, r, f in rows)
    body = f"""## Training overhead (`bench/train_overhead.py`)

resnet18 from scratch, all layers training, {args.size} px, batch {BS} per worker, side_on augmentation,
{4 * args.images_per_class} images, {EPOCHS} epochs. Machine: {machine()}.
Ray start-up: {ray_start:.1f} s. "Fixed" = the run's wall time outside the recipe's own units
(decode and cache, Train worker start, process group, checkpoint upload, final gather).

| run | train img/s | vs plain loop | fixed cost per run |
|---|---|---|---|
| plain PyTorch loop, 1 process ({torch.get_num_threads()} threads) | {plain:.1f} | 1.00x | - |
{table}
"""
    print(body)
    write_section("train_overhead", body)


if __name__ == "__main__":
    main()
