"""Faster epochs where the hardware allows: each lever of a training step and of a scoring batch,
measured alone on raycat's core (no Ray: a lever's worth is the step's, and Ray adds the same
around every one).

Levers: channels_last memory, bf16 autocast (oneDNN's AMX / AVX512-BF16 kernels when the CPU has
them) and torch.compile (inductor), on two shapes raycat trains:
  - fmnist: recipes/fashion_mnist.yaml's model, resnet18 with the small_pool stem at 28 px,
    batch 128, flip_shift augmentation, SGD with Nesterov momentum, label smoothing 0.1;
  - photos: the default recipe's resnet34 with the ImageNet stem at 96 px (real_photos.py's size),
    batch 64, side_on augmentation.
Every configuration runs in its own process with the same seed, images and steps, on all cores.
Train img/s is the median of 3 timed passes of --steps steps (augmentation included, as in an
epoch), after one warm-up pass; eval img/s likewise for forward-only batches (what `raycat predict`
runs per batch). torch.compile's cost is reported apart: its first call against eager's first call,
once with an empty inductor cache (cold) and once with the cache the cold run left (warm: a
second run on the same machine). Equality: the compiled model's logits against eager's on the same
weights and batch (max abs difference, eval mode), and the loss after the timed steps.

usage: python bench/epoch_levers.py [--shapes fmnist,photos] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = {
    "fmnist": dict(arch="resnet18", stem="small_pool", size=28, batch=128, aug="flip_shift", classes=10),
    "photos": dict(arch="resnet34", stem="imagenet", size=96, batch=64, aug="side_on", classes=2),
}
# (name, precision, channels_last, compiled)
CONFIGS = [
    ("eager fp32", "fp32", False, False),
    ("fp32 + channels_last", "fp32", True, False),
    ("bf16", "bf16", False, False),
    ("bf16 + channels_last", "bf16", True, False),
    ("compile fp32", "fp32", False, True),
    ("compile bf16 + channels_last", "bf16", True, True),
]
PASSES = 3


def one(shape: str, precision: str, channels_last: bool, compiled: bool, steps: int) -> dict:
    """One configuration, in this process: timings and the numbers the equality check needs."""
    import torch
    import torch.nn.functional as F

    from raycat.core.augment import AugmentSpec, augment
    from raycat.core.device import autocast
    from raycat.core.model import create_model

    s = SHAPES[shape]
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = create_model(s["arch"], s["classes"], stem=s["stem"])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    dev = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    # Images in [0, 1] with some structure (blurred noise), the labels a function of them: a load, not a task.
    x = torch.rand(steps * s["batch"], 3, s["size"], s["size"], generator=gen)
    x = F.avg_pool2d(x, 3, 1, 1)
    y = (x.mean(dim=(1, 2, 3)) * 1000).long() % s["classes"]
    spec = AugmentSpec(preset=s["aug"])
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def train_pass() -> float:
        model.train()
        loss = torch.zeros(())
        for i in range(steps):
            xb = augment(x[i * s["batch"]:(i + 1) * s["batch"]], spec, gen).contiguous(memory_format=fmt)
            with autocast(dev, precision):
                out = net(xb).float()
            loss = F.cross_entropy(out, y[i * s["batch"]:(i + 1) * s["batch"]], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss)

    def eval_pass() -> None:
        model.eval()
        with torch.inference_mode():
            for i in range(steps):
                with autocast(dev, precision):
                    net(x[i * s["batch"]:(i + 1) * s["batch"]].contiguous(memory_format=fmt)).float()

    # The first call (compile happens here), then a warm-up pass, then the timed passes.
    t = time.perf_counter()
    model.train()
    xb = x[:s["batch"]].contiguous(memory_format=fmt)
    with autocast(dev, precision):
        first = net(xb).float()
    F.cross_entropy(first, y[:s["batch"]]).backward()
    opt.zero_grad(set_to_none=True)
    first_train_s = time.perf_counter() - t
    t = time.perf_counter()
    model.eval()
    with torch.inference_mode(), autocast(dev, precision):
        net(xb)
    first_eval_s = time.perf_counter() - t
    train_pass()
    eval_pass()
    train_s, eval_s, losses = [], [], []
    for _ in range(PASSES):
        t = time.perf_counter()
        losses.append(train_pass())
        train_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        eval_pass()
        eval_s.append(time.perf_counter() - t)
    # Equality: logits of fixed weights on a fixed batch, this configuration against eager fp32.
    torch.manual_seed(1)
    ref = create_model(s["arch"], s["classes"], stem=s["stem"]).eval()
    xb = x[:s["batch"]]
    with torch.inference_mode():
        want = ref(xb)
        ref = ref.to(memory_format=fmt)
        probe = torch.compile(ref) if compiled else ref
        with autocast(dev, precision):
            got = probe(xb.contiguous(memory_format=fmt)).float()
    n = steps * s["batch"]
    return dict(train=n / statistics.median(train_s), eval=n / statistics.median(eval_s),
                first_train_s=first_train_s, first_eval_s=first_eval_s, loss=losses[-1],
                max_abs_diff=float((got - want).abs().max()), logit_scale=float(want.abs().max()))


def run_child(shape: str, cfg: tuple, steps: int, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    _, precision, cl, compiled = cfg
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([shape, precision, cl, compiled, steps])],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{shape} {cfg[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_flags() -> str:
    from raycat.core.device import cpu_flags as flags

    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags()) or "none"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="fmnist,photos")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        shape, precision, cl, compiled, steps = json.loads(a.child)
        print(json.dumps(one(shape, precision, cl, compiled, steps)))
        return
    from results import machine, write_section

    rows = []
    for shape in a.shapes.split(","):
        base = None
        for cfg in CONFIGS:
            cache = tempfile.mkdtemp(prefix="inductor-")
            r = run_child(shape, cfg, a.steps, cache)
            if cfg[3]:  # compiled: run again on the cache the first run left
                r["warm_first_train_s"] = run_child(shape, cfg, a.steps, cache)["first_train_s"]
            base = base or r
            rows.append((shape, cfg[0], r, base))
            print(shape, cfg[0], json.dumps(r), flush=True)
    lines = ["| shape | configuration | train img/s | vs eager fp32 | eval img/s | vs eager fp32 | "
             "first train step: cold / warm cache | logits max abs diff (scale) | loss after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape, name, r, base in rows:
        first = (f"{r['first_train_s']:.1f} s / {r['warm_first_train_s']:.1f} s" if "warm_first_train_s" in r
                 else f"{r['first_train_s']:.1f} s")
        lines.append(f"| {shape} | {name} | {r['train']:.0f} | {r['train'] / base['train']:.2f}x | {r['eval']:.0f} | "
                     f"{r['eval'] / base['eval']:.2f}x | {first} | {r['max_abs_diff']:.2g} ({r['logit_scale']:.2g}) | "
                     f"{r['loss']:.3f} |")
    shapes = "; ".join(f"{k}: {v['arch']} {v['stem']} stem, {v['size']} px, batch {v['batch']}, {v['aug']}"
                       for k, v in SHAPES.items() if k in a.shapes.split(","))
    body = f"""## Epoch levers: channels_last, bf16, torch.compile (`bench/epoch_levers.py`)

One training step and one scoring batch on raycat's core (no Ray), each configuration in its own
process, same seed, images and {a.steps} steps a pass; median of {PASSES} timed passes after a warm-up.
Shapes: {shapes}. CPU flags: {cpu_flags()}.
The first train step is forward + backward from a cold start (compile happens there); with
torch.compile it is measured with an empty inductor cache and again with the cache the first
run left. Logits: the configuration against the same weights run eagerly in fp32 (bf16's own
rounding shows there too).
Machine: {machine()}.

{chr(10).join(lines)}
"""
    write_section("epoch_levers", body)
    print(body)


if __name__ == "__main__":
    main()
