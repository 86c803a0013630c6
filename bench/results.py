"""Write one benchmark's section of bench/RESULTS.md, keeping the other sections."""

from __future__ import annotations

import os
import platform
import re
import subprocess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = ""
    try:
        mem = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.split("\n")[1].split()[1] + " GiB"
    except Exception:  # noqa: BLE001 - best effort description
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores ({cpu}), {mem}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def write_section(name: str, body: str) -> None:
    header = "# Benchmark results\n\nWritten by the scripts in bench/; each section by one script.\n"
    text = open(RESULTS).read() if os.path.exists(RESULTS) else header
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(RESULTS, "w") as f:
        f.write(text)


def write_random_model(out: str, classes: list[str], size: int, arch: str = "resnet18", seed: int = 0,
                       export: bool = False) -> str:
    """OUT/model/ holding a `arch` with random weights for `classes` at `size` px (a load to score,
    not an accuracy), with the body's own normalisation; returns OUT. Tests use it too. Scoring
    needs no model.pt2 (`export` writes one)."""
    import torch

    from raycat.core.model import create_model
    from raycat.edge import model_card

    torch.manual_seed(seed)
    model = create_model(arch, len(classes))
    card = model_card.ModelCard(arch=arch, classes=list(classes), size=size, mean=list(model.mean),
                                std=list(model.std))
    model_card.write(out, model.state_dict(), card, export=export)
    return out


def keep_freed_memory() -> bool:
    """Make this process keep the memory torch frees (glibc: no mmap for large blocks, no trimming);
    True where it took effect. A bench experiment, not raycat's: glibc unmaps each batch's activations
    on free and the next batch faults them in again, which this removes; but the heap then grows
    several times over before freed blocks are reused (torch's aligned allocations don't fit the holes
    they leave), and raycat's Train workers, kept, grew to 7 GB each and were OOM-killed (RESULTS.md)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
