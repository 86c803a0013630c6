"""The GPU path's figures, on whatever device is here (bench/gpu_check.sh runs it on a GPU machine;
`--device cpu --images 64` runs the same steps here, as CI's smoke test does). No Ray: raycat's
core runs without it, so this measures the core's decode, training and scoring on the device.

1. JPEG decode, img/s: core.decode.decode_batch on the device (nvJPEG) against every CPU core
   (libjpeg-turbo, one thread a core), both resizing to 224 px.
2. ResNet-50 training at 224 px fed from JPEG bytes, img/s: each step decodes its batch on the
   device, augments it there (side_on), and trains in bf16, channels_last (the stream mode); and
   the same from decoded pixels kept on the device (the memory cache mode).
3. Scoring, img/s: decode + plain view (--tta 0) and + 4 augmented views (--tta 4), bf16.

usage: python bench/gpu_bench.py OUT [--device cuda] [--images N] [--seconds S]
Writes OUT/gpu_bench.json and OUT/gpu_section.md (bench/RESULTS.md's section, with the device named).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raycat.core.augment import AugmentSpec, augment  # noqa: E402
from raycat.core.decode import decode_batch, decode_one  # noqa: E402
from raycat.core.device import autocast  # noqa: E402
from raycat.core.evaluate import view_probs  # noqa: E402
from raycat.core.model import create_model  # noqa: E402
from raycat.core.tta import tta_views  # noqa: E402

SIZE = 224


def photo_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n photo-like JPEGs of 500x375 (ImageNet's typical size): smooth colour fields, edges, noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for _ in range(n):
        c = rng.uniform(0, 255, (4, 3))
        t = (xx / 500)[..., None]
        s = (yy / 375)[..., None]
        a = c[0] * (1 - t) * (1 - s) + c[1] * t * (1 - s) + c[2] * (1 - t) * s + c[3] * t * s
        cx, cy, r = rng.uniform(100, 400), rng.uniform(80, 300), rng.uniform(30, 120)
        a[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        a += rng.normal(0, 8, a.shape)
        buf = io.BytesIO()
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, n_items: int, device: torch.device, seconds: float, warmup: int = 2) -> float:
    """Items per second of `fn` (which handles n_items), after warm-up, over about `seconds`."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0, done = time.perf_counter(), 0
    while True:
        fn()
        done += n_items
        sync(device)
        if time.perf_counter() - t0 >= seconds:
            return done / (time.perf_counter() - t0)


def bench_decode(blobs, device, seconds, batch):
    res = {}
    cores = os.cpu_count() or 1
    with ThreadPoolExecutor(cores) as pool:
        res["cpu_threads"] = cores
        res["cpu_img_s"] = rate(lambda: list(pool.map(lambda b: decode_one(b, SIZE), blobs)), len(blobs),
                                torch.device("cpu"), seconds, warmup=1)
    if device.type == "cuda":
        chunks = [blobs[i:i + batch] for i in range(0, len(blobs), batch)]
        res["device_img_s"] = rate(lambda: [decode_batch(c, SIZE, device) for c in chunks], len(blobs), device,
                                   seconds)
    return res


