"""channels_last against NCHW in fp32 on the CPU: a forward pass (scoring) and a training step of
the lesson's bodies at 224 px, 2 threads, the same model and batch in both layouts; median of 3.

Why it is here: raycat used NCHW for fp32 on the CPU ("gains nothing", measured on ResNets with AMX),
and `predict` then ran at half the speed of a plain loop over model.pt2, whose NHWC uint8 input
reaches its convolutions channels_last. bf16 already ran channels_last (unchanged).
A third scoring column ("folded"): channels_last with the BatchNorms folded into their convolutions, as the
scoring actor runs its model (core/fold_bn.py). Then the allocator: each body again in a process that
keeps the memory torch frees (results.keep_freed_memory, an experiment raycat does not ship) against
one that does not (glibc's default: a batch's large blocks unmapped when freed, faulted in again by
the next), each in a fresh process.

usage: python bench/channels_last.py [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import keep_freed_memory, machine, write_section  # noqa: E402

from raycat.core.fold_bn import fold_batchnorm  # noqa: E402
from raycat.core.model import create_model  # noqa: E402

# (arch, batch): 128 is the batch predict scores
BODIES = [("tf_efficientnet_lite0", 32), ("tf_efficientnet_lite0", 128), ("resnet34", 32)]


HEADER = ("| body | batch | scoring NCHW | scoring channels_last | ratio | training NCHW | training channels_last "
          "| ratio | scoring folded | vs channels_last |\n" + "|---" * 10 + "|")


def timed(fn, runs: int = 3) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rates(arch: str, batch: int, fmt: torch.memory_format) -> tuple[float, float, float]:
    """(images/s scored, images/s trained, images/s scored with the BatchNorms folded) in this layout."""
    torch.manual_seed(0)
    model = create_model(arch, 2).to(memory_format=fmt)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))
    model.eval()
    folded, _ = fold_batchnorm(model, x[:2])
    with torch.no_grad():
        score = batch / timed(lambda: model(x))
        score_folded = batch / timed(lambda: folded(x))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return score, batch / timed(step), score_folded


def child(allocator: str) -> None:
    """Every body's (NCHW, channels_last) rates in this process, as JSON on stdout."""
    torch.set_num_threads(os.cpu_count() or 1)
    if allocator == "keep" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory did not take effect (not glibc?)")
    print(json.dumps([[rates(arch, batch, torch.contiguous_format), rates(arch, batch, torch.channels_last)]
                      for arch, batch in BODIES]))


def in_process(allocator: str) -> list:
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", allocator], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", choices=("default", "keep"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    default, keep = in_process("default"), in_process("keep")
    rows, alloc = [], []
    for (arch, batch), (nchw, cl), (_, cl_keep) in zip(BODIES, default, keep, strict=True):
        alloc.append(f"| {arch} | {batch} | {cl[0]:.1f} | {cl_keep[0]:.1f} | {cl_keep[0] / cl[0]:.2f}x | "
                     f"{cl[1]:.1f} | {cl_keep[1]:.1f} | {cl_keep[1] / cl[1]:.2f}x |")
        rows.append(f"| {arch} | {batch} | {nchw[0]:.1f} | {cl[0]:.1f} | {cl[0] / nchw[0]:.2f}x | {nchw[1]:.1f} | "
                    f"{cl[1]:.1f} | {cl[1] / nchw[1]:.2f}x | {cl[2]:.1f} | {cl[2] / cl[0]:.2f}x |")
        print(rows[-1], flush=True)
    body = f"""## channels_last in fp32 on the CPU (`bench/channels_last.py`)

The same model and batch in NCHW and in channels_last, fp32, 224 px, {os.cpu_count()} threads; images/s of a
forward pass (scoring) and of a training step (forward, backward, SGD); median of 3 after a warm-up.
Machine: {machine()}.

{HEADER}
{chr(10).join(rows)}

Rows above: glibc's default allocator. The allocator, channels_last, each body in a fresh process that
keeps freed memory (`bench/results.keep_freed_memory`) against one with glibc's default, images/s:

| body | batch | scoring, default | scoring, kept | ratio | training, default | training, kept | ratio |
|---|---|---|---|---|---|---|---|
{chr(10).join(alloc)}

raycat now trains and scores channels_last in fp32 as in bf16 (`core/device.memory_format`), and the scoring
actor puts its model's weights in that layout too, with its BatchNorms folded into their convolutions
(`core/fold_bn.py`; an eval-mode BatchNorm is a fixed scale and shift the convolution can apply for free).
Keeping freed memory is not shipped: the heap grows several times over before it reuses freed blocks, and
Train workers so set were OOM-killed (bench/results.keep_freed_memory).
"""
    print(body)
    if not args.no_write:
        write_section("channels_last_fp32", body)


if __name__ == "__main__":
    main()
