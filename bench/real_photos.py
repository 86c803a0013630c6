"""Real photographs from scratch: the default recipe on PyTorch's ants/bees set (245 train, 153 valid
JPEGs, 130 to 2,592 px wide, progressive JPEGs among them), seed by seed, and with --fastai, fastai
2.8 on the same folders, size and number of epochs, in the same script.

What it checks (issue 20): lr_find on a flat, noisy curve must not read the noise's minimum (it did,
and suggested 1e-5, and the run stayed at chance), so the default recipe learns.

The photos come from the public repository zhangtao7750/syn (folder hymenoptera_data); bring it
with the search tool's `fetch github:zhangtao7750/syn` and pass its git directory as --repo. They
are extracted into bench/data/ (not tracked); `val/` becomes `valid/`.

usage: python bench/real_photos.py --repo GIT_DIR [--seeds 0 1 2] [--size 96] [--fastai]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from results import machine, write_section  # noqa: E402
from time_to_accuracy import FASTAI, FASTAI_INSTALL  # noqa: E402

DEFAULT_REPO = "/work/.mirror/zhangtao7750+syn/repo"


def git_folder(repo: str, folder: str, near: str) -> tuple[str, str]:
    """(a temporary folder made in `near`, the path in it of `folder` from the git directory `repo`'s
    HEAD): the caller moves what it keeps out, then removes the temporary folder."""
    os.makedirs(near, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=near)
    archive = os.path.join(tmp, "folder.tar")
    subprocess.run(["git", "--git-dir", repo, "archive", "-o", archive, "HEAD", folder], check=True)
    with tarfile.open(archive) as t:
        t.extractall(tmp, filter="data")
    return tmp, os.path.join(tmp, folder)


def extract(repo: str, dest: str) -> str:
    """dest/train/{ants,bees}, dest/valid/{ants,bees} from the repository's hymenoptera_data/."""
    if os.path.isdir(os.path.join(dest, "valid")):
        return dest
    tmp, src = git_folder(repo, "hymenoptera_data", os.path.dirname(dest))
    os.rename(os.path.join(src, "val"), os.path.join(src, "valid"))
    os.rename(src, dest)
    shutil.rmtree(tmp)
    return dest


def raycat_run(data: str, out: str, seed: int, size: int, flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "raycat", "train", data, "--out", out, "--weights", "none", "--size", str(size),
           "--seed", str(seed), *flags]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    m = json.load(open(os.path.join(out, "metrics.json")))
    return {"wall": wall, "accuracy": m["valid_accuracy"], "accuracy_tta": m["valid_accuracy_tta"],
            "lr": m["base_lr"], "epochs": m["epochs"], "stopped_early": m["stopped_early"],
            "batch": m.get("batch_size")}


def fastai_run(data: str, seed: int, size: int, epochs: int, arch: str) -> dict:
    """fastai 2.8 as its docs teach it: lr_find (valley), then fit_one_cycle for raycat's number of
    epochs; the same arch from scratch, folders, size and machine; its default augmentation."""
    code = f"""
import time, json
t0 = time.perf_counter()
from fastai.vision.all import *
set_seed({seed}, reproducible=True)
torch.set_num_threads({os.cpu_count()})
dls = ImageDataLoaders.from_folder({data!r}, train="train", valid="valid", item_tfms=Resize({size}),
                                   batch_tfms=aug_transforms(size={size}), bs=64)
learn = vision_learner(dls, {arch}, pretrained=False, metrics=accuracy)
lr = learn.lr_find(show_plot=False).valley
learn.fit_one_cycle({epochs}, lr)
v = learn.validate()
print("RESULT", json.dumps({{"lr": lr, "accuracy": float(v[1]), "wall": time.perf_counter() - t0}}), flush=True)
"""
    env = {**os.environ, "PYTHONPATH": FASTAI}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"fastai failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return {**json.loads(lines[-1].split("RESULT", 1)[1]), "wall": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=DEFAULT_REPO, help="git directory of zhangtao7750/syn")
    ap.add_argument("--out", default=os.path.join(HERE, "data", "real_photos"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--fastai", action="store_true", help=f"also run fastai 2.8 (install: {FASTAI_INSTALL})")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data = extract(args.repo, os.path.join(args.out, "hymenoptera"))
    ours, theirs = [], []
    for seed in args.seeds:
        r = raycat_run(data, os.path.join(args.out, f"raycat-{seed}"), seed, args.size, [])
        print("raycat", seed, r, flush=True)
        ours.append(r)
        if args.fastai:
            f = fastai_run(data, seed, args.size, r["epochs"], "resnet34")
            print("fastai", seed, f, flush=True)
            theirs.append(f)
    rows = "\n".join(f"| raycat | {s} | {r['lr']:.2e} | {r['epochs']} | {r['accuracy']:.4f} | {r['accuracy_tta']:.4f} "
                     f"| {r['wall']:.0f} |" for s, r in zip(args.seeds, ours, strict=True))
    rows += "".join(f"\n| fastai 2.8 | {s} | {f['lr']:.2e} | {r['epochs']} | {f['accuracy']:.4f} | | {f['wall']:.0f} |"
                    for s, r, f in zip(args.seeds, ours, theirs, strict=False))
    med = lambda runs, k: statistics.median(x[k] for x in runs)  # noqa: E731
    summary = f"raycat median accuracy {med(ours, 'accuracy'):.4f} (TTA {med(ours, 'accuracy_tta'):.4f}), " \
              f"wall {med(ours, 'wall'):.0f} s"
    if theirs:
        summary += f"; fastai median accuracy {med(theirs, 'accuracy'):.4f}, wall {med(theirs, 'wall'):.0f} s"
    who = ("fastai 2.8 (lr_find valley, fit_one_cycle for as many epochs, resnet34 from scratch, its default "
           "augmentation) on the same folders and size") if theirs else "no fastai run"
    body = f"""## Real photos from scratch: ants/bees (`bench/real_photos.py`)

`raycat train DATA --weights none --size {args.size}` (the default recipe otherwise: resnet34, lr_find, SGDR
1+2+4 epochs with patience 2, the default batch for 245 images: {ours[0]['batch']}, BatchNorm statistics
re-taken at each epoch's end) on PyTorch's ants/bees photos (245 train, 153 valid), one run per seed;
{who} (its default batch, 64). Both run alone on the machine, one after the other.
Chance is 0.54 (83 bees of 153). Machine: {machine()}.

| run | seed | lr (lr_find) | epochs | valid accuracy | with TTA | wall s |
|---|---|---|---|---|---|---|
{rows}

{summary}.
"""
    print(body)
    if not args.no_write:
        write_section("real_photos", body)


if __name__ == "__main__":
    main()
