"""The recipe on real data: Fashion-MNIST (Debian's dataset-fashion-mnist) exported to the folder
layout, trained from scratch with `raycat train --config recipes/fashion_mnist.yaml`; accuracy
against wall time (every epoch's line timestamped as the command prints it) goes to RESULTS.md,
and, with --fastai, fastai 2.8 on the same data, budget and machine, in the same script.

Install the data with: apt-get install dataset-fashion-mnist (IDX files under
/usr/share/datasets/fashion-mnist/). Goal: >= 92% (93%) valid accuracy from scratch on this 2-core
machine within 30 minutes, and fastai's accuracy in at most 0.6x its wall time.

fastai is never a raycat dependency: it goes into bench/.fastai only (see fastai_run below).

usage: python bench/time_to_accuracy.py [--config FILE] [--workers N] [--fastai] [--fastai-epochs E]
       python bench/time_to_accuracy.py --per-class 600 --epochs 3 --runs 3   (a subset, against fastai)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from results import machine, write_section  # noqa: E402

IDX = "/usr/share/datasets/fashion-mnist"
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
FASTAI = os.path.join(HERE, ".fastai")
FASTAI_INSTALL = (f"{sys.executable} -m pip install --target {FASTAI} --no-deps fastai==2.8.12 fastcore fasttransform "
                  "fastdownload 'fastprogress==1.0.3' 'plum-dispatch<2.10' beartype typing-extensions rich "
                  "markdown-it-py mdurl pygments scikit-learn threadpoolctl joblib scipy cloudpickle narwhals")


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def export(root: str, classes: list[str] | None = None, per_class: int | None = None,
           splits=(("train", "train"), ("valid", "t10k"))) -> str:
    """train/ from the 60,000 training images, valid/ from the 10,000 test images, as PNGs; `classes`
    and `per_class` (train only) cut a subset (bench/transfer.py)."""
    from PIL import Image

    keep = classes or CLASSES
    if os.path.isdir(os.path.join(root, "valid", keep[-1])):
        return root
    for split, prefix in splits:
        x = read_idx(os.path.join(IDX, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(IDX, f"{prefix}-labels-idx1-ubyte.gz"))
        for c in keep:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        counts: dict[str, int] = {}
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            c = CLASSES[label]
            if c not in keep or (split == "train" and per_class and counts.get(c, 0) >= per_class):
                continue
            counts[c] = counts.get(c, 0) + 1
            Image.fromarray(img).save(os.path.join(root, split, c, f"{i:05d}.png"))
    return root


def timed_run(cmd: list[str], env: dict | None = None) -> tuple[list[tuple[float, str]], float, int]:
    """Run a command, stamping each line of its output with seconds since the start."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip()))
        print(f"{lines[-1][0]:7.1f}s {line.rstrip()}", flush=True)
    proc.wait()
    return lines, time.perf_counter() - t0, proc.returncode


EPOCH_ROW = re.compile(r"(unfrozen|head|precompute)\s+(\d+)\s+\S+\s+\S+\s+\S+\s+([\d.]+)\s")


