"""Scoring throughput: the whole `raycat predict --tta 0` command against a plain single-process loop
that lists the files, decodes, scores and writes Parquet, on the same images, model and cores.

The plain loop decodes each file with the same decoder and interpolation (core/decode.py's
libjpeg-turbo path, antialiased bilinear resize, centre crop), one file after another, and scores
batches of 128 on all cores (torch's threads); it writes the same columns (path, label,
prediction, confidence, p_<class>) to one Parquet file. raycat's figure is the whole command
(listing, decoding, scoring, Parquet parts, summary files) joining a Ray instance started before it
(Ray's start is reported apart, as a cluster's is already up). Median of --runs runs each.
`--ray full` (the default) starts that instance with Ray's defaults, as a cluster's head runs;
`--ray lean` as `raycat predict` starts one by itself on one machine.

--source picks the images: `synthetic` (the default: 160x120 JPEGs of drawn shapes), `fmnist`
(Fashion-MNIST's 28x28 PNGs, 40,000 by default: thumbnails, where per-file costs dominate; needs
apt-get install dataset-fashion-mnist) or `photos` (the ants/bees camera JPEGs, 130 to 2,592 px
wide, repeated to 20,000 by default; bench/real_photos.py extracts them). Each writes its own
section of RESULTS.md.

usage: python bench/predict_throughput.py [--source S] [--ray full|lean] [--images N] [--size S] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_random_model, write_section  # noqa: E402

from raycat.datasets import SHAPES, draw_shape  # noqa: E402
from raycat.shell.ray_session import LEAN_ENV  # noqa: E402

CLASSES = list(SHAPES[:4])
BATCH = 128


def make_images(root: str, n: int) -> None:
    """n JPEGs of 160x120 in 4 class folders: 200 distinct cluttered images, repeated."""
    import io

    rng = np.random.default_rng(0)
    bases = []
    for i in range(200):
        buf = io.BytesIO()
        draw_shape(CLASSES[i % 4], rng, 160, 120).save(buf, format="JPEG", quality=90)
        bases.append(buf.getvalue())
    for c in CLASSES:
        os.makedirs(os.path.join(root, c), exist_ok=True)
    for i in range(n):
        with open(os.path.join(root, CLASSES[i % 4], f"{i:07d}.jpg"), "wb") as f:
            f.write(bases[i % 200])


def make_fmnist(root: str, n: int) -> list[str]:
    """The first n Fashion-MNIST training images as 28x28 grayscale PNGs in their class folders."""
    from PIL import Image
    from time_to_accuracy import CLASSES as FMNIST
    from time_to_accuracy import IDX, read_idx

    x = read_idx(os.path.join(IDX, "train-images-idx3-ubyte.gz"))[:n]
    y = read_idx(os.path.join(IDX, "train-labels-idx1-ubyte.gz"))[:n]
    for c in FMNIST:
        os.makedirs(os.path.join(root, c), exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        Image.fromarray(img).save(os.path.join(root, FMNIST[label], f"{i:07d}.png"))
    return list(FMNIST)


def make_photos(root: str, n: int, source: str) -> list[str]:
    """n files copied round-robin from the ants/bees photos (train and valid) into ants/ and bees/."""
    # only the class folders' photos (fastai, run by bench/lesson.py, leaves a models/ folder beside them)
    files = sorted(os.path.join(source, split, c, f) for split in ("train", "valid") for c in ("ants", "bees")
                   for f in os.listdir(os.path.join(source, split, c)) if f.lower().endswith((".jpg", ".jpeg")))
    if not files:
        raise SystemExit(f"no photos under {source}: run bench/real_photos.py first (it extracts them)")
    classes = ["ants", "bees"]
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
    for i in range(n):
        src = files[i % len(files)]
        c = os.path.basename(os.path.dirname(src))
        ext = os.path.splitext(src)[1]
        shutil.copyfile(src, os.path.join(root, c, f"{i:07d}{ext}"))
    return classes


PHOTOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "real_photos", "hymenoptera")
SOURCES = {  # --source: (default images, default size, section, what the images are)
    "synthetic": (20000, 96, "predict_throughput", "JPEGs of 160x120"),
    "fmnist": (40000, 28, "predict_throughput_fmnist", "Fashion-MNIST PNGs of 28x28 (grayscale)"),
    "photos": (20000, 96, "predict_throughput_photos", "ants/bees camera JPEGs (130 to 2,592 px wide, repeated)"),
}


def plain_loop(model_dir: str, images: str, out: str, precision: str = "fp32") -> float:
    """The loop a user would write; with `precision` bf16, the same autocast and channels_last raycat
    runs (the same numeric work on both sides)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from raycat.core.augment import normalize
    from raycat.core.decode import decode_one
    from raycat.core.device import autocast, memory_format
    from raycat.edge import model_card

    t = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    folder, card = model_card.find(model_dir)
    cpu = torch.device("cpu")
    fmt = memory_format(cpu, precision)
    model = model_card.load(folder, card).to(memory_format=fmt)
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(images) for f in fs)
    labels = [os.path.basename(os.path.dirname(p)) for p in paths]
    probs = []
    with torch.no_grad():
        for i in range(0, len(paths), BATCH):
            x = torch.stack([decode_one(open(p, "rb").read(), card.size) for p in paths[i:i + BATCH]])
            with autocast(cpu, precision):
                logits = model(normalize(x, card.augment_spec()).contiguous(memory_format=fmt)).float()
            probs.append(torch.softmax(logits, 1))
    p = torch.cat(probs).numpy()
    cols = {"path": paths, "label": labels, "prediction": [card.classes[j] for j in p.argmax(1)],
            "confidence": p.max(1)}
    cols.update({f"p_{c}": p[:, j] for j, c in enumerate(card.classes)})
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table(cols), os.path.join(out, "predictions.parquet"))
    return time.perf_counter() - t


