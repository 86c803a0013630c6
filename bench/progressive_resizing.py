"""Progressive resizing (fast.ai's DAWNBench trick) screened on raycat's core, before it goes into
the recipe: is accuracy per second better when early epochs train on smaller images?

recipes/fashion_mnist.yaml's model and training (resnet18, small_pool stem, bf16 autocast with
channels_last, flip_shift, SGD with Nesterov momentum 0.9, weight decay 5e-4, label smoothing 0.1,
batch 128, one cycle over the epochs at a fixed --lr) on a Fashion-MNIST subset, decoded once at
28 px and held in memory. "Progressive" trains epoch e at the size --sizes names (each batch
augmented at 28 px, then resized with antialiasing: decode once); "constant" trains every epoch at
28 px. Both are scored at 28 px after every epoch, with BatchNorm's statistics re-taken from 256
training images at 28 px (the recipe's --bn-images). Same seeds, same steps; medians over seeds.
Training time excludes validation.

usage: python bench/progressive_resizing.py [--per-class 600] [--seeds 0 1 2] [--sizes 20,20,24,24,28,28]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402
from time_to_accuracy import IDX, read_idx  # noqa: E402

from raycat.core import bn_stats  # noqa: E402
from raycat.core.augment import AugmentSpec, augment, normalize  # noqa: E402
from raycat.core.device import autocast  # noqa: E402
from raycat.core.model import create_model, set_train_mode  # noqa: E402
from raycat.core.schedules import one_cycle_lr  # noqa: E402

BS, FULL = 128, 28


def load(per_class: int, n_valid: int) -> tuple[torch.Tensor, ...]:
    x = read_idx(f"{IDX}/train-images-idx3-ubyte.gz")
    y = read_idx(f"{IDX}/train-labels-idx1-ubyte.gz")
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    vx = read_idx(f"{IDX}/t10k-images-idx3-ubyte.gz")[:n_valid]
    vy = read_idx(f"{IDX}/t10k-labels-idx1-ubyte.gz")[:n_valid]
    rgb = lambda a: torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return rgb(x[keep]), torch.from_numpy(y[keep].astype(np.int64)), rgb(vx), torch.from_numpy(vy.astype(np.int64))


def train(data, sizes: list[int], lr: float, seed: int) -> dict:
    x, y, vx, vy = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    spec = AugmentSpec(preset="flip_shift")
    cl, dev = torch.channels_last, torch.device("cpu")
    model = create_model("resnet18", 10, stem="small_pool").to(memory_format=cl)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    spe = len(x) // BS
    total = spe * len(sizes)
    train_s, accs = 0.0, []
    for e, size in enumerate(sizes):
        set_train_mode(model)
        t = time.perf_counter()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(spe):
            idx = perm[i * BS:(i + 1) * BS]
            xb = augment(x[idx], spec, gen)
            if size != FULL:
                xb = F.interpolate(xb, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            for g in opt.param_groups:
                g["lr"] = one_cycle_lr(lr, e * spe + i, total)
            with autocast(dev, "bf16"):
                out = model(xb.contiguous(memory_format=cl)).float()
            loss = F.cross_entropy(out, y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_s += time.perf_counter() - t
        # BatchNorm's statistics re-taken at full size, as the recipe does after every epoch.
        tail = [augment(x[perm[j:j + BS]], spec, gen).contiguous(memory_format=cl) for j in (0, BS)]
        with autocast(dev, "bf16"):
            bn_stats.recompute(model, tail, model)
        model.eval()
        correct = 0
        with torch.inference_mode(), autocast(dev, "bf16"):
            for j in range(0, len(vx), 500):
                pred = model(normalize(vx[j:j + 500], spec).contiguous(memory_format=cl)).argmax(1)
                correct += int((pred == vy[j:j + 500]).sum())
        accs.append(correct / len(vx))
        print(f"  seed {seed} sizes {sizes} epoch {e + 1} at {size} px: acc {accs[-1]:.4f}, train {train_s:.1f} s",
              flush=True)
    return {"train_s": train_s, "acc": accs[-1], "accs": accs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=600)
    ap.add_argument("--valid", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", default="20,20,24,24,28,28")
    ap.add_argument("--lr", type=float, default=0.04)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    data = load(a.per_class, a.valid)
    prog = [int(s) for s in a.sizes.split(",")]
    runs = {"constant": [FULL] * len(prog), "progressive": prog}
    got: dict[str, list[dict]] = {k: [] for k in runs}
    for seed in a.seeds:  # the two kinds alternate, so a slow minute of the machine hits both
        for kind, sizes in runs.items():
            got[kind].append(train(data, sizes, a.lr, seed))
    med = {k: {"train_s": statistics.median(r["train_s"] for r in v), "acc": statistics.median(r["acc"] for r in v)}
           for k, v in got.items()}
    def each(v: list[dict], key: str, fmt: str) -> str:
        return ", ".join(format(r[key], fmt) for r in v)

    rows = [f"| {k} | {','.join(map(str, runs[k]))} | {each(v, 'acc', '.4f')} | {med[k]['acc']:.4f} | "
            f"{each(v, 'train_s', '.0f')} | {med[k]['train_s']:.0f} | "
            f"{med[k]['train_s'] / med['constant']['train_s']:.2f}x |" for k, v in got.items()]
    body = f"""## Progressive resizing, screened on the core (`bench/progressive_resizing.py`)

Fashion-MNIST, {a.per_class} train images a class ({10 * a.per_class}), the first {a.valid} test images as
valid; recipes/fashion_mnist.yaml's model and training (resnet18 small_pool, bf16 + channels_last,
flip_shift, Nesterov SGD, label smoothing 0.1, batch {BS}) with one cycle over {len(prog)} epochs at lr {a.lr};
progressive epochs augment at 28 px and resize each batch (antialiased), scoring and BatchNorm
statistics at 28 px. Seeds {a.seeds}, the kinds alternating; medians. Training time excludes validation.
Machine: {machine()}.

| run | sizes by epoch | valid accuracy (each seed) | median | train s (each seed) | median | time vs constant |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    print(body)
    if not a.no_write:
        write_section("progressive_resizing", body)


if __name__ == "__main__":
    main()
