"""The recipe core in one process: plan, early stopping with the best epoch kept, the guard, and
resuming from any checkpointed state to the same end."""

import numpy as np
import pytest
import torch

from raycat.config import Recipe
from raycat.core.comm import LocalComm
from raycat.core.data import TensorData, index_batches
from raycat.core.model import create_model
from raycat.core.recipe import SWEEP_ONLY, SWEEP_UNLESS_LR, RecipeState, plan, run


def recipe(**kw):
    base = dict(arch="resnet18", weights="some.pt", size=32, batch_size=8, precompute_epochs=1, head_cycles=1,
                unfrozen_cycles=2, cycle_mult=2, patience=9, tta=1, lr=0.01)
    base.update(kw)
    return Recipe(**base)


def setup(seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8))
    y = torch.arange(32) % 2
    x[y == 1, 0] = 255  # class 1 is red: learnable
    torch.manual_seed(0)
    return create_model("resnet18", 2), TensorData(x[:24], y[:24], x[24:], y[24:], 8)


def go(r, model, data, state=None, saved=None):
    return run(r, model, data, LocalComm(), torch.device("cpu"), state,
               (lambda s: saved.append(RecipeState.from_dict(s.to_dict()))) if saved is not None else lambda s: None,
               log=lambda s: None)


def test_plan_lists_every_unit():
    assert plan(recipe()) == [("lr_find", 0), ("precompute", 0), ("head", 0), ("lr_find_unfrozen", 0),
                              ("unfrozen", 0), ("unfrozen", 1), ("unfrozen", 2)]
    assert plan(recipe(), SWEEP_ONLY) == [("lr_find", 0)]


def test_a_given_rate_skips_the_sweeps_only_where_asked_and_every_stage_trains_at_it():
    """tune's trials (SWEEP_UNLESS_LR) have their rate: no lr_find units, the rate in every
    stage. `raycat train --lr` still sweeps (its curve is an output); no rate always sweeps."""
    assert plan(recipe(), SWEEP_UNLESS_LR) == [("precompute", 0), ("head", 0), ("unfrozen", 0), ("unfrozen", 1),
                                                    ("unfrozen", 2)]
    assert plan(recipe(lr=None), SWEEP_UNLESS_LR) == plan(recipe(lr=None))
    assert plan(recipe(), SWEEP_ONLY) == [("lr_find", 0)]
    with pytest.raises(ValueError, match="sweeps: 'sometimes'"):
        plan(recipe(), "sometimes")
    r = recipe(precompute_epochs=0, unfrozen_cycles=1, lr=0.02)
    model, data = setup()
    saved = []
    state = run(r, model, data, LocalComm(), torch.device("cpu"), None,
                lambda s: saved.append(RecipeState.from_dict(s.to_dict())), log=lambda s: None, sweeps=SWEEP_UNLESS_LR)
    assert state.lr_finds == {} and [h["stage"] for h in state.history] == ["head", "unfrozen"]
    assert state.base_lr == state.unfrozen_lr == 0.02 and [h["lr"] for h in state.history] == [0.02, 0.02]
    assert [s.units_done for s in saved] == [1, 2]  # a checkpoint after each epoch, none for a sweep


def test_from_scratch_skips_the_frozen_stages_and_uses_one_rate():
    r = recipe(weights="none", precompute_epochs=None, head_cycles=None, lr_mult=None)
    assert plan(r) == [("lr_find", 0), ("unfrozen", 0), ("unfrozen", 1), ("unfrozen", 2)]
    assert r.resolved().lr_mult == 1.0
    assert plan(recipe(weights="none", precompute_epochs=None, head_cycles=2))[1:3] == [("head", 0), ("head", 1)]
    pre = recipe(weights="imagenet", precompute_epochs=None, head_cycles=None, lr_mult=None,
                 unfrozen_cycles=None, bn_freeze=None).resolved()
    assert (pre.precompute_epochs, pre.head_cycles, pre.unfrozen_cycles, pre.lr_mult, pre.bn_freeze,
            pre.until_overfit) == (20, 1, 4, 3.0, True, True)
    scratch = recipe(weights="none", unfrozen_cycles=None, bn_freeze=None).resolved()
    assert (scratch.unfrozen_cycles, scratch.bn_freeze) == (3, False)
    model, data = setup()
    state = go(r.__class__(**{**r.__dict__, "lr": 0.01}), model, data)
    assert [h["stage"] for h in state.history] == ["unfrozen"] * 3 and "lr_find_unfrozen" not in state.lr_finds
    assert state.lr_finds["lr_find"]["on"] == "the whole network"
    rates = {(s["lr_early"], s["lr_late"], s["lr_head"]) for s in state.steps}
    assert all(a == b == c for a, b, c in rates)  # every group at one rate


