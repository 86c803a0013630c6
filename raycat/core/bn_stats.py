"""BatchNorm's statistics re-estimated for the weights an epoch ends with ("precise BN").

BatchNorm keeps running averages of its batches' means and variances, with momentum 0.1: a
weighted mean over the last ten or so steps, each taken under different weights. While the
weights move fast (from scratch, at lr_find's rate, with small batches) those averages lag far
behind the network the valid pass scores, and a model whose train loss falls scores a valid loss
far worse than guessing. Recomputing them at the end of the epoch, from a few of its own batches
under its final weights, scores the network that was trained (Wu and Johnson, "Rethinking
'Batch' in BatchNorm", 2021). It costs forward passes only.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

import torch
import torch.nn as nn


class TailBatches:
    """The last inputs of an epoch, up to `images` of them: what the statistics are taken from."""

    def __init__(self, images: int):
        self.images = images
        self._kept: deque[torch.Tensor] = deque()
        self._n = 0

    def add(self, x: torch.Tensor) -> None:
        if self.images <= 0:
            return
        self._kept.append(x.detach())
        self._n += len(x)
        while self._n - len(self._kept[0]) >= self.images:  # drop the oldest while enough remain
            self._n -= len(self._kept.popleft())

    def batches(self) -> list[torch.Tensor]:
        return list(self._kept)


def training_bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers the epoch trained: frozen groups are in eval mode, and keep theirs."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]


@torch.no_grad()
def recompute(model: nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object]) -> int:
    """Replace the running statistics of `model`'s training BatchNorm layers by their plain average
    over `batches` (`forward` runs the model on one, in train mode). Returns how many layers."""
    bns = training_bns(model)
    batches = list(batches)
    if not bns or not batches:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    try:
        for x in batches:
            forward(x)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
    return len(bns)
