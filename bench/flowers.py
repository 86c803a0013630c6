"""The lesson at its own scale: 2,000 train photos. The default command, `raycat train DATA --size 224
--workers 2`, on 4,317 flower photos (5 classes, 128 px thumbnails; martinwestin/flower_classification),
split once by a fixed seed into 2,000 train and 2,317 valid (stratified), with where its time went.

- `--code DIR` runs another checkout's raycat (its folder first on PYTHONPATH): before/after in one
  script, on the same machine and photos.
- `--precision fp32|bf16|auto` (default auto: bf16 only on CPUs with AMX).
- `--flags ...` adds raycat flags (for instance `--precompute-epochs 1 --unfrozen-cycles 0`: the head as
  the last round trained it, alone).
- `--fastai` also runs fastai 2.8's `fine_tune(1)` on the same photos, body and weights (bench/lesson.py's
  script: lr_find valley, one frozen epoch, one unfrozen, TTA), whole command, and gives raycat's time
  as a ratio of it.

The photos come from the public repository martinwestin/flower_classification: bring it with the
search tool's `fetch github:martinwestin/flower_classification` and pass its git directory as
--repo. They are extracted into bench/data/flowers (not tracked).

usage: python bench/flowers.py [--repo GIT_DIR] [--code DIR --label before] [--seeds 0] [--flags ...] [--fastai]
       [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import lesson  # noqa: E402
from real_photos import git_folder  # noqa: E402
from results import machine, write_section  # noqa: E402
from time_to_accuracy import EPOCH_ROW, timed_run  # noqa: E402

DEFAULT_REPO = "/work/.mirror/martinwestin+flower_classification/repo"
N_TRAIN, SPLIT_SEED = 2000, 0
REACH = 0.70  # the accuracy whose first epoch row times each run (fastai's fine_tune(1) ends at 0.61)


def extract(repo: str, dest: str) -> str:
    """dest/{train,valid}/<class>/: a stratified split, N_TRAIN train photos in all, fixed by SPLIT_SEED."""
    if os.path.isdir(os.path.join(dest, "valid")):
        return dest
    tmp, src = git_folder(repo, "flowers", os.path.dirname(dest))
    classes = sorted(c for c in os.listdir(src) if os.path.isdir(os.path.join(src, c)))
    files = {c: sorted(f for f in os.listdir(os.path.join(src, c)) if f.lower().endswith((".jpg", ".jpeg", ".png")))
             for c in classes}
    total = sum(map(len, files.values()))
    rng = random.Random(SPLIT_SEED)
    staged = os.path.join(tmp, "split")
    for c in classes:
        names = files[c][:]
        rng.shuffle(names)
        k = round(N_TRAIN * len(names) / total)
        for split, part in (("train", names[:k]), ("valid", names[k:])):
            os.makedirs(os.path.join(staged, split, c), exist_ok=True)
            for n in part:
                os.rename(os.path.join(src, c, n), os.path.join(staged, split, c, n))
    os.rename(staged, dest)
    shutil.rmtree(tmp)
    return dest


def run(data: str, out: str, seed: int, code: str | None, flags: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    if code:
        env["PYTHONPATH"] = os.path.abspath(code) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "raycat", "train", data, "--out", out, "--size", "224", "--workers", "2",
           "--seed", str(seed), *flags]
    lines, wall, rc = timed_run(cmd, env)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc})")
    m = json.load(open(os.path.join(out, "metrics.json")))
    rows = [line for _, line in lines if EPOCH_ROW.search(line) or "lr_find" in line or "stopping" in line]
    best_at = None
    for t, line in lines:  # when the run's final accuracy was first reached by an epoch row
        hit = EPOCH_ROW.search(line)
        if hit and float(hit.group(3)) >= round(m["valid_accuracy"], 4) - 1e-9:  # (the table shows 4 places)
            best_at = t
            break
    # when an epoch row first showed REACH plain valid accuracy: time to accuracy, comparable across bodies
    reach_at = next((t for t, line in lines if (hit := EPOCH_ROW.search(line)) and float(hit.group(3)) >= REACH),
                    None)
    return {"wall": wall, "metrics": m, "rows": rows, "best_at": best_at, "reach_at": reach_at, "seed": seed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=DEFAULT_REPO)
    ap.add_argument("--code", default=None, help="another checkout's folder: run its raycat")
    ap.add_argument("--label", default="this commit")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=os.path.join(HERE, "data", "flowers-runs"))
    ap.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more raycat flags (last on the line)")
    ap.add_argument("--fastai", action="store_true", help="also run fastai 2.8's fine_tune(1) (bench/lesson.py)")
    ap.add_argument("--reuse", action="store_true", help="read back a fastai run already in --out")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    lesson.REUSE = args.reuse
    data = extract(args.repo, os.path.join(HERE, "data", "flowers"))
    counts = {s: sum(len(os.listdir(os.path.join(data, s, c))) for c in os.listdir(os.path.join(data, s)))
              for s in ("train", "valid")}
    results = [run(data, os.path.join(args.out, f"{args.label.replace(' ', '_')}-{s}"), s, args.code,
                   ["--precision", args.precision, *args.flags]) for s in args.seeds]
    os.makedirs(args.out, exist_ok=True)
    fa = lesson.fastai_fine_tune(data, 0, args.out) if args.fastai else None
    lines = []
    for r in results:
        m = r["metrics"]
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in (m.get("seconds_by_part") or {}).items())
        reached = f"{r['best_at']:.0f} s" if r["best_at"] is not None else "-"
        reach = f"{r['reach_at']:.0f} s" if r["reach_at"] is not None else "never"
        lines.append(f"- {args.label}, seed {r['seed']}: **{r['wall']:.0f} s** whole command; valid accuracy "
                     f"{m['valid_accuracy']:.4f} ({m['valid_accuracy_tta']:.4f} with TTA), {m['epochs']} epochs, "
                     f"its final accuracy first reached at {reached}, {REACH:.2f} at {reach}; Ray start "
                     f"{m['ray_start_seconds']:.0f} s, to the first step {m.get('to_first_step_seconds') or 0:.0f} s"
                     + (f"; {parts}" if parts else f"; validation {m['valid_seconds']:.0f} s") + ".")
        lines.append("  ```\n" + "\n".join(f"  {x}" for x in r["rows"]) + "\n  ```")
    if fa:
        lines.append(f"- fastai 2.8.12 `fine_tune(1)` (seed 0; lr_find valley {fa['lr']:.2e}, one frozen epoch, one "
                     f"unfrozen, TTA; Lite0 from the same installed weights): **{fa['wall']:.0f} s** whole command, "
                     f"valid accuracy {fa['accuracy']:.4f} ({fa['accuracy_tta']:.4f} with TTA), "
                     f"{fa['to_validate']:.0f} s to its validated model.")
        for r in results:
            m = r["metrics"]
            lines.append(f"- raycat seed {r['seed']} / fastai: **{r['wall'] / fa['wall']:.2f}x** the whole command "
                         f"(target <= 0.5x), at {m['valid_accuracy_tta']:.4f} against {fa['accuracy_tta']:.4f} "
                         "with TTA (target: at least fastai's).")
    extra = "".join(f" {f}" for f in args.flags)
    arch = args.flags[args.flags.index("--arch") + 1] if "--arch" in args.flags else None
    body_is = (f"{arch} from ImageNet, the installed weights" if arch else "the default body, Lite0 from ImageNet")
    body = f"""## The lesson at its scale: flowers, 2,000 train photos (`bench/flowers.py`)

`raycat train DATA --size 224 --workers 2 --precision {args.precision}{extra}` ({body_is}),
{counts['train']} train and {counts['valid']} valid photos (5 classes, 128 px thumbnails upscaled).
Machine: {machine()}.

{chr(10).join(lines)}
"""
    print(body, flush=True)
    if not args.no_write:
        write_section(f"flowers_{args.label.replace(' ', '_')}", body)


if __name__ == "__main__":
    main()
