"""Transfer: a body trained on one dataset, given a fresh head and fine-tuned with the full recipe
(frozen stages included) on a small new dataset of those classes, beats the same recipe from
scratch on the same budget, and never blows up on the way. This is the lesson's setting (ImageNet,
which has cats and dogs, fine-tuned on a few thousand dogs and cats) at a CPU test's scale. Plain
PyTorch (the recipe core), no Ray. bench/transfer.py shows transfer to new classes on real data.

RAYCAT_TEST_SEED picks the seed (default 0): issue 12 asked for 10 of 10 passes over 10 seeds,
run as `for s in $(seq 0 9); do RAYCAT_TEST_SEED=$s pytest tests/test_transfer.py; done`."""

import os

import numpy as np
import pytest
import torch

from raycat.config import Recipe
from raycat.core.comm import LocalComm
from raycat.core.data import TensorData
from raycat.core.decode import decode_one
from raycat.core.model import create_model, load_weights
from raycat.core.recipe import run
from raycat.datasets import make_shapes_dataset
from raycat.edge import storage
from raycat.edge.layout import scan_layout

pytestmark = pytest.mark.slow
SIZE = 32
SEED = int(os.environ.get("RAYCAT_TEST_SEED", "0"))
CLASSES = ("circle", "square", "triangle")


def tensors(root):
    lay = scan_layout(root)
    load = lambda ps: torch.stack([decode_one(storage.read_bytes(p), SIZE) for p in ps])
    return lay, load(lay.train.paths), torch.tensor(lay.train.labels), load(lay.valid.paths), \
        torch.tensor(lay.valid.labels)


def train(root, body, batch_size, **kw):
    lay, tx, ty, vx, vy = tensors(root)
    torch.manual_seed(SEED)
    model = create_model("resnet18", len(lay.classes))
    if body is not None:
        load_weights(model, body, "the pretrained body")
    recipe = Recipe(arch="resnet18", weights="none" if body is None else "pretrained.pt", size=SIZE,
                    batch_size=batch_size, seed=SEED, **kw)
    data = TensorData(tx, ty, vx, vy, batch_size)
    state = run(recipe, model, data, LocalComm(), torch.device("cpu"), log=lambda s: None)
    return state, model


def test_a_pretrained_body_beats_scratch_on_a_small_new_dataset(tmp_path):
    pre = make_shapes_dataset(str(tmp_path / "pre"), classes=CLASSES, n_train=60, n_valid=10, seed=1 + SEED,
                              easy=True, clutter=False)
    source, model = train(pre, None, 16, lr=0.01, unfrozen_cycles=3, patience=9, tta=0)
    assert source.final["valid_accuracy"] > 0.8  # the source task was learnt
    # The body only: the new model's head starts from random, as it does on ImageNet weights.
    body = {k: v for k, v in model.state_dict().items() if k.startswith("body.")}

    new = make_shapes_dataset(str(tmp_path / "new"), classes=CLASSES, n_train=6, n_valid=20, seed=2 + SEED,
                              easy=True, clutter=False)
    # The full recipe, frozen stages included (4 epochs, one of them on activations), against the
    # recipe from scratch with as many full epochs.
    transfer, _ = train(new, body, 8, precompute_epochs=1, head_cycles=1, unfrozen_cycles=2, cycle_mult=1,
                        patience=9, tta=0)
    scratch, _ = train(new, None, 8, unfrozen_cycles=4, cycle_mult=1, patience=9, tta=0)
    assert transfer.final["valid_accuracy"] > scratch.final["valid_accuracy"] + 0.15
    assert transfer.final["valid_loss"] < scratch.final["valid_loss"]
    # What fine-tuning on 6 images may do: the unfrozen stage starts at (half) the head's rate, as the
    # lesson's does, and an SGDR restart at that rate can blow an epoch up (seed 0: unfrozen 2). The
    # guard says so, and the weights kept are never a blown epoch's: the final model is the best one.
    assert all("the better weights are kept" in n for n in transfer.notes), transfer.notes
    assert np.isfinite([h["valid_loss"] for h in transfer.history]).all()
    best = min(h["valid_loss"] for h in transfer.history)
    assert transfer.final["valid_loss"] == pytest.approx(best, rel=1e-4)
