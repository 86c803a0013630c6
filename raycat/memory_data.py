"""The recipe's data from tensors in memory: one process, no Ray. For tests and baselines."""

from __future__ import annotations

import math

import numpy as np
import torch

from raycat.augment import AugmentSpec, augment_batch, eval_batch
from raycat.model import Classifier


class InMemoryData:
    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, valid_x: np.ndarray, valid_y: np.ndarray,
                 model: Classifier, spec: AugmentSpec, batch_size: int, seed: int = 0,
                 device: torch.device | None = None):
        self.train_x, self.train_y = train_x, torch.as_tensor(train_y).long()
        self.valid_x, self.valid_y = valid_x, torch.as_tensor(valid_y).long()
        self.model, self.spec, self.bs = model, spec, batch_size
        self.device = device or torch.device("cpu")
        self.gen = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = math.ceil(len(train_x) / batch_size)
        self.feature_steps_per_epoch = self.steps_per_epoch
        self._features: tuple[torch.Tensor, torch.Tensor] | None = None

    def _order(self) -> torch.Tensor:
        return torch.randperm(len(self.train_x), generator=self.gen)

    def train_images(self):
        order = self._order().numpy()
        for i in range(0, len(order), self.bs):
            idx = order[i:i + self.bs]
            yield augment_batch(self.train_x[idx], self.spec, self.gen), self.train_y[idx]

    @torch.no_grad()
    def _compute_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._features is None:
            self.model.eval()
            f = lambda xs: torch.cat([self.model.features(eval_batch(xs[i:i + self.bs]).to(self.device)).float().cpu()
                                      for i in range(0, len(xs), self.bs)])
            self._features = (f(self.train_x), f(self.valid_x))
        return self._features

    def train_features(self):
        ft, _ = self._compute_features()
        order = self._order()
        for i in range(0, len(order), self.bs):
            idx = order[i:i + self.bs]
            yield ft[idx], self.train_y[idx]

    def valid_images(self):
        for i in range(0, len(self.valid_x), self.bs):
            yield self.valid_x[i:i + self.bs], self.valid_y[i:i + self.bs]

    def valid_features(self):
        _, fv = self._compute_features()
        for i in range(0, len(fv), self.bs):
            yield fv[i:i + self.bs], self.valid_y[i:i + self.bs]