def pt2_loop(model_dir: str, images: str, out: str, precision: str = "fp32") -> float:
    """The loop a careful user writes around raycat's exported model.pt2, with nothing of raycat's:
    PIL decodes (with `Image.draft`: a JPEG decoded at the smallest 1/2, 1/4 or 1/8 scale still at
    least the target size), resizes the short side (bilinear) and centre-crops; the program takes
    uint8 NHWC, which it permutes: its convolutions run on a channels_last tensor, as raycat's do in
    bf16; bf16 is the same autocast raycat runs; Parquet out."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    t = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    card = json.load(open(os.path.join(model_dir, "model", "model.json")))
    program = torch.export.load(os.path.join(model_dir, "model", "model.pt2")).module()
    size, classes = card["size"], card["classes"]

    def load(path):
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG only; a no-op for other formats
            im = im.convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)))

    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(images) for f in fs)
    labels = [os.path.basename(os.path.dirname(p)) for p in paths]
    probs = []
    with torch.no_grad():
        for i in range(0, len(paths), BATCH):
            x = torch.from_numpy(np.stack([load(p) for p in paths[i:i + BATCH]]))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                probs.append(program(x).float())
    p = torch.cat(probs).numpy()
    cols = {"path": paths, "label": labels, "prediction": [classes[j] for j in p.argmax(1)], "confidence": p.max(1)}
    cols.update({f"p_{c}": p[:, j] for j, c in enumerate(classes)})
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table(cols), os.path.join(out, "predictions.parquet"))
    return time.perf_counter() - t


def raycat_predict(model_dir: str, images: str, out: str, address: str, tta: int, precision: str = "fp32"
                   ) -> tuple[float, float, float]:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_ADDRESS": address}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "raycat", "predict", model_dir, images, "--out", out, "--tta", str(tta),
                        "--batch-size", str(BATCH), "--precision", precision], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"raycat predict failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    first = float(re.search(r"first shard after ([\d.]+)s", r.stdout).group(1))
    actors = float(re.search(r"actors ready after ([\d.]+)s", r.stdout).group(1))
    return wall, first, actors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=sorted(SOURCES), default="synthetic")
    ap.add_argument("--images", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ray", choices=("full", "lean"), default="full")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="both sides: bf16 is what raycat's auto picks on a CPU with AMX")
    ap.add_argument("--arch", default="resnet18", help="the model scored (random weights: a load, not an accuracy)")
    ap.add_argument("--baseline", choices=("decode", "pt2"), default="decode",
                    help="decode: the plain loop with raycat's decoder and model; pt2: PIL and raycat's exported "
                         "model.pt2, nothing of raycat's")
    ap.add_argument("--kept-baseline", action="store_true",
                    help="also the plain loop in a process that keeps freed memory (results.keep_freed_memory)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    n_default, size_default, section, what = SOURCES[args.source]
    args.images, args.size = args.images or n_default, args.size or size_default
    tmp = tempfile.mkdtemp(prefix="raycat-predict-bench-")
    try:
        images = os.path.join(tmp, "images")
        if args.source == "fmnist":
            classes = make_fmnist(images, args.images)
        elif args.source == "photos":
            classes = make_photos(images, args.images, PHOTOS)
        else:
            classes = CLASSES
            make_images(images, args.images)
        model = write_random_model(os.path.join(tmp, "m"), classes, args.size, arch=args.arch,
                                   export=args.baseline == "pt2")
        loop = pt2_loop if args.baseline == "pt2" else plain_loop
        base = [loop(model, images, os.path.join(tmp, f"plain{i}"), args.precision) for i in range(args.runs)]
        print("plain", base, flush=True)
        kept = []
        if args.kept_baseline:
            # The same loop once this process keeps the memory torch frees (an experiment raycat withdrew)
            # (results.keep_freed_memory): what a plain loop gains from that one setting. Last:
            # the setting can't be undone in a process.
            from results import keep_freed_memory

            if not keep_freed_memory():
                raise SystemExit("--kept-baseline: keep_freed_memory did not take effect here (not glibc?)")
            kept = [loop(model, images, os.path.join(tmp, f"kept{i}"), args.precision) for i in range(args.runs)]
            print("plain, kept", kept, flush=True)
        t = time.perf_counter()
        # `ray start` turns token auth on (Ray 2.60's default); the commands that join it need to know.
        os.environ["RAY_AUTH_MODE"] = "token"
        # --ray lean: the instance `raycat predict` starts by itself on one machine (ray_session's
        # LEAN_ENV, no dashboard); full: Ray's defaults, as on a cluster's head node.
        lean_env = {**os.environ, **(LEAN_ENV if args.ray == "lean" else {})}
        head = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head",
                               f"--num-cpus={os.cpu_count()}", f"--include-dashboard={args.ray == 'full'}",
                               "--disable-usage-stats", f"--temp-dir={tmp}/ray"], capture_output=True, text=True,
                              check=True, env=lean_env)
        ray_start = time.perf_counter() - t
        address = re.search(r"ray start --address='([^']+)'", head.stdout).group(1)
        ours = [raycat_predict(model, images, os.path.join(tmp, f"ray{i}"), address, 0, args.precision)
                for i in range(args.runs)]
        # (--tta 4 scores 5 views: about a fifth of the speed by design; one run, on the default images)
        tta4 = (raycat_predict(model, images, os.path.join(tmp, "tta4"), address, 4, args.precision)
                if args.source == "synthetic" else None)
        print("raycat", ours, tta4, flush=True)
    finally:
        subprocess.run(["pkill", "-9", "-f", f"{tmp}/ray"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.images
    b = n / statistics.median(base)
    r0 = n / statistics.median(w for w, _, _ in ours)
    fixed = statistics.median(f for _, f, _ in ours)
    ready = statistics.median(a for _, _, a in ours)
    after_ready = statistics.median(f - a for _, f, a in ours)
    tta_row = (f"| raycat predict --tta 4 (one run) | {n / tta4[0]:.1f} | {n / tta4[0] / b:.2f}x |\n"
               if tta4 else "")
    kept_row = (f"| the same plain loop, in a process that keeps freed memory (the allocator experiment, "
                f"bench/results.keep_freed_memory; seconds {', '.join(f'{k:.1f}' for k in kept)}) | "
                f"{n / statistics.median(kept):.1f} | {n / statistics.median(kept) / b:.2f}x |\n" if kept else "")
    title = ("" if args.source == "synthetic" else f" --source {args.source}") + \
        (" --ray lean" if args.ray == "lean" else "") + (" --precision bf16" if args.precision == "bf16" else "") + \
        (f" --arch {args.arch}" if args.arch != "resnet18" else "") + \
        (" --baseline pt2" if args.baseline == "pt2" else "")
    ray_kind = ("a lean one, as `raycat predict` starts by itself on one machine (no dashboard, metrics "
                "or usage report)" if args.ray == "lean" else "Ray's defaults (dashboard, metrics), as on a "
                "cluster's head node")
    section += ("_lean" if args.ray == "lean" else "") + ("_bf16" if args.precision == "bf16" else "") + \
        (f"_{args.arch}" if args.arch != "resnet18" else "") + ("_pt2" if args.baseline == "pt2" else "")
    plain_what = ("PIL decode (with draft) and resize, raycat's exported model.pt2 (channels_last inside), nothing "
                  "of raycat's" if args.baseline == "pt2"
                  else "raycat's decoder and model")
    body = f"""## Predict throughput (`bench/predict_throughput.py{title}`)

