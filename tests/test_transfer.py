"""Transfer: a body trained on some shape classes, fine-tuned with the recipe on new classes, beats
the same recipe from scratch on the same budget. Plain PyTorch (the recipe core), no Ray."""

import numpy as np
import torch

from raycat import storage
from raycat.augment import AugmentSpec
from raycat.config import TrainConfig
from raycat.datasets import make_shapes_dataset
from raycat.decode import load_image
from raycat.distributed import LocalComm
from raycat.layout import scan_layout
from raycat.memory_data import InMemoryData
from raycat.model import create_model
from raycat.recipe import Recipe

SIZE = 32


def arrays(root):
    lay = scan_layout(root)
    load = lambda ps: np.stack([load_image(storage.read_bytes(p), SIZE) for p in ps])
    return lay, load(lay.train.paths), np.array(lay.train.labels), load(lay.valid.paths), np.array(lay.valid.labels)


def run(root, weights, cfg_kw):
    lay, tx, ty, vx, vy = arrays(root)
    torch.manual_seed(0)
    model = create_model("resnet18", len(lay.classes), weights)
    cfg = TrainConfig(data=root, out="unused", arch="resnet18", weights=weights, size=SIZE, batch_size=16, **cfg_kw)
    data = InMemoryData(tx, ty, vx, vy, model, AugmentSpec(cfg.aug, cfg.max_zoom), cfg.batch_size)
    state = Recipe(cfg, model, data, LocalComm(), torch.device("cpu"), log=lambda s: None).run()
    return state, model


def test_pretrained_body_beats_scratch_on_new_classes(tmp_path):
    pre = make_shapes_dataset(str(tmp_path / "pre"), classes=("star", "cross", "ring"), n_train=80, n_valid=10,
                              seed=1, easy=True, clutter=False)
    state, model = run(pre, "none", dict(lr=0.01, precompute_epochs=0, head_cycles=0, unfrozen_cycles=3, patience=9,
                                         tta=0))
    assert state.final["valid_accuracy"] > 0.8  # the source task was learnt
    weights = str(tmp_path / "pretrained.pt")
    torch.save(model.state_dict(), weights)

    new = make_shapes_dataset(str(tmp_path / "new"), classes=("circle", "square", "triangle"), n_train=12,
                              n_valid=20, seed=2, easy=True, clutter=False)
    budget = dict(precompute_epochs=1, head_cycles=1, unfrozen_cycles=1, patience=9, tta=0)
    transfer, _ = run(new, weights, budget)
    scratch, _ = run(new, "none", budget)
    assert transfer.final["valid_accuracy"] > scratch.final["valid_accuracy"] + 0.15
    assert transfer.final["valid_loss"] < scratch.final["valid_loss"]
