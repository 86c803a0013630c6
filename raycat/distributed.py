"""What the recipe needs from its peers: averaging a number, gathering tensors, wrapping in DDP.

`LocalComm` is the single-process case (unit tests, one worker); `TorchComm` uses the process
group that Ray Train sets up (gloo on CPU, nccl on GPU). Both are plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LocalComm:
    world_size = 1
    rank = 0

    def mean(self, x: float) -> float:
        return float(x)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather_objects(self, x) -> list:
        return [x]

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        return module

    def barrier(self) -> None:
        pass


class TorchComm:
    """torch.distributed with an initialised default process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()

    def mean(self, x: float) -> float:
        # Objects, not tensors: works on every backend without choosing a device for the buffer.
        values = [None] * self.world_size
        self.dist.all_gather_object(values, float(x))
        return sum(values) / self.world_size

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's tensor (sizes may differ), in rank order, on every rank."""
        parts = [None] * self.world_size
        self.dist.all_gather_object(parts, t.detach().cpu())
        return torch.cat(parts)

    def gather_objects(self, x) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, x)
        return out

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        # A new wrapper per stage: DDP registers the parameters that require grad when it is
        # built, so freezing or unfreezing means wrapping again.
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def barrier(self) -> None:
        self.dist.barrier()