{n:,} {what} -> {args.size} px, {args.arch}, batch {BATCH}, {os.cpu_count()} cores, {args.precision} on both sides
(bf16: autocast with channels_last); median of {args.runs} runs.
raycat's time is the whole command (listing, decode, scoring, Parquet, summaries), one scoring actor
with all cores, on a Ray instance already up (its start, {ray_start:.1f} s, is not counted): {ray_kind}.
Machine: {machine()}.

| run | img/s (whole command) | vs plain loop |
|---|---|---|
| plain PyTorch loop ({plain_what}: list, decode, score, write Parquet; 1 process) | {b:.1f} | 1.00x |
{kept_row}| raycat predict --tta 0 | {r0:.1f} | {r0 / b:.2f}x |
{tta_row}
Fixed cost per command (start to the first shard's summary, which includes scoring that shard's
512 images): {fixed:.1f} s: the scoring actors were up after {ready:.1f} s, and the first shard's summary came
{after_ready:.1f} s after that. Seconds per run: plain {', '.join(f'{s:.1f}' for s in base)}; raycat
{', '.join(f'{w:.1f}' for w, _, _ in ours)}.

Goal: at --tta 0, {"1.0x the plain loop on >= 20,000 real photos" if args.source == "photos" else
                   ">= 0.9x the plain loop"}, whole command.
"""
    print(body)
    if not args.no_write:
        write_section(section, body)


if __name__ == "__main__":
    main()
