import math

import pytest

from raycat.core.schedules import (
    cosine,
    cycle_lengths,
    differential_lrs,
    group_lrs,
    lr_find_lr,
    one_cycle_lr,
    sgdr_lr,
    sgdr_position,
    stage_lr,
    total_epochs,
)

SPE = 10  # steps per epoch


def closed_form(base, step, spe, cycle_len, cycle_mult):
    """SGDR written out independently: find the cycle by walking cumulative lengths."""
    start, k = 0, 0
    while step >= start + cycle_len * cycle_mult**k * spe:
        start += cycle_len * cycle_mult**k * spe
        k += 1
    length = cycle_len * cycle_mult**k * spe
    return base * 0.5 * (1 + math.cos(math.pi * (step - start) / length))


def restart_steps(cycle_len: int, cycle_mult: int, n_cycle: int) -> list[int]:
    """The steps at which each cycle starts, from the cycles' lengths."""
    return [SPE * sum(cycle_lengths(cycle_len, cycle_mult, k)) for k in range(n_cycle)]


@pytest.mark.parametrize("cycle_len,cycle_mult", [(1, 1), (1, 2), (2, 2)])
def test_sgdr_matches_the_closed_form_at_start_mid_end_and_restarts(cycle_len, cycle_mult):
    base = 0.1
    starts = restart_steps(cycle_len, cycle_mult, 3)
    ends = [s - 1 for s in starts[1:]] + [SPE * total_epochs(cycle_len, cycle_mult, 3) - 1]
    lengths = [n * SPE for n in cycle_lengths(cycle_len, cycle_mult, 3)]
    for s, e, n in zip(starts, ends, lengths, strict=True):
        assert sgdr_lr(base, s, SPE, cycle_len, cycle_mult) == pytest.approx(base)  # every restart
        assert sgdr_lr(base, s + n // 2, SPE, cycle_len, cycle_mult) == pytest.approx(base / 2)  # mid-cycle
        assert sgdr_lr(base, e, SPE, cycle_len, cycle_mult) == pytest.approx(
            base * 0.5 * (1 + math.cos(math.pi * (n - 1) / n)))  # the last step, near 0
        assert sgdr_lr(base, e, SPE, cycle_len, cycle_mult) < 0.03 * base  # near 0 at the end
    for step in range(ends[-1] + 1):
        assert sgdr_lr(base, step, SPE, cycle_len, cycle_mult) == pytest.approx(
            closed_form(base, step, SPE, cycle_len, cycle_mult))


def test_cycle_lengths_and_total_epochs():
    assert cycle_lengths(1, 2, 3) == [1, 2, 4] and total_epochs(1, 2, 3) == 7
    assert cycle_lengths(1, 1, 2) == [1, 1] and total_epochs(2, 2, 2) == 6
    assert restart_steps(1, 2, 3) == [0, 10, 30]


def test_position_and_errors():
    assert sgdr_position(15, SPE, 1, 2) == (1, 0.25)
    with pytest.raises(ValueError, match="out of range"):
        sgdr_position(-1, SPE, 1, 1)


def test_cosine_endpoints():
    assert cosine(1.0, 0.0, 0.0) == 1.0 and cosine(1.0, 0.0, 1.0) == pytest.approx(0.0)
    assert cosine(2.0, 1.0, 0.5) == pytest.approx(1.5)


def test_lr_find_sweep_is_exponential_from_1e7_to_10():
    n = 100
    assert lr_find_lr(0, n) == pytest.approx(1e-7) and lr_find_lr(n - 1, n) == pytest.approx(10.0)
    ratios = {round(lr_find_lr(i + 1, n) / lr_find_lr(i, n), 9) for i in range(n - 1)}
    assert len(ratios) == 1


def test_group_rates_when_frozen_and_unfrozen():
    assert differential_lrs(0.09, 3.0) == pytest.approx([0.01, 0.03, 0.09])
    assert group_lrs(0.09, 3.0, frozen=2) == [0.0, 0.0, 0.09]  # the head alone
    assert group_lrs(0.09, 3.0, frozen=0) == pytest.approx([0.01, 0.03, 0.09])
    assert group_lrs(0.09, 3.0, frozen=1) == pytest.approx([0.0, 0.03, 0.09])
    assert group_lrs(0.09, 1.0, frozen=0) == pytest.approx([0.09] * 3)  # from scratch: one rate


def test_one_cycle_warms_up_then_anneals_to_a_ten_thousandth():
    base, total = 0.1, 100
    assert one_cycle_lr(base, 0, total) == pytest.approx(base / 25)
    assert one_cycle_lr(base, 25, total) == pytest.approx(base)  # the peak, a quarter in
    assert one_cycle_lr(base, 12, total) == pytest.approx(cosine(base / 25, base, 12 / 25))
    assert one_cycle_lr(base, 99, total) == pytest.approx(cosine(base, base / 1e4, 74 / 75))
    assert one_cycle_lr(base, total, total) == pytest.approx(base / 1e4)
    rates = [one_cycle_lr(base, s, total) for s in range(total)]
    assert all(a < b for a, b in zip(rates[:25], rates[1:26], strict=False))
    assert all(a > b for a, b in zip(rates[25:-1], rates[26:], strict=False))
    with pytest.raises(ValueError):
        one_cycle_lr(base, -1, total)


def test_stage_lr_picks_the_schedule():
    assert stage_lr("sgdr", 0.1, 15, 10, 1, 2, 2) == pytest.approx(sgdr_lr(0.1, 15, 10, 1, 2))
    # one cycle spans every epoch of the stage: 1 + 2 = 3 epochs of 10 steps
    assert stage_lr("one_cycle", 0.1, 15, 10, 1, 2, 2) == pytest.approx(one_cycle_lr(0.1, 15, 30))
