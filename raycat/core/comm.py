"""What the recipe needs from its peers: averaging a number, gathering tensors, wrapping in DDP.

`LocalComm` is the single-process case (unit tests, one worker); `TorchComm` uses the default
process group that the caller set up (Ray Train does: gloo on CPU, nccl on GPU). Both are plain
PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn as nn

GATHER_CHUNK_BYTES = 64 << 20  # a gather moves one rank's rows this much at a time (TorchComm.gather)


class LocalComm:
    world_size = 1
    rank = 0

    def mean(self, x: float) -> float:
        return float(x)

    def gather(self, t: torch.Tensor, chunk_bytes: int = GATHER_CHUNK_BYTES) -> torch.Tensor:
        return t

    def gather_objects(self, x) -> list:
        return [x]

    def wrap(self, module: nn.Module, device: torch.device, key: str) -> nn.Module:
        return module

    def sync_buffers(self, module: nn.Module) -> None:
        pass

    def broadcast(self, module: nn.Module) -> None:
        pass


class TorchComm:
    """torch.distributed with an initialised default process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self._wrapped: dict[str, nn.Module] = {}

    def mean(self, x: float) -> float:
        # Objects, not tensors: works on every backend without choosing a device for the buffer.
        values = [None] * self.world_size
        self.dist.all_gather_object(values, float(x))
        return sum(values) / self.world_size

    def gather(self, t: torch.Tensor, chunk_bytes: int = GATHER_CHUNK_BYTES) -> torch.Tensor:
        """Concatenate each rank's tensor (rows may differ; the rest of the shape and the dtype
        agree), in rank order, on every rank.

        Tensors, not pickled objects: each rank's rows are broadcast straight into their place in
        the result, `chunk_bytes` at a time, so the peak is the result plus one chunk (pickling
        held several copies, `world x the largest part`, outside the worker's reservation)."""
        rows = [n for n, in self.gather_objects((t.shape[0],))]
        # NCCL moves CUDA tensors only; gloo moves them where they are.
        device = torch.device("cuda", torch.cuda.current_device()) if self.dist.get_backend() == "nccl" \
            else t.device
        out = torch.empty((sum(rows), *t.shape[1:]), dtype=t.dtype, device=device)
        row_bytes = max(1, out[:1].numel() * out.element_size())
        step = max(1, chunk_bytes // row_bytes)
        start = 0
        for rank, n in enumerate(rows):
            part = out[start:start + n]  # rows of a contiguous tensor: a contiguous view into out
            if rank == self.rank:
                part.copy_(t.detach())
            for i in range(0, n, step):
                self.dist.broadcast(part[i:i + step], src=rank)
            start += n
        return out.to(t.device)

    def gather_objects(self, x) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, x)
        return out

    def sync_buffers(self, module: nn.Module) -> None:
        """The same buffers (BatchNorm's running statistics) on every rank: those of all the ranks'
        batches together.

        DDP broadcasts buffers at the start of each forward, and then every rank updates them with
        its own batch; core.bn_stats re-takes them from each rank's own last batches. Without this,
        each rank would score its part of the valid set with a different model from the one rank 0
        saves. The pooled mean is the ranks' mean (equal shares); the pooled variance is the mean
        of the ranks' variances plus the spread of their means around the pooled mean (the law of
        total variance), which averaging the variances alone would leave out. Other floating
        buffers are averaged; counters (num_batches_tracked) are rank 0's."""
        pooled = set()
        for m in module.modules():
            mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                square = mean * mean
                for t in (mean, var, square):
                    self.dist.all_reduce(t)
                    t.div_(self.world_size)
                var.add_(square - mean * mean)
                pooled |= {id(mean), id(var)}
        for b in module.buffers():
            if id(b) in pooled:
                continue
            if b.is_floating_point():
                self.dist.all_reduce(b)
                b.div_(self.world_size)
            else:
                self.dist.broadcast(b, src=0)

    def broadcast(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank: one call a dtype (each call is a round
        trip; a head has a dozen tensors)."""
        tensors = [*module.parameters(), *module.buffers()]
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            self.dist.broadcast(flat, src=0)
            offset = 0
            for t in group:
                t.data.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def wrap(self, module: nn.Module, device: torch.device, key: str) -> nn.Module:
        """One DDP wrapper per stage (`key`), built on first use and reused by every later epoch.

        DDP registers the parameters that require grad when it is built, so a stage that freezes
        or unfreezes other groups needs its own wrapper; the epochs of a stage share one."""
        if key not in self._wrapped:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self._wrapped[key] = DDP(module, device_ids=ids)
        return self._wrapped[key]
