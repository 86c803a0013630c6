"""Where work runs and at what precision (raycat/core/device.py): `--precision auto` per device, and the
allocator setting every process that runs torch makes."""

import subprocess
import sys

import pytest
import torch

from raycat.config import PredictConfig
from raycat.core.device import auto_precision, cpu_flags, memory_format, resolve_precision

XEON_AMX = {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = {"fpu", "avx2", "avx512f", "avx512_bf16"}  # BF16 instructions, no AMX: not measured, so fp32
OLDER = {"fpu", "sse4_2", "avx2"}


@pytest.mark.parametrize("flags,want", [(XEON_AMX, "bf16"), (ZEN4, "fp32"), (OLDER, "fp32"), (set(), "fp32")])
def test_auto_is_bf16_only_on_cpus_with_amx(flags, want):
    assert auto_precision("cpu", frozenset(flags)) == want


def test_auto_is_bf16_on_cuda_whatever_the_host_cpu():
    assert auto_precision("cuda", frozenset(OLDER)) == "bf16"


def test_resolve_reads_this_machine_and_keeps_an_explicit_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if "amx_bf16" in cpu_flags() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    # bf16 on the CPU trains and scores channels_last: oneDNN's fast bf16 convolutions want it
    assert memory_format(cpu, "bf16") == torch.channels_last
    # and fp32 too: oneDNN's fp32 convolutions are faster channels_last (bench/channels_last.py)
    assert memory_format(cpu, "fp32") == torch.channels_last


def test_predict_takes_a_precision_and_refuses_an_unknown_one():
    assert PredictConfig(model="m", images=["i"], out="o", precision="fp32").precision == "fp32"
    with pytest.raises(Exception, match="precision"):
        PredictConfig(model="m", images=["i"], out="o", precision="fp16")


# A child process frees a 256 MB tensor and reports how much of it its RSS still holds (MB), and how
# many page faults a second tensor of that size cost: what each batch pays when freed memory goes back
# to the OS.
_FREED = """
import resource, sys, torch
from raycat.core.device import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
before = rss()
x = torch.ones(64 * 2**20)  # 256 MB
del x
held = rss() - before
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.ones(64 * 2**20)
print(kept, held, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_a_process_that_keeps_freed_memory_reuses_it_for_its_next_batch_without_faulting_it_in():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", _FREED, mode], capture_output=True, text=True, check=True)
        kept, held, faults = out.stdout.split()
        return kept == "True", int(held), int(faults)

    kept, held, faults = run("keep")
    assert kept and held >= 200 and faults < 5000  # 256 MB is 65,536 pages of 4 KB
    kept, held, faults = run("default")
    assert not kept and held < 50 and faults > 30000  # glibc unmapped it: every page faulted in again
