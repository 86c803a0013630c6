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


def exponential(start: float, end: float, pos: float) -> float:
    """Geometric interpolation: the lr_find sweep."""
    return start * (end / start) ** pos


def lr_find_lr(step: int, n_steps: int, start: float = 1e-7, end: float = 10.0) -> float:
    """The range test's rate at `step` of `n_steps`: 1e-7 at the first step, 10 at the last."""
    return exponential(start, end, step / max(1, n_steps - 1))


# ---- rates per layer group ---------------------------------------------------------------------

GROUP_NAMES = ("early", "late", "head")  # the layer groups (model.layer_groups), as steps.csv names them


def differential_lrs(lr: float, lr_mult: float, n_groups: int = 3) -> list[float]:
    """[lr / m^(n-1), ..., lr / m, lr]: earlier groups learn more slowly."""
    return [lr / lr_mult ** (n_groups - 1 - i) for i in range(n_groups)]


def group_lrs(lr: float, lr_mult: float, frozen: int, n_groups: int = 3) -> list[float]:
    """Each layer group's rate when the head's rate is `lr`: differential rates [lr/m^2, lr/m, lr],
    with the `frozen` leading groups at 0 (the body frozen: the head alone, at lr)."""
    return [0.0 if i < frozen else r for i, r in enumerate(differential_lrs(lr, lr_mult, n_groups))]


# ---- one cycle ----------------------------------------------------------------------------------

ONE_CYCLE_WARMUP = 0.25  # fraction of the steps spent rising (fast.ai's pct_start)
ONE_CYCLE_DIV = 25.0  # the rate starts at lr / 25 ...
ONE_CYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 1e4 (fast.ai's div and div_final)


def one_cycle_lr(base_lr: float, step: int, total_steps: int) -> float:
    """fast.ai's one cycle: cosine up from base/25 to base over the first quarter of the steps,
    then cosine down to base/1e4. Sized to the whole stage, so it always ends annealed."""
    if step < 0 or total_steps <= 0:
        raise ValueError(f"step {step} / total_steps {total_steps} out of range")
    warm = max(1, int(round(ONE_CYCLE_WARMUP * total_steps)))
    if step < warm:
        return cosine(base_lr / ONE_CYCLE_DIV, base_lr, step / warm)
    rest = max(1, total_steps - warm)
    return cosine(base_lr, base_lr / ONE_CYCLE_FINAL_DIV, min(1.0, (step - warm) / rest))


def stage_lr(schedule: str, base_lr: float, step: int, steps_per_epoch: int, cycle_len: int, cycle_mult: int,
             n_cycle: int) -> float:
    """The head group's rate at `step` of a stage: SGDR (cycles restarting at each boundary) or one
    cycle over all the stage's steps."""
    if schedule == "one_cycle":
        return one_cycle_lr(base_lr, step, total_epochs(cycle_len, cycle_mult, n_cycle) * steps_per_epoch)
    return sgdr_lr(base_lr, step, steps_per_epoch, cycle_len, cycle_mult)

def steps_per_epoch(n_train: int, workers: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of `n_train` images over `workers` workers taking `batch_size`
    each: Ray splits the train files equally (each worker gets n // workers of them), and every
    worker takes as many steps (DDP steps together). The one home of this rule: the schedule, the
    default batch and the workers' data all read it."""
    return max(1, math.ceil((n_train // max(1, workers)) / batch_size))
