"""Does augmentation help on raycat's synthetic data? The same resnet18, from scratch, trained with
`--aug none` and with `--aug side_on` on a small training set of the shapes generator; valid loss
and accuracy of each, in one process, same seed, same number of steps.

usage: python bench/augmentation_helps.py [--per-class N] [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat.core.augment import AugmentSpec, augment, normalize  # noqa: E402
from raycat.core.decode import decode_one  # noqa: E402
from raycat.core.model import create_model  # noqa: E402
from raycat.datasets import make_shapes_dataset  # noqa: E402
from raycat.edge import storage  # noqa: E402
from raycat.edge.layout import scan_layout  # noqa: E402

SIZE = 48


def train(preset: str, tx, ty, vx, vy, epochs: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    model = create_model("resnet18", int(ty.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    gen, spec = torch.Generator().manual_seed(0), AugmentSpec(preset, 1.3)
    best = float("inf")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(tx))
        for i in range(0, len(tx), 16):
            idx = perm[i:i + 16]
            loss = F.cross_entropy(model(augment(tx[idx], spec, gen)), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(normalize(vx))
        vl = F.cross_entropy(out, vy).item()
        best = min(best, vl)
    return vl, best, (out.argmax(1) == vy).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    root = make_shapes_dataset(os.path.join(tempfile.mkdtemp(), "d"), n_train=args.per_class, n_valid=50, seed=3,
                               easy=True)
    lay = scan_layout(root)
    load = lambda ps: torch.stack([decode_one(storage.read_bytes(p), SIZE) for p in ps])  # noqa: E731
    tx, vx = load(lay.train.paths), load(lay.valid.paths)
    ty, vy = torch.tensor(lay.train.labels), torch.tensor(lay.valid.labels)
    rows = [(p, *train(p, tx, ty, vx, vy, args.epochs)) for p in ("none", "side_on")]
    table = "\n".join(f"| {p} | {last:.3f} | {best:.3f} | {acc:.3f} |" for p, last, best, acc in rows)
    body = f"""## Augmentation on the synthetic data (`bench/augmentation_helps.py`)

resnet18 from scratch, {SIZE} px, {args.per_class} training images per class ({len(lay.classes)} classes, the demo's
`easy` variant with clutter), 200 valid images, {args.epochs} epochs of SGD (lr 0.01), same seed; zoom up to 1.3.
Machine: {machine()}.

| --aug | valid loss, last epoch | valid loss, best epoch | valid accuracy, last epoch |
|---|---|---|---|
{table}
"""
    print(body)
    write_section("augmentation_helps", body)


if __name__ == "__main__":
    main()
