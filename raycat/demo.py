"""`raycat demo`: fast.ai's lesson on a synthetic dataset made on the spot (no download).

The body is ImageNet-pretrained EfficientNet-Lite0, whose weights raycat's install brings
(raycat/edge/weights.py), and the run is the lesson's: lr_find on the head, the head on precomputed
activations, the head with augmentation, unfreeze, lr_find again, differential rates, SGDR, TTA.
"""

from __future__ import annotations

import os
import time

from raycat.check import run_check
from raycat.config import (
    DEFAULT_ARCH,
    CheckConfig,
    DemoConfig,
    LrFindConfig,
    PredictConfig,
    Recipe,
    Resources,
    TrainConfig,
    TrainResources,
)
from raycat.datasets import make_shapes_dataset

DEMO_CLASSES = ("circle", "square", "triangle", "star")


def demo_train_config(cfg: DemoConfig, data: str, out: str, kind: type = TrainConfig):
    """The demo's `raycat train` (or, with kind=LrFindConfig, `raycat lr-find`) settings."""
    # The lesson's stages on the default pretrained body, sized to finish in a minute or two on 2 CPU cores.
    recipe = Recipe(arch=DEFAULT_ARCH, weights="imagenet", size=cfg.size, batch_size=32, seed=cfg.seed,
                    unfrozen_cycles=2, cycle_mult=2, patience=3, tta=4)
    return kind(data=data, out=out, recipe=recipe,
                resources=TrainResources(workers=cfg.workers, address=cfg.address, verbose=cfg.verbose))


def run_demo(cfg: DemoConfig) -> int:
    from raycat.shell.lr_find_job import lr_find_done, run_lr_find
    from raycat.shell.predict_job import run_predict
    from raycat.shell.train_job import run_train

    t0 = time.time()
    data = os.path.join(cfg.out, "data")
    if not os.path.isdir(os.path.join(data, "train")):
        print(f"raycat demo: writing a synthetic dataset ({len(DEMO_CLASSES)} shape classes) to {data}")
        make_shapes_dataset(data, classes=DEMO_CLASSES, n_train=120, n_valid=40, n_test=40, seed=cfg.seed,
                            easy=True)
    print("\n== raycat check ==")
    run_check(CheckConfig(data=data, size=cfg.size, address=cfg.address, verbose=cfg.verbose))
    print("\n== raycat lr-find ==")
    lr_found: list = []
    run_lr_find(demo_train_config(cfg, data, os.path.join(cfg.out, "lr_find"), LrFindConfig), keep=lr_found)
    print("\n== raycat train ==")
    train_out = os.path.join(cfg.out, "train")
    # The same data, seed and settings as the lr-find just run: train's own sweep would be the same
    # work again, so it starts from that one.
    run_train(demo_train_config(cfg, data, train_out), start=lr_find_done(lr_found[0], "the lr-find run's sweep"))
    print("\n== raycat predict (valid set, labelled, with TTA) ==")
    predict_out = os.path.join(cfg.out, "predict")
    run_predict(PredictConfig(model=os.path.join(train_out, "model"), images=[os.path.join(data, "valid")],
                              out=predict_out, tta=4, resources=Resources(address=cfg.address, verbose=cfg.verbose)))
    print("\n== raycat predict (test set, unlabelled) ==")
    run_predict(PredictConfig(model=os.path.join(train_out, "model"), images=[os.path.join(data, "test")],
                              out=os.path.join(cfg.out, "predict_test"), tta=4,
                              resources=Resources(address=cfg.address, verbose=cfg.verbose)))
    print(f"\nraycat demo: done in {time.time() - t0:.0f}s.")
    print(f"  dataset:        {data}")
    print(f"  lr_find curve:  {os.path.join(cfg.out, 'lr_find', 'lr_find.png')}")
    print(f"  trained model:  {os.path.join(train_out, 'model')}")
    print(f"  metrics:        {os.path.join(train_out, 'metrics.json')}")
    print(f"  plots:          {os.path.join(train_out, 'history.png')}, "
          f"{os.path.join(train_out, 'confusion_matrix.png')}")
    print(f"  predictions:    {os.path.join(predict_out, 'predictions')} (Parquet), "
          f"{os.path.join(predict_out, 'metrics.json')}")
    return 0
