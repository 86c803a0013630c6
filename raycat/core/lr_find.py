"""The learning-rate range test (Smith 2015, as fast.ai runs it), as pure functions.

The sweep raises the rate exponentially from 1e-7 to 10 over at most `MAX_STEPS` optimizer steps,
smooths the loss with a bias-corrected EMA, and stops once the smoothed loss is NaN or more than
4x the best so far.

The recipe's default suggestion is the 2017 course's rule, fast.ai's `minimum` suggestion: the
rate at the lowest smoothed loss, divided by 10 ("an order of magnitude before the minimum"). A
curve with no real descent (flat, then blowing up) has no minimum to read: it gets Smith's rule,
a tenth of where the loss blows up (`flat_until_blowup`).
fast.ai v2's *valley* and v1's *steepest* are offered too (`--lr-suggest`), but on the short,
noisy sweeps that small datasets and several workers give (30-100 steps), the valley's longest
decreasing subsequence threads through the flat noise at tiny rates and picks rates 10-30x too
low, and the steepest point jumps with every spike; the minimum is stable.
"""

from __future__ import annotations

import math
from typing import Callable

from raycat.core.schedules import lr_find_lr

MAX_STEPS = 100
MIN_STEPS = 50  # a curve needs some points: short epochs are cycled to reach this many
START_LR, END_LR = 1e-7, 10.0
DIVERGE_FACTOR = 4.0
# ...and by more than this much (nats): on a model whose loss is already near zero (a fine-tuned
# head at 0.03), one hard batch is 4x the best, and read as divergence it ended an unfrozen sweep
# at 2e-4, whose minimum rule then gave the floor rate. A real divergence climbs past log(classes).
DIVERGE_MARGIN = 0.25
EMA_BETA = 0.98
# The first points of a sweep are left out of every suggestion (fast.ai v1's skip_start), and of the
# divergence check: the EMA rests on one or two batches there, so one easy batch reads as the
# curve's minimum (a sweep suggested 1e-6 so, and the unfrozen stage then learnt nothing), the fall
# from it as the steepest descent, and, on a model whose loss is already low (a fine-tuned head),
# the next ordinary batch as a loss 4x the best: a pretrained body's unfrozen sweep "diverged" at
# its 18th step, at 1e-6, and the stage trained at the floor rate.
SKIP_START = 10


def sweep_steps(steps_per_epoch: int, cheap: bool = False) -> int:
    """At most one epoch or 100 steps; epochs shorter than 50 steps are repeated to give 50.

    `cheap` sweeps (the head on precomputed activations) always take the full 100 steps.
    """
    if cheap:
        return MAX_STEPS
    return min(MAX_STEPS, max(steps_per_epoch, MIN_STEPS))


def ema_smooth(losses: list[float], beta: float = EMA_BETA) -> list[float]:
    """Bias-corrected exponential moving average, as in fast.ai's Recorder."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def diverged(smoothed: float, best: float) -> bool:
    return (math.isnan(smoothed) or math.isinf(smoothed)
            or (smoothed > DIVERGE_FACTOR * best and smoothed - best > DIVERGE_MARGIN))


def can_read_a_curve(steps_per_epoch: int) -> bool:
    """Whether a sweep through the whole body may run: it costs at most one epoch (a step of the
    sweep is a training step), and an epoch shorter than MIN_STEPS gives too few points over the
    sweep's eight decades to read a curve from."""
    return steps_per_epoch >= MIN_STEPS


