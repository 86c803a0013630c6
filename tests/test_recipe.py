"""The recipe core in one process: plan, early stopping with the best epoch kept, and resuming
from any checkpointed state to the same end."""

import numpy as np
import pytest
import torch

from raycat.augment import AugmentSpec
from raycat.config import TrainConfig
from raycat.distributed import LocalComm
from raycat.memory_data import InMemoryData
from raycat.model import create_model
from raycat.recipe import Recipe, RecipeState, plan


def cfg(**kw):
    base = dict(data="d", out="o", arch="resnet18", weights="none", size=32, batch_size=8, precompute_epochs=1,
                head_cycles=1, unfrozen_cycles=2, cycle_mult=2, patience=9, tta=1, lr=0.01)
    base.update(kw)
    return TrainConfig(**base)


def setup(c, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    y = np.arange(32) % 2
    x[y == 1, :, :, 0] = 255  # class 1 is red: learnable
    torch.manual_seed(0)
    model = create_model("resnet18", 2, "none")
    return model, InMemoryData(x[:24], y[:24], x[24:], y[24:], model, AugmentSpec(c.aug), c.batch_size, seed=seed)


def test_plan_lists_every_unit():
    assert plan(cfg()) == [("lr_find", 0), ("precompute", 0), ("head", 0), ("lr_find_unfrozen", 0),
                           ("unfrozen", 0), ("unfrozen", 1), ("unfrozen", 2)]
    assert plan(cfg(), only_lr_find=True) == [("lr_find", 0)]


def test_resume_from_a_checkpoint_finishes_with_the_same_units():
    c = cfg()
    saved = []
    model, data = setup(c)
    full = Recipe(c, model, data, LocalComm(), torch.device("cpu"), lambda s: saved.append(s.to_dict()),
                  log=lambda s: None).run()
    # Restart from the state saved after the head epoch, as a crashed run restarted would.
    state = RecipeState.from_dict({k: v for k, v in saved[2].items()})
    assert state.units_done == 3
    model2, data2 = setup(c, seed=1)
    resumed = Recipe(c, model2, data2, LocalComm(), torch.device("cpu"), log=lambda s: None).run(state)
    key = lambda h: [(r["stage"], r["epoch"]) for r in h]
    assert key(resumed.history) == key(full.history)  # no duplicated or missing epochs
    assert resumed.units_done == len(plan(c)) and resumed.final["epochs"] == full.final["epochs"]


def test_early_stop_keeps_the_best_epoch():
    c = cfg(lr=3.0, unfrozen_cycles=3, patience=1, precompute_epochs=0, head_cycles=0)  # diverges after epoch 1
    model, data = setup(c)
    state = Recipe(c, model, data, LocalComm(), torch.device("cpu"), log=lambda s: None).run()
    unfrozen = [r for r in state.history if r["stage"] == "unfrozen"]
    assert state.stopped_early and len(unfrozen) < 7
    best = min(r["valid_loss"] for r in unfrozen)
    assert state.final["valid_loss"] == pytest.approx(best, rel=1e-4)  # evaluated on the best epoch's weights
