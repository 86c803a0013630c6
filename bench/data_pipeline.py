"""Images per second per core through the input pipeline: read, decode, resize, augment and
normalise to 224 px float batches, from JPEGs of 500x375.

In one process, on the same files and the same cores (median of --runs each):
  baseline: PIL decode and resize + torchvision v2 transforms (RandomAffine rotation and zoom,
            flip, ColorJitter brightness/contrast, Normalize) in a DataLoader with one worker
            process per core, one thread each; every epoch decodes again.
  raycat:   the Train worker's data path (train_worker.ShardData): Ray Data streams the file
            bytes, the consumer decodes them on its own threads (core/decode.py) and augments
            (core/augment.py, side_on: the same transforms as the baseline's, one grid_sample);
            epoch 1 decodes, later epochs augment from the decoded pixels kept in memory.
Both resize with antialiased bilinear interpolation. Ray's start-up and its first use of worker
processes are fixed costs, reported apart.

usage: python bench/data_pipeline.py [--images N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat.datasets import SHAPES, draw_shape  # noqa: E402

SIZE = 224
BATCH = 64


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
        import torchvision.transforms.v2 as T

        self.paths = paths
        self.tf = T.Compose([
            T.PILToTensor(),
            T.Resize(SIZE, antialias=True),
            T.CenterCrop(SIZE),
            T.RandomAffine(degrees=10, scale=(1.0, 1.1)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.05, contrast=0.05),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB")), 0


def baseline_epoch(loader, n: int) -> float:
    t = time.perf_counter()
    assert sum(x.shape[0] for x, _ in loader) == n
    return time.perf_counter() - t


def raycat_epochs(paths: list[str], cores: int, runs: int) -> tuple[list[float], list[float]]:
    """(epoch-1 seconds, later-epoch seconds) of the Train worker's data path, `runs` each."""
    from raycat.config import steps_per_epoch
    from raycat.core.augment import AugmentSpec, augment
    from raycat.shell import pipeline
    from raycat.shell.train_worker import ShardData

    spec, gen = AugmentSpec("side_on", 1.1), torch.Generator().manual_seed(0)
    first, later = [], []
    for _ in range(runs):
        shard = pipeline.files_dataset(paths, [0] * len(paths), shuffle_seed=0).streaming_split(1)[0]
        data = ShardData(shard, None, SIZE, BATCH, steps_per_epoch(len(paths), 1, BATCH), torch.device("cpu"),
                         cache=True, threads=cores)
        for epochs in (first, later):
            t = time.perf_counter()
            n = sum(augment(x, spec, gen).shape[0] for x, _ in data.train_batches(gen))
            epochs.append(time.perf_counter() - t)
            assert n >= len(paths) - BATCH, n
    return first, later


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "jpegs_500x375")
    paths = make_jpegs(data, args.images)
    n = len(paths)

    torch.set_num_threads(1)  # the DataLoader's workers run one thread each, one worker per core
    loader = torch.utils.data.DataLoader(TorchvisionImages(paths), batch_size=BATCH, num_workers=cores,
                                         shuffle=True, persistent_workers=False)
    base = [baseline_epoch(loader, n) for _ in range(args.runs)]

    from raycat.shell import pipeline, ray_session

    torch.set_num_threads(cores)  # raycat's consumer: one process with a thread per core
    t = time.perf_counter()
    ray_session.connect(None)
    ray_start = time.perf_counter() - t
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    t = time.perf_counter()
    sum(1 for _ in pipeline.files_dataset(paths[:256], [0] * 256).iter_batches(batch_size=BATCH))
    warm_up = time.perf_counter() - t
    first, later = raycat_epochs(paths, cores, args.runs)

    rate = lambda secs: n / statistics.median(secs) / cores  # noqa: E731
    rows = [("epoch 1 (read + decode + augment)", rate(base), rate(first)),
            ("later epochs (raycat: augment from memory; baseline: decode again)", rate(base), rate(later))]
    table = "\n".join(f"| {name} | {b:.1f} | {r:.1f} | {r / b:.2f}x |" for name, b, r in rows)
    body = f"""## Data pipeline (`bench/data_pipeline.py`)

{n} JPEGs of 500x375 -> 224x224, side_on augmentation, normalised float32 batches of {BATCH}; median of
{args.runs} runs each. Machine: {machine()}.
Fixed costs, not counted: Ray start-up {ray_start:.1f} s, first use of its read tasks {warm_up:.1f} s.
Seconds per epoch: baseline {', '.join(f'{s:.1f}' for s in base)}; raycat epoch 1
{', '.join(f'{s:.1f}' for s in first)}, later {', '.join(f'{s:.1f}' for s in later)}.

| pass | baseline: PIL + torchvision v2 + DataLoader, img/s/core | raycat, img/s/core | ratio |
|---|---|---|---|
{table}

Goals: epoch 1 >= 0.9x, later epochs >= 1.0x the baseline per core; stretch: 440 img/s per core at 224 px.
"""
    print(body)
    if not args.no_write:
        write_section("data_pipeline", body)


if __name__ == "__main__":
    main()
