"""Where the work runs and at what precision: the one home for device, thread and dtype rules.

Device and dtype are arguments everywhere else; only this module decides them.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

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


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere: nothing is assumed)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def auto_precision(device_type: str, flags: frozenset[str] | set[str]) -> str:
    """What `auto` means on a device: bf16 on CUDA (no loss scaling needed) and on CPUs with AMX,
    fp32 on other CPUs. On an AMX Xeon bf16 autocast with channels_last ran a training step 1.4-2.0x
    and a scoring batch 1.8-3.3x faster than fp32 (bench/RESULTS.md, epoch_levers); CPUs with
    AVX512-BF16 but no AMX were not measured, so they keep fp32."""
    return "bf16" if device_type == "cuda" or (device_type == "cpu" and "amx_bf16" in flags) else "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` resolved on this device (auto_precision); `fp32` and `bf16` as asked."""
    if precision == "auto":
        return auto_precision(device.type, cpu_flags() if device.type == "cpu" else frozenset())
    return precision


def autocast(device: torch.device, precision: str):
    """The forward pass's precision context: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """channels_last on every device and precision: cuDNN's and oneDNN's fast convolutions want it,
    fp32 on a CPU too: on a 2-core EPYC without AMX, in fp32, Lite0 and resnet34 scored and trained
    1.1x to several times faster (bench/channels_last.py, RESULTS.md); NCHW fp32 on the CPU had
    halved predict's speed against a model.pt2 loop, whose NHWC input runs channels_last."""
    return torch.channels_last


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy that overlaps with compute on CUDA (pinned memory, non-blocking)."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