def has_descent(smoothed: list[float]) -> bool:
    """Whether a sweep's smoothed loss falls, past its first points, at least FLAT below its plateau
    (the median of the points before its lowest): a curve a rate can be read from. A model that is
    already good (a fine-tuned head, before unfreezing) has none: flat, then up."""
    skip = min(SKIP_START, len(smoothed) // 4)
    ys = [v for v in smoothed[skip:] if math.isfinite(v)]
    if len(ys) < 3:
        return False
    lowest = min(range(len(ys)), key=ys.__getitem__)
    plateau = sorted(ys[: lowest + 1])[lowest // 2]
    return plateau > 0 and (plateau - ys[lowest]) / plateau >= FLAT


def suggest_valley(lrs: list[float], losses: list[float]) -> float:
    """fast.ai v2's valley: the longest strictly decreasing run of the (smoothed) loss, 1/2 way in."""
    n = len(losses)
    if n == 0:
        raise ValueError("no losses to suggest a rate from")
    if n < 3:
        return lrs[0]
    run = [1] * n  # longest decreasing subsequence ending at i
    best_end, best_start = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end, best_start = i, i - run[i]
    sections = (best_end - best_start) / 3
    idx = min(n - 1, max(0, best_start + int(sections) + int(sections / 2)))
    return lrs[idx]


def suggest_steepest(lrs: list[float], losses: list[float]) -> float:
    """The rate where the loss falls fastest against log(lr) (fast.ai v1's suggestion)."""
    if len(losses) < 3:
        return lrs[0]
    grads = [(losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
             for i in range(1, len(losses) - 1)]
    return lrs[1 + min(range(len(grads)), key=grads.__getitem__)]


def range_test(step: Callable[[float], float], n_steps: int, start: float = START_LR, end: float = END_LR):
    """Run `step(lr) -> loss` over the sweep; returns (lrs, losses, smoothed), stopping on divergence.

    `step` must return the same loss on every worker (already averaged) so that all stop together.
    """
    lrs, losses = [], []
    best = math.inf
    for i in range(n_steps):
        lr = lr_find_lr(i, n_steps, start, end)
        loss = float(step(lr))
        lrs.append(lr)
        losses.append(loss)
        smoothed = ema_smooth(losses)[-1]
        if i > SKIP_START and diverged(smoothed, best):
            break
        if i >= SKIP_START:
            best = min(best, smoothed)
    return lrs, losses, ema_smooth(losses)


def suggest_minimum(lrs: list[float], losses: list[float]) -> float:
    """The rate at the lowest (smoothed) loss, divided by 10."""
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    if not finite:
        raise ValueError("lr_find: every loss was NaN or infinite")
    return lrs[min(finite, key=losses.__getitem__)] / 10


SUGGESTIONS = {"minimum": suggest_minimum, "valley": suggest_valley, "steepest": suggest_steepest}


# The minimum rule reads "one decade before the loss turns up"; a sweep whose smoothed loss is still
# at its lowest in its last points never saw it turn up. That happens on tiny, separable data (a head
# on a few dozen images' activations): the raw loss reaches ~0 by lr 1e-2, but the EMA (beta 0.98,
# a 50-step window on a 100-step sweep) still creeps down at lr 10, so minimum/10 gave lr 1.0, which
# wrecked the head (train loss 13) and then the unfrozen sweep (issue 12's blow-up). Such a sweep
# takes fast.ai v2's valley on the raw losses smoothed over a 10-step window (beta 0.9), where the
# descent is not smeared over half the sweep; never above what the minimum rule gives.
TAIL = 0.05
SHORT_BETA = 0.9


# A curve with no real descent has no minimum worth dividing by 10: on real photos from scratch
# (issue 20) the loss sat at ~0.82 from 1e-7 to 2e-2, noisy, then blew up; the smoothed noise's
# lowest point was at 1e-4, minimum/10 said 1e-5, and the run stayed at chance. Smith's own rule
# reads such a curve from the other end: an order of magnitude below the rate where the loss
# blows up. "No real descent": the smoothed loss's lowest point is less than FLAT below the median
# of the smoothed curve before it (the plateau; a real descent puts the median well above the
# lowest point). "Blows up": the first two raw losses in a row above BLOWUP x that plateau, after
# the lowest point (one spike of noise is not a blow-up).
FLAT = 0.10
BLOWUP = 1.5


def flat_until_blowup(lrs: list[float], smoothed: list[float], raw: list[float]) -> float | None:
    """A tenth of the rate at which a flat curve blows up, or None when the curve has a real
    descent (or never blows up): the rules above apply then."""
    n = len(smoothed)
    finite = next((i for i, v in enumerate(smoothed) if not math.isfinite(v)), n)  # a sweep may end on NaN
    if finite < 3 or len(raw) != n:
        return None
    lowest = min(range(finite), key=smoothed.__getitem__)
    plateau = sorted(smoothed[: lowest + 1])[lowest // 2]
    if plateau <= 0 or (plateau - smoothed[lowest]) / plateau >= FLAT:
        return None
    for i in range(lowest + 1, n):
        if all(not math.isfinite(v) or v > BLOWUP * plateau for v in raw[i:i + 2]):
            return lrs[i] / 10
    return None


def never_turned_up(smoothed: list[float]) -> bool:
    """The lowest smoothed loss lies in the sweep's last 5% of points."""
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    return lowest >= len(smoothed) - max(1, int(TAIL * len(smoothed)))


def suggestion(lrs: list[float], smoothed: list[float], rule: str = "minimum",
               raw: list[float] | None = None) -> float:
    """The rate `rule` picks from a sweep (see the module docstring); `raw` (the unsmoothed losses)
    serves sweeps that never turned up. A sweep whose every loss is NaN (the model had already
    diverged) suggests its first rate rather than failing: the run goes on and its valid loss, not a
    crash, tells the user (or Tune's scheduler) what happened."""
    skip = min(SKIP_START, len(lrs) // 4)
    xs, ys = _finite(lrs[skip:], smoothed[skip:])
    if not ys:
        return lrs[0]
    if rule == "minimum" and raw is not None:
        smith = flat_until_blowup(lrs[skip:], smoothed[skip:], raw[skip:])
        if smith is not None:
            return smith
    if rule == "minimum" and len(ys) >= 3 and never_turned_up(ys):
        short = ema_smooth(raw, SHORT_BETA)[skip:] if raw is not None else smoothed[skip:]
        return min(suggest_valley(*_finite(lrs[skip:], short)), suggest_minimum(xs, ys))
    return SUGGESTIONS[rule](xs, ys)


def _finite(lrs: list[float], losses: list[float]) -> tuple[list[float], list[float]]:
    """The (rates, losses) of the points whose loss is a number."""
    keep = [i for i, v in enumerate(losses) if math.isfinite(v)]
    return [lrs[i] for i in keep], [losses[i] for i in keep]