def bench_train(blobs, device, seconds, batch, arch="resnet50"):
    torch.manual_seed(0)
    model = create_model(arch, 1000).to(device=device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)
    gen, spec = torch.Generator().manual_seed(0), AugmentSpec()
    labels = torch.randint(0, 1000, (batch,), device=device)
    chunks = [blobs[i:i + batch] for i in range(0, len(blobs) - batch + 1, batch)] or [blobs]
    pool = ThreadPoolExecutor(os.cpu_count() or 1) if device.type == "cpu" else None
    state = {"i": 0}

    def step(x):
        x = augment(x, spec, gen).contiguous(memory_format=torch.channels_last)
        with autocast(device, "bf16"):
            out = model(x)
        loss = F.cross_entropy(out.float(), labels[:len(x)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def from_bytes():
        c = chunks[state["i"] % len(chunks)]
        state["i"] += 1
        step(decode_batch(c, SIZE, device, pool)[0])

    res = {"arch": arch, "batch": batch, "stream_img_s": rate(from_bytes, len(chunks[0]), device, seconds)}
    cache = torch.cat([decode_batch(c, SIZE, device, pool)[0] for c in chunks])

    def from_cache():
        idx = torch.randint(0, len(cache), (len(chunks[0]),), device=cache.device)
        step(cache[idx])

    res["cache_img_s"] = rate(from_cache, len(chunks[0]), device, seconds)
    return res


def bench_score(blobs, device, seconds, batch, arch="resnet50"):
    torch.manual_seed(0)
    model = create_model(arch, 1000).to(device=device, memory_format=torch.channels_last).eval()
    chunks = [blobs[i:i + batch] for i in range(0, len(blobs), batch)]
    pool = ThreadPoolExecutor(os.cpu_count() or 1) if device.type == "cpu" else None

    def forward(x):
        with autocast(device, "bf16"):
            return model(x.contiguous(memory_format=torch.channels_last)).float()

    res = {"arch": arch, "batch": batch}
    for n_views in (0, 4):
        views = tta_views(AugmentSpec(), n_views, torch.Generator().manual_seed(0))
        def score(v=views):
            return [view_probs(forward, decode_batch(c, SIZE, device, pool)[0], v) for c in chunks]

        res[f"tta{n_views}_img_s"] = rate(score, len(blobs), device, seconds)
    return res


def describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    return (f"{name}, {os.cpu_count()} CPU cores; Python {platform.python_version()}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}")


def section(r: dict) -> str:
    g = lambda *ks: r.get(ks[0], {}).get(ks[1])  # noqa: E731
    num = lambda v: isinstance(v, (int, float))  # noqa: E731
    fmt = lambda v: f"{v:,.0f}" if num(v) else "n/a"  # noqa: E731
    goal = lambda v, target: ("met" if v >= target else "NOT met") if num(v) else "n/a"  # noqa: E731
    dec, cpu = g("decode", "device_img_s"), g("decode", "cpu_img_s")
    stream, cache = g("train", "stream_img_s"), g("train", "cache_img_s")
    tta0, tta4 = g("score", "tta0_img_s"), g("score", "tta4_img_s")
    errors = "\n".join(f"- {k} failed: {v}" for k, v in r.get("errors", {}).items())
    return f"""## GPU path (`bench/gpu_check.sh`)

Device: {r['device']}. {r['images']} JPEGs of 500x375 decoded to 224 px; ResNet-50, bf16 autocast,
channels_last, batch {g('train', 'batch')}; no Ray on this machine (the core's figures).

| measure | img/s | goal |
|---|---|---|
| JPEG decode + resize on the device (nvJPEG) | {fmt(dec)} | >= 8,000: {goal(dec, 8000)} |
| JPEG decode + resize on {g('decode', 'cpu_threads')} CPU threads (libjpeg-turbo) | {fmt(cpu)} | - |
| ResNet-50 training, decoding every batch from JPEG bytes (stream) | {fmt(stream)} | >= 2,500: {goal(stream, 2500)} |
| ResNet-50 training from decoded pixels on the device (memory cache) | {fmt(cache)} | - |
| scoring, --tta 0 (decode + plain view) | {fmt(tta0)} | >= 5,000: {goal(tta0, 5000)} |
| scoring, --tta 4 | {fmt(tta4)} | - |
{errors}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measure")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    blobs = photo_jpegs(args.images)
    r = {"device": describe(device), "images": args.images, "make_seconds": round(time.time() - t0, 1),
         "errors": {}}
    print(f"{len(blobs)} JPEGs made in {r['make_seconds']}s on {r['device']}", flush=True)
    for name, fn in (("decode", bench_decode), ("train", bench_train), ("score", bench_score)):
        t = time.time()
        try:
            r[name] = fn(blobs, device, args.seconds, min(args.batch, len(blobs)))
        except Exception as e:  # noqa: BLE001 - one failed measure must not lose the others
            r["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        print(f"{name}: {r.get(name)} ({time.time() - t:.0f}s)", flush=True)
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(r, f, indent=2)
    with open(os.path.join(args.out, "gpu_section.md"), "w") as f:
        f.write(section(r))
    print(section(r))


if __name__ == "__main__":
    main()