def test_a_resumed_run_ends_with_the_uninterrupted_run_s_weights_and_history():
    r = recipe()
    saved = []
    model, data = setup()
    full = go(r, model, data, saved=saved)
    # Restart from the state saved after the head epoch, as a crashed run restarted would, on a
    # model freshly initialised with another seed: everything must come from the checkpoint.
    state = saved[2]
    assert state.units_done == 3
    torch.manual_seed(123)
    model2, data2 = create_model("resnet18", 2), setup()[1]
    resumed = go(r, model2, data2, state)
    strip = lambda h: [{k: v for k, v in row.items() if "seconds" not in k} for row in h]
    assert strip(resumed.history) == strip(full.history)
    assert resumed.final["valid_loss"] == pytest.approx(full.final["valid_loss"], rel=1e-6)
    for k, v in full.model_state.items():
        assert torch.allclose(resumed.model_state[k].float(), v.float(), atol=1e-6), k


def test_early_stop_keeps_the_best_epoch():
    r = recipe(lr=3.0, unfrozen_cycles=3, patience=1, precompute_epochs=0, head_cycles=0,
               bn_freeze=False)  # diverges after epoch 1
    model, data = setup()
    state = go(r, model, data)
    unfrozen = [h for h in state.history if h["stage"] == "unfrozen"]
    assert state.stopped_early and len(unfrozen) < 7
    best = min(h["valid_loss"] for h in unfrozen)
    assert state.final["valid_loss"] == pytest.approx(best, rel=1e-4)  # evaluated on the best epoch's weights
    # The images worth a look come from the same final pass: with a grid as large as the valid set
    # (8 images), its rows are every valid image once, and their losses average to the valid loss.
    look = state.final["worth_a_look"]
    assert sorted(r[1] for r in look["top_losses"]) == list(range(8))
    assert np.mean([r[0] for r in look["top_losses"]]) == pytest.approx(state.final["valid_loss"], rel=1e-4)
    assert len(look["least_confident"]) == 8


def test_a_stage_that_blows_up_is_called_out_and_the_better_weights_are_kept():
    # At 50 the first epochs already wreck the model; whichever epoch was best is the one kept.
    model, data = setup()
    blown = go(recipe(unfrozen_cycles=1, lr=50.0), model, data)
    assert blown.notes and "better weights are kept" in blown.notes[0]
    best = min(blown.history, key=lambda h: h["valid_loss"])
    assert blown.best_epoch == f"{best['stage']} {best['epoch']}"
    assert blown.final["valid_loss"] == pytest.approx(best["valid_loss"], rel=1e-4)


def test_index_batches_cover_a_shard_once_or_cycle_a_short_one():
    gen = torch.Generator().manual_seed(0)
    once = torch.cat(list(index_batches(10, 4, 3, gen)))
    assert sorted(once.tolist()) == list(range(10))
    short = list(index_batches(5, 4, 3, gen))  # a worker with fewer images takes as many steps
    assert [len(b) for b in short] == [4, 4, 4] and set(torch.cat(short).tolist()) == set(range(5))


