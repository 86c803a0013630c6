"""`raycat demo`: the whole flow on a synthetic dataset made on the spot (no download)."""

from __future__ import annotations

import os

from raycat.check import run_check
from raycat.config import CheckConfig, DemoConfig
from raycat.datasets import make_shapes_dataset


def run_demo(cfg: DemoConfig) -> int:
    data = os.path.join(cfg.out, "data")
    if not os.path.isdir(os.path.join(data, "train")):
        print(f"raycat demo: writing a synthetic dataset to {data}")
        make_shapes_dataset(data, seed=cfg.seed, n_test=20)
    run_check(CheckConfig(data=data, size=cfg.size, address=cfg.address))
    print(f"raycat demo: dataset in {data}")
    return 0
