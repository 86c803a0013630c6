"""Where work runs and at what precision (raycat/core/device.py): `--precision auto` per device."""

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