def test_a_run_started_from_an_lr_find_run_s_state_takes_its_sweep_and_does_not_sweep_again():
    """The demo's train starts from its lr-find run's state (lr_find_job.lr_find_done): the sweep is
    not run again; the rate and curve are the lr-find run's; the epochs follow as after a resume."""
    import dataclasses

    r = recipe(weights="none", precompute_epochs=None, head_cycles=None, lr_mult=None, lr=None)
    model, data = setup()
    swept = run(r, model, data, LocalComm(), torch.device("cpu"), sweeps=SWEEP_ONLY, log=lambda s: None)
    assert swept.units_done == 1 and not swept.history
    lines = []
    torch.manual_seed(0)
    model2, data2 = create_model("resnet18", 2), setup()[1]
    start = dataclasses.replace(swept, first_step_at=None, seconds=0.0, started_from="the lr-find run's sweep")
    state = run(r, model2, data2, LocalComm(), torch.device("cpu"), start, log=lines.append)
    assert state.lr_finds["lr_find"]["lr"] == swept.lr_finds["lr_find"]["lr"]
    assert state.base_lr == state.unfrozen_lr == swept.lr_finds["lr_find"]["suggestion"]
    assert [h["stage"] for h in state.history] == ["unfrozen"] * 3
    assert {row["lr"] for row in state.history} == {state.base_lr}
    assert not any(line.startswith("lr_find") for line in lines)  # no second sweep said, or run
    assert any("from the lr-find run's sweep" in line for line in lines), lines
    spe = data2.steps_per_epoch
    assert len(state.steps) == 3 * spe  # the epochs' steps only: the sweep's are not recorded either way


def test_patience_counts_epochs_in_a_row_that_rose_not_epochs_short_of_the_best():
    """An SGDR restart raises the loss for an epoch; the rest of its cycle brings it down. ants/bees
    from scratch (bench/real_photos.py, seed 0): counted against the best, patience 2 stopped the
    run at epoch 3, at chance."""
    from raycat.core.recipe import rising_epochs

    counts, rising, last = [], 0, float("inf")
    for loss in [0.7186, 0.7969, 0.7680, 0.7891, 0.8734]:
        rising, last = rising_epochs(rising, last, loss), loss
        counts.append(rising)
    assert counts == [0, 1, 0, 1, 2]


def test_the_default_batch_shrinks_for_a_small_set_so_an_epoch_has_steps_enough():
    assert Recipe().batch_for(60_000, 1) == 64
    assert Recipe().batch_for(245, 1) == 16  # ants/bees: 16 steps an epoch, not 4
    assert Recipe().batch_for(245, 2) == 8
    assert Recipe().batch_for(20, 1) == 8  # never below 8
    assert Recipe(batch_size=64).batch_for(245, 1) == 64  # a batch asked for is kept


def test_a_nan_or_infinite_valid_loss_counts_as_rising():
    from raycat.core.recipe import rising_epochs

    nan, inf = float("nan"), float("inf")
    counts, rising, last = [], 0, float("inf")
    for loss in [0.7, nan, nan, inf, 0.6]:
        rising, last = rising_epochs(rising, last, loss), loss
        counts.append(rising)
    assert counts == [0, 1, 2, 3, 0]


def test_a_diverged_stage_stops_early_and_says_so_once():
    """At an absurd rate the weights overflow and the valid loss is NaN from then on: patience
    stops the stage (it used to train every remaining epoch), and the note is written once."""
    r = recipe(lr=1e30, unfrozen_cycles=2, patience=1, precompute_epochs=0, head_cycles=0, tta=0)  # 3 epochs
    model, data = setup()
    state = run(r, model, data, LocalComm(), torch.device("cpu"), log=lambda s: None, sweeps=SWEEP_UNLESS_LR)
    losses = [h["valid_loss"] for h in state.history]
    assert not np.isfinite(losses[0]), losses
    assert state.stopped_early and len(state.history) == 1, losses
    assert sum("diverged" in n for n in state.notes) == 1, state.notes


def test_a_resumed_run_keeps_the_dtype_it_started_in_and_says_so():
    """--precision auto is read once, at the run's start, and recorded in the state: a resume on a
    node that would read it otherwise trains on in the run's dtype, saying so."""
    r = recipe(unfrozen_cycles=1, precompute_epochs=0, head_cycles=0, tta=0)
    model, data = setup()
    said = []
    first = run(r, model, data, LocalComm(), torch.device("cpu"), log=said.append, sweeps=SWEEP_UNLESS_LR,
                precision="fp32")
    assert first.precision == "fp32" and not [s for s in said if s.startswith("precision")]
    resumed = RecipeState.from_dict({**first.to_dict(), "units_done": 0, "history": [], "final": {}})
    said.clear()
    again = run(r, model, data, LocalComm(), torch.device("cpu"), resumed, log=said.append, sweeps=SWEEP_UNLESS_LR,
                precision="bf16")
    assert again.precision == "fp32"
    assert "precision: fp32, as the run started (this cpu would have taken bf16)" in said