def raycat_run(data: str, out: str, config: str, workers: int, extra: tuple[str, ...] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    lines, wall, rc = timed_run([sys.executable, "-m", "raycat", "train", data, "--out", out, "--config", config,
                                 "--workers", str(workers), *extra], env)
    if rc != 0:
        raise SystemExit(f"raycat train failed ({rc})")
    curve, seen = [], set()
    for t, line in lines:
        m = EPOCH_ROW.search(line)
        if m and (m.group(1), m.group(2)) not in seen:  # a row may be echoed twice by Ray's log forwarding
            seen.add((m.group(1), m.group(2)))
            curve.append((t, f"{m.group(1)} {m.group(2)}", float(m.group(3))))
    return {"wall": wall, "curve": curve, "metrics": json.load(open(os.path.join(out, "metrics.json")))}


def fastai_run(data: str, epochs: int, size: int = 28, bs: int = 128) -> dict:
    """fastai 2.8's way, as its docs teach it: lr_find (valley), then fit_one_cycle; resnet18 with
    pretrained=False; the same folders and machine; its default augmentation and DataLoader."""
    code = f"""
import time, json
t0 = time.perf_counter()
from fastai.vision.all import *
torch.set_num_threads({os.cpu_count()})
dls = ImageDataLoaders.from_folder({data!r}, train="train", valid="valid", item_tfms=Resize({size}),
                                   batch_tfms=aug_transforms(size={size}, min_scale=0.75), bs={bs})
learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
lr = learn.lr_find(show_plot=False).valley
print("lr_find valley", lr, f"{{time.perf_counter() - t0:.1f}}s", flush=True)
learn.fit_one_cycle({epochs}, lr)
v = learn.validate()
print("RESULT", json.dumps({{"lr": lr, "valid_loss": float(v[0]), "accuracy": float(v[1]),
                             "wall": time.perf_counter() - t0}}), flush=True)
"""
    env = {**os.environ, "PYTHONPATH": FASTAI, "PYTHONUNBUFFERED": "1"}
    lines, wall, rc = timed_run([sys.executable, "-c", code], env)
    result = [json.loads(line.split("RESULT", 1)[1]) for _, line in lines if line.startswith("RESULT")]
    if rc != 0 or not result:
        raise SystemExit(f"fastai failed ({rc})")
    return {**result[0], "wall": wall, "epochs": epochs}


def subset_against_fastai(args) -> None:
    """The issue's comparison: --per-class images a class, --epochs epochs each, --runs runs of each
    (alternating), whole commands. raycat: the Fashion-MNIST recipe with one cycle of --epochs.
    Time to fastai's accuracy: when raycat's epoch row first reaches fastai's median accuracy."""
    import shutil
    import statistics

    t = time.perf_counter()
    data = export(os.path.join(args.out, f"data-{args.per_class}"), per_class=args.per_class)
    export_s = time.perf_counter() - t
    ours, theirs = [], []
    e = str(args.epochs)
    for i in range(args.runs):
        out = os.path.join(args.out, f"run-{args.per_class}-{i}")
        shutil.rmtree(out, ignore_errors=True)
        ours.append(raycat_run(data, out, args.config, args.workers, ("--cycle-len", e, "--patience", e)))
        theirs.append(fastai_run(data, args.epochs))
    fa_acc = statistics.median(f["accuracy"] for f in theirs)
    fa_wall = statistics.median(f["wall"] for f in theirs)
    reach = [next((t for t, _, acc in r["curve"] if acc >= fa_acc), None) for r in ours]
    got = [t for t in reach if t is not None]
    med_reach = statistics.median(got) if len(got) == len(reach) else None
    fixed = [(r["metrics"]["ray_start_seconds"], r["metrics"]["to_first_step_seconds"]) for r in ours]
    rows = "\n".join(
        f"| {i} | {r['metrics']['valid_accuracy']:.4f} | {r['wall']:.0f} | "
        f"{'-' if t is None else f'{t:.0f}'} | {f['accuracy']:.4f} | {f['wall']:.0f} |"
        for i, (r, t, f) in enumerate(zip(ours, reach, theirs, strict=True)))
    ratio = f"**{med_reach / fa_wall:.2f}x**" if med_reach else "never (some run did not reach it)"
    n, k = f"{10 * args.per_class:,}", args.per_class
    body = f"""## Fashion-MNIST {n} against fastai (`bench/time_to_accuracy.py --per-class {k}`)

{k} train images a class ({n}), the 10,000 test images as valid (PNG folders, exported in
{export_s:.0f} s), {args.epochs} epochs each from scratch, whole commands, {args.runs} runs each, alternating. raycat:
`raycat train DATA --config recipes/fashion_mnist.yaml --cycle-len {args.epochs} --patience {args.epochs}` (its own
local Ray, its lr_find sweep, TTA and outputs included). fastai 2.8.12: lr_find (valley), then
fit_one_cycle({args.epochs}), resnet18 pretrained=False, 28 px, batch 128, aug_transforms.
Machine: {machine()}.

| run | raycat accuracy | raycat wall s | raycat at fastai's median accuracy, s | fastai accuracy | fastai wall s |
|---|---|---|---|---|---|
{rows}

fastai: median accuracy {fa_acc:.4f}, median wall {fa_wall:.0f} s. raycat: median accuracy
{statistics.median(r['metrics']['valid_accuracy'] for r in ours):.4f}, median wall
{statistics.median(r['wall'] for r in ours):.0f} s; it reached fastai's accuracy after {ratio} fastai's wall time
(target: at most 0.6x). raycat's fixed costs (Ray start, then command to first step), each run:
{', '.join(f'{a:.0f} s + {b:.0f} s' for a, b in fixed)}.
"""
    print(body)
    if not args.no_write:
        write_section(f"time_to_accuracy_{args.per_class}", body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "data", "fmnist"))
    ap.add_argument("--config", default=os.path.join(ROOT, "recipes", "fashion_mnist.yaml"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--fastai", action="store_true", help=f"also run fastai 2.8 (install: {FASTAI_INSTALL})")
    ap.add_argument("--fastai-epochs", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--per-class", type=int, help="a subset of this many train images a class, against fastai")
    ap.add_argument("--epochs", type=int, default=3, help="with --per-class: epochs for both")
    ap.add_argument("--runs", type=int, default=3, help="with --per-class: runs of each")
    args = ap.parse_args()
    if not os.path.isdir(IDX):
        sys.exit(f"{IDX} not found: apt-get install dataset-fashion-mnist")
    if args.per_class:
        return subset_against_fastai(args)
    t = time.perf_counter()
    data = export(os.path.join(args.out, "data"))
    export_s = time.perf_counter() - t
    r = raycat_run(data, os.path.join(args.out, f"run-{args.workers}w"), args.config, args.workers)
    m = r["metrics"]
    fa = fastai_run(data, args.fastai_epochs) if args.fastai else None
    curve = "\n".join(f"| {name} | {t / 60:.1f} | {acc:.4f} |" for t, name, acc in r["curve"])
    fastai_rows = ""
    if fa:
        reach = next((t for t, _, acc in r["curve"] if acc >= fa["accuracy"]), None)
        ratio = f"{reach / fa['wall']:.2f}x its wall time ({reach / 60:.1f} min)" if reach else "never, in this run"
        fastai_rows = f"""
fastai 2.8.12 on the same folders and machine (lr_find valley {fa['lr']:.2e}, then fit_one_cycle({fa['epochs']}),
resnet18 pretrained=False, 28 px, batch 128, aug_transforms): valid accuracy {fa['accuracy']:.4f} in
{fa['wall'] / 60:.1f} min. raycat passed that accuracy after {ratio} (goal: at most 0.6x).
"""
    body = f"""## Fashion-MNIST from scratch (`bench/time_to_accuracy.py`)

Fashion-MNIST (60,000 train / 10,000 valid, Debian's dataset-fashion-mnist exported to PNG folders in
{export_s:.0f} s), `raycat train DATA --config recipes/fashion_mnist.yaml` with {args.workers} Train
worker(s): no pretrained weights. Machine: {machine()}.

Accuracy against wall time (minutes since the command started; every epoch's row as printed):

| epoch | wall (min) | valid accuracy |
|---|---|---|
{curve}

Final: valid accuracy {m['valid_accuracy']:.4f}, with TTA ({m['tta_views']} views)
{m['valid_accuracy_tta']:.4f}, best epoch {m['best_epoch']}; whole command {r['wall'] / 60:.1f} min (Ray start
{m['ray_start_seconds']:.0f} s, then {m['to_first_step_seconds']:.0f} s to the first step).
Goal: >= 92% (93%) within 30 minutes on 2 cores.
{fastai_rows}"""
    print(body)
    if not args.no_write:
        write_section("time_to_accuracy", body)


if __name__ == "__main__":
    main()
