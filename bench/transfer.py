"""Transfer on real data, the lesson's setting without ImageNet: a body trained on 5 Fashion-MNIST
classes, fine-tuned with the full recipe (frozen stages included) on the other 5 with 100 images
per class, against the same recipe from scratch on the same budget of epochs.

  1. pretrain: `raycat train` on t-shirt, trouser, pullover, dress, coat (30,000 images) from
     scratch with recipes/fashion_mnist.yaml, --unfrozen-cycles PRE epochs;
  2. transfer: `raycat train --weights <that model>` on sandal, shirt, sneaker, bag, ankle boot
     (100 images a class; valid: their 5,000 test images): precompute, head and unfrozen stages;
  3. scratch: the same 500 images, `--weights none`, as many epochs as transfer's stages.

usage: python bench/transfer.py [--pre-epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from results import machine, write_section  # noqa: E402
from time_to_accuracy import CLASSES, IDX, export  # noqa: E402

SOURCE, TARGET = CLASSES[:5], CLASSES[5:]
PER_CLASS = 100


def train(data: str, out: str, *flags: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "raycat", "train", data, "--out", out, "--config",
           os.path.join(ROOT, "recipes", "fashion_mnist.yaml"), *flags]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    m = json.load(open(os.path.join(out, "metrics.json")))
    with open(os.path.join(out, "history.csv")) as f:
        m["stages"] = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "data", "fmnist-transfer"))
    ap.add_argument("--pre-epochs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not os.path.isdir(IDX):
        sys.exit(f"{IDX} not found: apt-get install dataset-fashion-mnist")
    source = export(os.path.join(args.out, "source"), SOURCE)
    target = export(os.path.join(args.out, "target"), TARGET, per_class=PER_CLASS)
    pre = train(source, os.path.join(args.out, "pretrained"), "--unfrozen-cycles", "1", "--cycle-len",
                str(args.pre_epochs))
    print("pretrained", pre["valid_accuracy"], flush=True)
    # The full recipe: 1 epoch on activations, 2 head cycles, then 1 + 2 unfrozen epochs (sgdr, as the
    # lesson); scratch: the same 6 epochs, all of them training the whole network.
    stages = ["--precompute-epochs", "1", "--head-cycles", "2", "--unfrozen-cycles", "2", "--cycle-len", "1",
              "--cycle-mult", "2", "--schedule", "sgdr", "--batch-size", "32", "--patience", "99"]
    transfer = train(target, os.path.join(args.out, "transfer"), *stages, "--weights",
                     os.path.join(args.out, "pretrained"), "--lr-mult", "3")
    scratch = train(target, os.path.join(args.out, "scratch"), *stages[6:], "--unfrozen-cycles", "3",
                    "--cycle-mult", "1", "--cycle-len", "2", "--weights", "none")
    def epochs(m: dict) -> str:
        return " + ".join(f"{m['stages'].count(s)} {s}" for s in ("precompute", "head", "unfrozen") if s in m["stages"])

    def head(m: dict) -> str:  # what `raycat train` said --weights gave the head (metrics.json's notes)
        said = [n for n in m.get("notes", []) if n.startswith("--weights")]
        return ("fresh" if "fresh head" in said[0] else "kept") if said else "fresh (from scratch)"

    rows = "\n".join(
        f"| {name} | {epochs(m)} | {head(m)} "
        f"| {m['valid_accuracy']:.4f} | {m['valid_accuracy_tta']:.4f} | {m['valid_loss']:.3f} |"
        for name, m in (("transfer (body from the 5 source classes)", transfer), ("scratch", scratch)))
    body = f"""## Transfer on Fashion-MNIST (`bench/transfer.py`)

A body trained from scratch on {', '.join(SOURCE)} (30,000 images, {args.pre_epochs} epochs: valid accuracy
{pre['valid_accuracy']:.4f}), fine-tuned with the full recipe on {', '.join(TARGET)} with {PER_CLASS} images per
class (valid: their 5,000 test images), against the recipe from scratch on the same 500 images and as
many epochs. recipes/fashion_mnist.yaml's model and augmentation for all three. The transferred run
keeps the body only: its head is trained afresh, since the source's classes are not the target's.
Machine: {machine()}.

| run | epochs | head | valid accuracy | with TTA | valid loss |
|---|---|---|---|---|---|
{rows}

Margin: {transfer['valid_accuracy'] - scratch['valid_accuracy']:+.4f} accuracy for the transferred body.
"""
    print(body)
    if not args.no_write:
        write_section("transfer", body)


if __name__ == "__main__":
    main()
