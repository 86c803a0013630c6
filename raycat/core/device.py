"""Where the work runs and at what precision: the one home for device, thread and dtype rules.

Device and dtype are arguments everywhere else; only this module decides them.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(gpu: bool, index: int | None = None) -> torch.device:
    """CUDA when asked for and present, else the CPU."""
    if gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device() if index is None else index)
    return torch.device("cpu")


def use_cpu_threads(n: int) -> None:
    """Run torch's CPU kernels on `n` threads: the CPUs this process reserved, no more.

    Ray starts workers and actors with OMP_NUM_THREADS=1; a process that reserved N CPUs sets N here.
    """
    n = max(1, int(n))
    torch.set_num_threads(n)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on CUDA (no loss scaling needed) and fp32 on CPU, where bf16 pays only on
    some CPUs and some shapes (bench/RESULTS.md: 2.4x for resnet18 with the small stem at 28 px on
    an AMX Xeon, 0.84x with the ImageNet stem): ask for `bf16` explicitly there."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """The forward pass's precision context: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def memory_format(device: torch.device, precision: str) -> torch.memory_format:
    # channels_last lets cuDNN and oneDNN pick their fast bf16 convolutions; fp32 on CPU gains nothing.
    return torch.channels_last if (device.type == "cuda" or precision == "bf16") else torch.contiguous_format


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy that overlaps with compute on CUDA (pinned memory, non-blocking)."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
