"""channels_last against NCHW in fp32 on the CPU: a forward pass (scoring) and a training step of
the lesson's bodies at 224 px, 2 threads, the same model and batch in both layouts; median of 3.

Why it is here: raycat used NCHW for fp32 on the CPU ("gains nothing", measured on ResNets with AMX),
and `predict` then ran at half the speed of a plain loop over model.pt2, whose NHWC uint8 input
reaches its convolutions channels_last. bf16 already ran channels_last (unchanged).

usage: python bench/channels_last.py [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_section  # noqa: E402

from raycat.core.model import create_model  # noqa: E402

BODIES = [("tf_efficientnet_lite0", 32), ("resnet34", 32)]  # (arch, batch)


def timed(fn, runs: int = 3) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rates(arch: str, batch: int, fmt: torch.memory_format) -> tuple[float, float]:
    """(images/s scored, images/s trained) in this layout."""
    torch.manual_seed(0)
    model = create_model(arch, 2).to(memory_format=fmt)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))
    model.eval()
    with torch.no_grad():
        score = batch / timed(lambda: model(x))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return score, batch / timed(step)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for arch, batch in BODIES:
        nchw = rates(arch, batch, torch.contiguous_format)
        cl = rates(arch, batch, torch.channels_last)
        rows.append(f"| {arch} | {batch} | {nchw[0]:.1f} | {cl[0]:.1f} | {cl[0] / nchw[0]:.2f}x | {nchw[1]:.1f} | "
                    f"{cl[1]:.1f} | {cl[1] / nchw[1]:.2f}x |")
        print(rows[-1], flush=True)
    body = f"""## channels_last in fp32 on the CPU (`bench/channels_last.py`)

The same model and batch in NCHW and in channels_last, fp32, 224 px, {os.cpu_count()} threads; images/s of a
forward pass (scoring) and of a training step (forward, backward, SGD); median of 3 after a warm-up.
Machine: {machine()}.

| body | batch | scoring NCHW | scoring channels_last | ratio | training NCHW | training channels_last | ratio |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

raycat now trains and scores channels_last in fp32 as in bf16 (`core/device.memory_format`), and the scoring
actor puts its model's weights in that layout too.
"""
    print(body)
    if not args.no_write:
        write_section("channels_last_fp32", body)


if __name__ == "__main__":
    main()
