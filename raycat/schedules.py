"""Learning-rate schedules as pure functions of the optimizer step (fastai's sched_cos, timm's
step-number convention): the caller passes the step in; nothing here keeps state."""

from __future__ import annotations

import math


def cosine(start: float, end: float, pos: float) -> float:
    """Cosine from `start` (pos=0) to `end` (pos=1)."""
    return end + (start - end) * (1 + math.cos(math.pi * pos)) / 2


def cycle_lengths(cycle_len: int, cycle_mult: int, n_cycle: int) -> list[int]:
    """Epochs in each SGDR cycle: cycle_len * cycle_mult^k for k = 0..n_cycle-1."""
    return [cycle_len * cycle_mult**k for k in range(n_cycle)]


def total_epochs(cycle_len: int, cycle_mult: int, n_cycle: int) -> int:
    return sum(cycle_lengths(cycle_len, cycle_mult, n_cycle))


def sgdr_position(step: int, steps_per_epoch: int, cycle_len: int, cycle_mult: int) -> tuple[int, float]:
    """(cycle index, position in that cycle in [0, 1)) of an optimizer step, counted from 0."""
    if step < 0 or steps_per_epoch <= 0:
        raise ValueError(f"step {step} / steps_per_epoch {steps_per_epoch} out of range")
    start, k = 0, 0
    while True:
        length = cycle_len * cycle_mult**k * steps_per_epoch
        if step < start + length:
            return k, (step - start) / length
        start += length
        k += 1


def sgdr_lr(base_lr: float, step: int, steps_per_epoch: int, cycle_len: int = 1, cycle_mult: int = 1) -> float:
    """SGDR: cosine from `base_lr` towards 0 within each cycle, back to `base_lr` at every restart."""
    _, pos = sgdr_position(step, steps_per_epoch, cycle_len, cycle_mult)
    return cosine(base_lr, 0.0, pos)


def restart_steps(steps_per_epoch: int, cycle_len: int, cycle_mult: int, n_cycle: int) -> list[int]:
    """Steps at which each cycle starts (the first is 0)."""
    out, s = [], 0
    for n in cycle_lengths(cycle_len, cycle_mult, n_cycle):
        out.append(s)
        s += n * steps_per_epoch
    return out


def exponential(start: float, end: float, pos: float) -> float:
    """Geometric interpolation: the lr_find sweep."""
    return start * (end / start) ** pos


def lr_find_lr(step: int, n_steps: int, start: float = 1e-7, end: float = 10.0) -> float:
    """The range test's rate at `step` of `n_steps`: 1e-7 at the first step, 10 at the last."""
    return exponential(start, end, step / max(1, n_steps - 1))
