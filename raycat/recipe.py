"""The staged fast.ai recipe in plain PyTorch: no Ray, no storage.

    lr_find (head, frozen body, on precomputed activations)
    -> head on precomputed activations (--precompute-epochs)
    -> head with augmentation, SGDR cycle_len=1 (--head-cycles)
    -> unfreeze, differential rates [lr/m^2, lr/m, lr], lr_find again
    -> SGDR cycle_len, cycle_mult (--unfrozen-cycles), stopping after --patience epochs of rising
       valid loss and keeping the best epoch's weights
    -> valid metrics, with and without TTA.

The run is a flat list of *units* (one lr_find or one epoch each). After every unit the caller's
`checkpoint(state)` runs; a `RecipeState` holds all a resumed run needs, so a run restarted from
any checkpoint skips the units already done and ends with the same history.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from raycat import lr_find, metrics
from raycat.augment import AugmentSpec, eval_batch
from raycat.config import RecipeArgs
from raycat.model import (
    Classifier,
    differential_lrs,
    freeze,
    make_optimizer,
    set_train_mode,
    unfreeze,
)
from raycat.schedules import sgdr_lr, total_epochs
from raycat.tta import tta_probs

GROUP_NAMES = ("early", "late", "head")  # the three layer groups, as named in steps.csv (lr_<name>)


class RecipeData(Protocol):
    """One worker's view of the data. Every epoch-iterator must be run to its end."""

    steps_per_epoch: int  # image batches per epoch on this worker (the same on every worker)
    feature_steps_per_epoch: int

    def train_images(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of freshly augmented, normalised float batches (x, y)."""

    def train_features(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of precomputed body activations (f, y)."""

    def valid_images(self) -> Iterable[tuple[np.ndarray, torch.Tensor]]:
        """This worker's part of the valid set: uint8 (N, H, W, 3) batches, not normalised."""

    def valid_features(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This worker's part of the valid set's activations."""


@dataclass
class RecipeState:
    """Everything a resumed run needs; holds only tensors, numbers, strings, lists and dicts."""

    units_done: int = 0
    base_lr: float | None = None
    unfrozen_lr: float | None = None
    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    lr_finds: dict[str, dict] = field(default_factory=dict)
    best_valid_loss: float = math.inf
    best_state: dict | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    model_state: dict | None = None
    seconds: float = 0.0
    final: dict = field(default_factory=dict)
    worker_nodes: list = field(default_factory=list)  # the Ray node of each worker, by rank

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RecipeState":
        return cls(**d)


def plan(cfg: RecipeArgs, only_lr_find: bool = False) -> list[tuple[str, int]]:
    """The run as (unit, epoch-in-stage) pairs."""
    units = [("lr_find", 0)]
    if only_lr_find:
        return units
    units += [("precompute", e) for e in range(cfg.precompute_epochs)]
    units += [("head", e) for e in range(cfg.head_cycles)]
    units += [("lr_find_unfrozen", 0)]
    units += [("unfrozen", e) for e in range(total_epochs(cfg.cycle_len, cfg.cycle_mult, cfg.unfrozen_cycles))]
    return units


class EpochCycler:
    """Batches from an epoch factory, starting a new epoch when one ends.

    `drain()` runs the current epoch to its end: Ray's split iterators expect every worker to
    finish each epoch before the next starts, so a sweep that stops early still finishes its epoch.
    """

    def __init__(self, new_epoch: Callable[[], Iterable]):
        self.new_epoch = new_epoch
        self.it: Iterator | None = None

    def next(self):
        for _ in range(2):
            if self.it is None:
                self.it = iter(self.new_epoch())
            try:
                return next(self.it)
            except StopIteration:
                self.it = None
        raise RuntimeError("an epoch of training data was empty")

    def drain(self) -> None:
        if self.it is not None:
            for _ in self.it:
                pass
            self.it = None


def autocast(device: torch.device):
    # Mixed precision on GPU (bfloat16 needs no loss scaling); full precision on CPU.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _set_lrs(opt: torch.optim.Optimizer, lrs: list[float]) -> None:
    for g, lr in zip(opt.param_groups, lrs, strict=True):
        g["lr"] = lr


def _group_lrs(lr: float, cfg: RecipeArgs, frozen: int) -> list[float]:
    """Rates per layer group: differential after unfreezing; frozen groups at 0."""
    lrs = differential_lrs(lr, cfg.lr_mult, 3) if frozen == 0 else [0.0, 0.0, lr]
    return [0.0 if i < frozen else r for i, r in enumerate(lrs)]


def snapshot(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()) if opt is not None else None


def restore(model: nn.Module, snap: tuple[dict, dict | None], opt: torch.optim.Optimizer | None = None) -> None:
    model.load_state_dict(snap[0])
    if opt is not None and snap[1] is not None:
        opt.load_state_dict(snap[1])


class Recipe:
    """Runs the plan on one worker; `comm` keeps the workers in step."""

    def __init__(self, cfg: RecipeArgs, model: Classifier, data: RecipeData, comm, device: torch.device,
                 checkpoint: Callable[[RecipeState], None] = lambda s: None, log: Callable[[str], None] = print):
        self.cfg, self.model, self.data, self.comm, self.device = cfg, model, data, comm, device
        self.checkpoint, self.log = checkpoint, log
        self.spec = AugmentSpec(cfg.aug, cfg.max_zoom)

    # ---- one optimizer step -------------------------------------------------------------------
    def _step(self, net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with autocast(self.device):
            out = net(x)
        loss = F.cross_entropy(out.float(), y.long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def _trainable(self, features: bool) -> tuple[nn.Module, nn.Module]:
        """(module to call, module it wraps): the head alone on activations, else the whole model."""
        inner = self.model.head if features else self.model
        if features:
            self.model.head.train()
        else:
            set_train_mode(self.model)
        return self.comm.wrap(inner, self.device), inner

    # ---- units ----------------------------------------------------------------------------------
    def lr_find(self, name: str, features: bool) -> dict:
        """Range test on the current stage; restores model (and optimizer) exactly afterwards."""
        frozen = self.model.frozen_groups
        opt = make_optimizer(self.model, [0.0] * 3, self.cfg.momentum, self.cfg.weight_decay)
        snap = snapshot(self.model, opt)
        net, _ = self._trainable(features)
        batches = EpochCycler(self.data.train_features if features else self.data.train_images)
        n = lr_find.sweep_steps(self.data.feature_steps_per_epoch if features else self.data.steps_per_epoch, features)

        def step(lr: float) -> float:
            _set_lrs(opt, _group_lrs(lr, self.cfg, frozen))
            x, y = batches.next()
            return self.comm.mean(self._step(net, opt, x, y))

        lrs, losses, smoothed = lr_find.range_test(step, n)
        batches.drain()
        restore(self.model, snap, opt)
        suggested = min(1.0, max(1e-5, lr_find.suggestion(lrs, smoothed)))
        self.log(f"{name}: suggested lr {suggested:.2e} ({len(lrs)} steps, "
                 f"{'stopped at divergence' if len(lrs) < n else 'full sweep'})")
        return {"lr": lrs, "loss": losses, "smoothed_loss": smoothed, "suggestion": suggested}

    def train_epoch(self, state: RecipeState, stage: str, epoch: int, lr: float, features: bool,
                    cycle_len: int, cycle_mult: int) -> float:
        frozen = self.model.frozen_groups
        opt = make_optimizer(self.model, _group_lrs(lr, self.cfg, frozen), self.cfg.momentum, self.cfg.weight_decay)
        net, _ = self._trainable(features)
        spe = self.data.feature_steps_per_epoch if features else self.data.steps_per_epoch
        losses = []
        batches = self.data.train_features() if features else self.data.train_images()
        for i, (x, y) in enumerate(batches):
            step = epoch * spe + i  # counted from the start of the stage
            lrs = _group_lrs(sgdr_lr(lr, min(step, (epoch + 1) * spe - 1), spe, cycle_len, cycle_mult), self.cfg,
                             frozen)
            _set_lrs(opt, lrs)
            loss = self._step(net, opt, x, y)
            losses.append(loss)
            if self.comm.rank == 0:
                row = {"stage": stage, "step": step, "loss": loss}
                row.update({f"lr_{g}": r for g, r in zip(GROUP_NAMES, lrs, strict=True)})
                state.steps.append(row)
        return self.comm.mean(float(np.mean(losses)) if losses else float("nan"))

    @torch.no_grad()
    def valid_logits(self, features: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of the whole valid set (every worker's part), on every worker."""
        self.model.eval()
        outs, ys = [], []
        if features:
            for f, y in self.data.valid_features():
                outs.append(self.model.head(f.to(self.device)).float().cpu())
                ys.append(y.long())
        else:
            for imgs, y in self.data.valid_images():
                with autocast(self.device):
                    outs.append(self.model(eval_batch(imgs).to(self.device)).float().cpu())
                ys.append(torch.as_tensor(y).long())
        n_classes = self.model.head[-1].out_features
        logits = torch.cat(outs) if outs else torch.zeros(0, n_classes)
        labels = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)
        return self.comm.gather(logits), self.comm.gather(labels)

    @torch.no_grad()
    def valid_tta(self, n_views: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        gen = torch.Generator().manual_seed(self.cfg.seed + 1000 * self.comm.rank)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device):
                return self.model(x.to(self.device)).float().cpu()

        probs, ys = [], []
        for imgs, y in self.data.valid_images():
            probs.append(tta_probs(predict, imgs, self.spec, n_views, gen=gen))
            ys.append(torch.as_tensor(y).long())
        n_classes = self.model.head[-1].out_features
        p = torch.cat(probs) if probs else torch.zeros(0, n_classes)
        labels = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)
        return self.comm.gather(p), self.comm.gather(labels)

    # ---- the whole run --------------------------------------------------------------------------
    def run(self, state: RecipeState | None = None, only_lr_find: bool = False) -> RecipeState:
        state = state or RecipeState()
        if state.model_state is not None:
            self.model.load_state_dict(state.model_state)
        self.model.to(self.device)
        units = plan(self.cfg, only_lr_find)
        if state.units_done:
            self.log(f"resuming after {state.units_done} of {len(units)} units (from the latest checkpoint)")
        if state.units_done >= len(units):
            self.checkpoint(state)  # nothing left to run: report the final state again for whoever listens
            return state
        if self.comm.rank == 0 and state.units_done < len(units):
            self.log(f"{'stage':<10} {'epoch':>5} {'lr':>9} {'train_loss':>10} {'valid_loss':>10} "
                     f"{'accuracy':>8} {'time':>6}")
        for i, (unit, epoch) in enumerate(units):
            if i < state.units_done:
                continue
            t0 = time.time()
            if unit == "lr_find":
                freeze(self.model)
                state.lr_finds["lr_find"] = self.lr_find("lr_find", features=self.cfg.precompute_epochs > 0)
                state.base_lr = self.cfg.lr or state.lr_finds["lr_find"]["suggestion"]
            elif unit == "lr_find_unfrozen":
                unfreeze(self.model)
                found = self.lr_find("lr_find_unfrozen", features=False)
                state.lr_finds["lr_find_unfrozen"] = found
                # The second sweep sees the whole network (and the differential rates), so its
                # suggestion, not the head's rate, sets the unfrozen stage's rate.
                state.unfrozen_lr = self.cfg.lr or found["suggestion"]
            elif unit == "unfrozen" and state.stopped_early:
                if i < len(units) - 1:
                    continue  # nothing ran: no new state to save
            else:
                self._epoch(state, unit, epoch)
            state.seconds += time.time() - t0
            state.units_done = i + 1
            state.model_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            if i == len(units) - 1 and not only_lr_find:
                self.finish(state)
            self.checkpoint(state)
        return state

    def _epoch(self, state: RecipeState, stage: str, epoch: int) -> None:
        t0 = time.time()
        if stage == "unfrozen":
            unfreeze(self.model)
            lr, features, clen, cmult = state.unfrozen_lr, False, self.cfg.cycle_len, self.cfg.cycle_mult
        else:
            freeze(self.model)
            lr, features, clen, cmult = state.base_lr, stage == "precompute", 1, 1
        train_loss = self.train_epoch(state, stage, epoch, lr, features, clen, cmult)
        logits, labels = self.valid_logits(features)
        valid_loss, acc = metrics.cross_entropy(logits, labels), metrics.accuracy(logits, labels)
        row = {"stage": stage, "epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "valid_loss": valid_loss,
               "accuracy": acc, "seconds": round(time.time() - t0, 2)}
        state.history.append(row)
        if self.comm.rank == 0:
            self.log(f"{stage:<10} {epoch + 1:>5} {lr:>9.2e} {train_loss:>10.4f} {valid_loss:>10.4f} "
                     f"{acc:>8.4f} {row['seconds']:>6.1f}")
        if stage == "unfrozen":
            if valid_loss < state.best_valid_loss:
                state.best_valid_loss, state.bad_epochs = valid_loss, 0
                state.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            else:
                state.bad_epochs += 1
                if state.bad_epochs >= self.cfg.patience:
                    state.stopped_early = True
                    self.log(f"valid loss has risen for {state.bad_epochs} epochs: stopping; keeping the best epoch "
                             f"(valid loss {state.best_valid_loss:.4f})")

    def finish(self, state: RecipeState) -> None:
        """Back to the best epoch's weights; valid metrics plain and with TTA."""
        if state.best_state is not None:
            self.model.load_state_dict(state.best_state)
            state.model_state = state.best_state
        logits, labels = self.valid_logits(features=False)
        n = logits.shape[1]
        final: dict[str, Any] = {
            "valid_loss": metrics.cross_entropy(logits, labels),
            "valid_accuracy": metrics.accuracy(logits, labels),
            "confusion_matrix": metrics.confusion_matrix(logits.argmax(1), labels, n),
        }
        if self.cfg.tta > 0:
            probs, tta_labels = self.valid_tta(self.cfg.tta)
            final["valid_accuracy_tta"] = metrics.accuracy(probs, tta_labels)
            final["valid_loss_tta"] = metrics.nll_of_probs(probs, tta_labels)
        else:
            final["valid_accuracy_tta"] = final["valid_accuracy"]
            final["valid_loss_tta"] = final["valid_loss"]
        final["epochs"] = sum(1 for r in state.history)
        state.final = final
        if self.comm.rank == 0:
            self.log(f"valid accuracy {final['valid_accuracy']:.4f}, with TTA ({self.cfg.tta} views) "
                     f"{final['valid_accuracy_tta']:.4f}")

