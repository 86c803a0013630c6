"""Images per second per core: decode, augment and crop to 224 px, from JPEGs of about 500x375.

Runs, in one process and on the same files and cores:
  baseline: PIL + torchvision transforms in a torch DataLoader (num_workers = cores)
  raycat:   the Ray Data pipeline (decode once into the cache, then augment every epoch)
Both do the same work per image in epoch 1 (decode, resize, random flip/rotate/zoom/lighting,
crop, normalise). From epoch 2 raycat augments from its decoded cache while the baseline decodes
again: both epochs are reported. Ray's start-up is a fixed cost, reported apart.

usage: python bench/data_pipeline.py [--images N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat.datasets import SHAPES, draw_shape  # noqa: E402

SIZE = 224


def make_jpegs(folder: str, n: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"img_{i:05d}.jpg")
        if not os.path.exists(p):
            draw_shape(SHAPES[i % len(SHAPES)], rng, 500, 375).save(p, quality=90)
        paths.append(p)
    return paths


class TorchvisionImages(torch.utils.data.Dataset):
    def __init__(self, paths):
        import torchvision.transforms as T

        self.paths = paths
        self.tf = T.Compose([
            T.Resize(SIZE),
            T.CenterCrop(SIZE),
            T.RandomAffine(degrees=10, scale=(1.0, 1.1)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.05, contrast=0.05),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB")), 0


def baseline_epoch(paths, cores: int, batch: int = 64) -> float:
    dl = torch.utils.data.DataLoader(TorchvisionImages(paths), batch_size=batch, num_workers=cores, shuffle=True)
    t = time.perf_counter()
    n = sum(x.shape[0] for x, _ in dl)
    assert n == len(paths)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "jpegs_500x375")
    paths = make_jpegs(data, args.images)
    n = len(paths)

    torch.set_num_threads(1)
    base1 = baseline_epoch(paths, cores)
    base2 = baseline_epoch(paths, cores)

    from raycat import pipeline, ray_session
    from raycat.augment import AugmentSpec

    t = time.perf_counter()
    ray_session.connect(None)
    ray_start = time.perf_counter() - t
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = AugmentSpec("side_on", 1.1)

    def one_pass(cached) -> float:
        t = time.perf_counter()
        batches = cached.augmented(spec).iter_torch_batches(batch_size=64, collate_fn=pipeline.collate_normalized)
        m = sum(b["image"].shape[0] for b in batches)
        assert m == n
        return time.perf_counter() - t

    # Warm-up on a few images: Ray starts its worker processes (each imports torch) on first use;
    # that is a fixed cost per cluster, like the start-up, not a per-image one.
    t = time.perf_counter()
    k = min(n, 384)  # enough blocks to start every worker process Ray will use
    warm = pipeline.cache_images(paths[:k], [0] * k, SIZE)
    sum(1 for _ in warm.augmented(spec).iter_torch_batches(batch_size=64))
    warm_up = time.perf_counter() - t
    t = time.perf_counter()
    cached = pipeline.cache_images(paths, [0] * n, SIZE, shuffle_seed=0)
    decode = time.perf_counter() - t
    aug1 = one_pass(cached)
    ray1 = decode + aug1
    ray2 = one_pass(cached)
    rate = lambda secs: n / secs / cores
    rows = [
        ("epoch 1 (decode + augment)", rate(base1), rate(ray1)),
        ("epoch 2+ (raycat: augment from cache)", rate(base2), rate(ray2)),
    ]
    table = "\n".join(f"| {name} | {b:.1f} | {r:.1f} | {r / b:.2f}x |" for name, b, r in rows)
    body = f"""## Data pipeline (`bench/data_pipeline.py`)

{n} JPEGs of 500x375 -> 224x224, side_on augmentation, normalised float batches of 64.
Machine: {machine()}.
Fixed costs, not counted: Ray start-up {ray_start:.1f} s, first use of its workers {warm_up:.1f} s.

| pass | baseline: PIL + torchvision + DataLoader, img/s/core | raycat on Ray Data, img/s/core | ratio |
|---|---|---|---|
{table}

Goal: raycat >= 0.9x the baseline per core on one machine (epoch 1, where both decode).
"""
    print(body)
    write_section("data_pipeline", body)


if __name__ == "__main__":
    main()
