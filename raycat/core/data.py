"""The recipe's data: decoded uint8 pixels on the device that trains, in batches.

`RecipeData` is the one seam between the recipe and where images come from: the Ray worker's
streamed and cached shard (train_worker.py), or tensors in memory (`TensorData`: unit tests and
baselines). Augmentation is not the data's job: the recipe augments on its own device.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Protocol

import torch

from raycat.core.device import to_device
from raycat.core.schedules import steps_per_epoch as steps_in_an_epoch

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, 3, H, W) on the device, int64 labels (N,)


class RecipeData(Protocol):
    """One worker's view of the data."""

    steps_per_epoch: int  # train batches per epoch on this worker (the same on every worker: DDP steps together)

    def train_batches(self, gen: torch.Generator) -> Iterable[Batch]:
        """One epoch of this worker's train images in a random order drawn from `gen`: exactly
        `steps_per_epoch` batches. Every epoch-iterator must be run to its end."""

    def train_pass(self) -> Iterable[Batch]:
        """Each of this worker's train images once, in any order, not augmented (for activations)."""

    def valid_batches(self) -> Iterable[Batch]:
        """This worker's part of the valid set, in a fixed order."""


def batch_share(global_batch: int, world: int, rank: int) -> int:
    """Images `rank` of `world` workers takes each step. The global batch is the recipe's and
    stays the same whatever the group's size (an elastic group that shrinks or grows), so the
    steps per epoch and the rate at each step do too; the workers' shares add up to it."""
    base, extra = divmod(global_batch, world)
    return base + (1 if rank < extra else 0)


def loss_weight(global_batch: int, world: int, rank: int) -> float:
    """The factor on a worker's mean loss that makes DDP's average of the workers' gradients the
    gradient of the mean over the whole global batch, when the shares are not all equal."""
    return batch_share(global_batch, world, rank) * world / global_batch


def index_batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` batches of indices into n items, in a fresh random order.

    Usually the steps cover the n items once, the last batch holding the rest. Workers must take
    the same number of steps per epoch, so a shard a little smaller than its peers' (a bad file
    dropped, an uneven split) draws full batches from its items cycled, rather than stall the
    others; one a little larger leaves a few items out of this epoch.
    """
    if n == 0:
        raise ValueError("no items to draw batches from")
    if (steps - 1) * batch_size < n <= steps * batch_size:
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(steps * batch_size / n))])
    for s in range(steps):
        yield order[s * batch_size:(s + 1) * batch_size]


class TensorData:
    """The recipe's data from uint8 tensors in memory (N, 3, H, W), moved batch by batch to `device`."""

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor, valid_y: torch.Tensor,
                 batch_size: int, device: torch.device | None = None, steps_per_epoch: int | None = None):
        self.train_x, self.train_y = torch.as_tensor(train_x), torch.as_tensor(train_y).long()
        self.valid_x, self.valid_y = torch.as_tensor(valid_x), torch.as_tensor(valid_y).long()
        self.bs, self.device = batch_size, device or torch.device("cpu")
        self.steps_per_epoch = steps_per_epoch or steps_in_an_epoch(len(self.train_x), 1, batch_size)

    def train_batches(self, gen: torch.Generator) -> Iterator[Batch]:
        for idx in index_batches(len(self.train_x), self.bs, self.steps_per_epoch, gen):
            yield to_device(self.train_x[idx], self.device), to_device(self.train_y[idx], self.device)

    def train_pass(self) -> Iterator[Batch]:
        return self._in_order(self.train_x, self.train_y)

    def valid_batches(self) -> Iterator[Batch]:
        return self._in_order(self.valid_x, self.valid_y)

    def _in_order(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[Batch]:
        for i in range(0, len(x), self.bs):
            yield to_device(x[i:i + self.bs], self.device), to_device(y[i:i + self.bs], self.device)