def test_an_unfrozen_cycle_that_does_not_lower_the_valid_loss_ends_the_stage():
    """Until over-fitting: the cycles (a cap of 3: 1+2+4 epochs) go on only while each lowers the
    best valid loss. At a rate that can't move the model, the first unfrozen cycle lowers nothing
    below the head's best, and the stage ends there; --no-until-overfit runs every cycle."""
    r = recipe(lr=1e-9, unfrozen_cycles=3)
    model, data = setup()
    said = []
    state = run(r, model, data, LocalComm(), torch.device("cpu"), None, log=said.append)
    unfrozen = [h for h in state.history if h["stage"] == "unfrozen"]
    assert len(unfrozen) == 1 and state.stopped_early
    assert any("unfrozen cycle 1 (epochs 1-1) did not lower the valid loss" in line for line in said), said
    model, data = setup()
    every = go(recipe(lr=1e-9, unfrozen_cycles=3, until_overfit=False), model, data)
    assert len([h for h in every.history if h["stage"] == "unfrozen"]) == 7


def test_a_stage_still_improving_is_not_cut_short():
    """A cycle that lowered the best valid loss is followed by the next, up to the cap."""
    from raycat.core.recipe import cycle_bounds

    r = recipe(lr=0.01, unfrozen_cycles=3, precompute_epochs=0, head_cycles=0, min_gain=0.0)
    model, data = setup()
    state = go(r, model, data)
    losses = [h["valid_loss"] for h in state.history if h["stage"] == "unfrozen"]
    best_before = float("inf")
    for k, (first, last) in enumerate(cycle_bounds(1, 2, 3)):
        if last >= len(losses):
            break
        lowered = min(losses[first:last + 1]) < best_before
        best_before = min(best_before, *losses[first:last + 1])
        if lowered and k < 2:
            assert len(losses) > last + 1, (k, losses)  # the next cycle ran
        if not lowered:
            assert len(losses) == last + 1, (k, losses)  # and none after it
    assert cycle_bounds(1, 2, 3) == [(0, 0), (1, 2), (3, 6)]


def test_a_cycle_that_gains_less_than_min_gain_ends_the_stage_and_one_that_gains_more_does_not():
    """--min-gain: the next cycle, twice as long, runs only where the last lowered the best valid
    loss by that fraction of it. The same run's first cycle decides: a threshold just above its
    gain ends the stage there, saying by how much it lowered the loss; one just below lets the
    second cycle run."""
    base = dict(lr=0.01, unfrozen_cycles=3, precompute_epochs=0, head_cycles=0, tta=0)
    model, data = setup()
    first = go(recipe(**base, until_overfit=False), model, data)
    losses = [h["valid_loss"] for h in first.history]
    # the first cycle is epoch 1; what it must beat is the best before the stage (none: inf), so
    # the decision that matters is cycle 2's: its best against epoch 1's loss
    gain = 1 - min(losses[1:3]) / losses[0]
    assert gain > 0.02, losses  # the stage does improve in its second cycle: the threshold can tell
    said = []
    model, data = setup()
    above = run(recipe(**base, min_gain=gain + 0.01), model, data, LocalComm(), torch.device("cpu"), None,
                log=said.append)
    assert len(above.history) == 3 and above.stopped_early, above.history
    assert any(f"unfrozen cycle 2 (epochs 2-3) lowered the valid loss by {gain:.1%}" in line for line in said), said
    model, data = setup()
    below = go(recipe(**base, min_gain=gain - 0.01), model, data)
    assert len(below.history) > 3, below.history  # the third cycle ran


def test_the_unfrozen_stage_starts_at_the_head_s_rate_where_an_epoch_is_too_short_to_sweep():
    """An epoch of 3 steps gives too few points for a curve: no sweep through the whole body (it
    would cost 50 steps, over 16 epochs' worth); the unfrozen stage starts at half the head's rate."""
    r = recipe(lr=None, unfrozen_cycles=1)
    model, data = setup()
    said = []
    state = run(r, model, data, LocalComm(), torch.device("cpu"), None, log=said.append)
    assert "lr_find_unfrozen" not in state.lr_finds
    assert state.unfrozen_lr == state.base_lr / 2 and state.base_lr == state.lr_finds["lr_find"]["suggestion"]
    first = next(s for s in state.steps if s["stage"] == "unfrozen")
    assert first["lr_head"] == pytest.approx(state.base_lr / 2)  # fastai 2's fine_tune halves it too
    assert any("lr_find_unfrozen: not run (an epoch is 3 steps" in line for line in said), said
    assert "lr_find_unfrozen" in state.sweeps_not_run  # its files will say why


def test_the_head_trains_on_the_activations_until_an_epoch_does_not_lower_the_valid_loss():
    """--precompute-epochs is a cap (an epoch on cached activations costs about a second): the stage
    goes on while each epoch lowers the best valid loss and ends at the first that does not. Here
    the valid set's labels are the train set's inverted, so the more the head learns, the worse
    its valid loss: the stage ends at its second epoch and the head stage follows."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8))
    y = torch.arange(32) % 2
    x[y == 1, 0] = 255
    flipped = TensorData(x[:24], y[:24], x[24:], 1 - y[24:], 8)
    said = []
    torch.manual_seed(0)
    state = run(recipe(precompute_epochs=6, unfrozen_cycles=0, tta=0), create_model("resnet18", 2), flipped,
                LocalComm(), torch.device("cpu"), None, log=said.append)
    pre = [h for h in state.history if h["stage"] == "precompute"]
    assert len(pre) == 2 and pre[1]["valid_loss"] >= pre[0]["valid_loss"], pre
    assert state.precompute_stopped and [h["stage"] for h in state.history][-1] == "head"
    assert any(line.startswith("precompute epoch 2 did not lower the valid loss") for line in said), said
    torch.manual_seed(0)
    every = run(recipe(precompute_epochs=6, unfrozen_cycles=0, tta=0, until_overfit=False),
                create_model("resnet18", 2), flipped, LocalComm(), torch.device("cpu"), None, log=lambda s: None)
    assert len([h for h in every.history if h["stage"] == "precompute"]) == 6


def test_the_precompute_stage_goes_on_while_it_improves():
    """On learnable data, every precompute epoch before the last one run lowered the best valid loss,
    and the stage ran more than one epoch (one was the old default, and left a flowers head at 0.64)."""
    model, data = setup()
    state = go(recipe(precompute_epochs=8, unfrozen_cycles=0, tta=0, lr=0.05), model, data)
    losses = [h["valid_loss"] for h in state.history if h["stage"] == "precompute"]
    assert len(losses) > 1, losses
    assert all(losses[k] < min(losses[:k]) for k in range(1, len(losses) - 1)), losses
    assert len(losses) == 8 or losses[-1] >= min(losses[:-1]), losses


class CountingData(TensorData):
    """The test's data, counting the passes over the valid images."""

    passes = 0

    def valid_batches(self):
        CountingData.passes += 1
        return super().valid_batches()


def test_the_final_metrics_reuse_the_best_epoch_s_validation_and_tta_scores_only_the_augmented_views():
    """No pass through the body twice for the same numbers: the best epoch's plain validation is the
    final plain accuracy (no pass of its own), and TTA passes once, over its augmented views."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8))
    y = torch.arange(32) % 2
    x[y == 1, 0] = 255
    data = CountingData(x[:24], y[:24], x[24:], y[24:], 8)
    CountingData.passes = 0
    torch.manual_seed(0)
    state = run(recipe(precompute_epochs=0, head_cycles=0, unfrozen_cycles=2, tta=2), create_model("resnet18", 2),
                data, LocalComm(), torch.device("cpu"), None, log=lambda s: None)
    epochs = len(state.history)
    assert CountingData.passes == epochs + 1, (CountingData.passes, epochs)  # one an epoch, one for TTA
    best = next(h for h in state.history if f"{h['stage']} {h['epoch']}" == state.best_epoch)
    assert state.final["valid_loss"] == pytest.approx(best["valid_loss"], abs=1e-6)
    assert state.final["valid_accuracy"] == best["accuracy"]
    assert state.final["valid_loss_tta"] != state.final["valid_loss"]
