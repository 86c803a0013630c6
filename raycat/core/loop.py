"""The recipe's inner loops, in plain PyTorch: an epoch of SGD, an lr_find sweep, a valid pass.

A `Stage` says what trains and on what: the head alone on precomputed body activations, the head
on augmented images with the body frozen, or the whole network. `Loop` holds what every unit of
a run shares (the model on its device, the peers, the augmentation's generator, the activations
once computed) and runs one unit at a time for recipe.py.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from raycat.core import bn_stats, lr_find
from raycat.core.augment import AugmentSpec, augment, normalize
from raycat.core.data import Batch, RecipeData, index_batches
from raycat.core.device import autocast, memory_format
from raycat.core.evaluate import evaluate
from raycat.core.model import N_GROUPS, Classifier, freeze_to, make_optimizer, set_train_mode
from raycat.core.schedules import GROUP_NAMES
from raycat.core.tta import View, plain_view

GATHER_FEATURES_BYTES = 1 << 30  # every worker holds everyone's activations up to this (Loop.all_features)


def gathers_features(total_bytes: float) -> bool:
    """Whether every worker holds everyone's train activations (`total_bytes`, all workers'
    together): the one rule Loop.all_features follows and the shell reserves memory by."""
    return total_bytes <= GATHER_FEATURES_BYTES


@dataclass(frozen=True)
class Stage:
    name: str  # precompute | head | unfrozen (as history.csv names them)
    on_features: bool  # the head alone, on precomputed body activations
    frozen: int  # leading layer groups that get no gradient


PRECOMPUTE = Stage("precompute", True, N_GROUPS - 1)
HEAD = Stage("head", False, N_GROUPS - 1)
UNFROZEN = Stage("unfrozen", False, 0)


@dataclass(frozen=True)
class Optim:
    """SGD's settings and the loss's label smoothing (config.Recipe's names)."""

    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    label_smoothing: float = 0.0


class EpochCycler:
    """Batches from an epoch factory, starting a new epoch when one ends.

    `drain()` runs the current epoch to its end: every worker must finish each epoch before the
    next starts (streamed data is split across workers), so a sweep that stops early still
    finishes its epoch.
    """

    def __init__(self, new_epoch: Callable[[], Iterator[Batch]]):
        self.new_epoch = new_epoch
        self.it: Iterator | None = None

    def next(self) -> Batch:
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


class Loop:
    """Runs the recipe's units on one worker; `comm` keeps the workers in step."""

    def __init__(self, model: Classifier, data: RecipeData, comm, device: torch.device, precision: str,
                 spec: AugmentSpec, optim: Optim, batch_size: int, log: Callable[[str], None] = print,
                 on_step: Callable[[str, int, int], None] | None = None, loss_weight: float = 1.0,
                 bn_images: int = 0, global_batch: int | None = None, bn_freeze: bool = False):
        self.model, self.data, self.comm, self.device = model, data, comm, device
        self.bn_images = bn_images  # core.bn_stats: images an epoch's BatchNorm statistics are re-taken from
        self.bn_freeze = bn_freeze  # the body's BatchNorm statistics stay as pretrained (model.set_train_mode)
        self.loss_weight = loss_weight  # core.data.loss_weight: this worker's share of the global batch
        self.precision, self.spec, self.optim, self.bs, self.log = precision, spec, optim, batch_size, log
        self.global_bs = global_batch or batch_size * comm.world_size  # images a step, all workers together
        self.on_step = on_step  # (what, step, steps): progress within an epoch, for whoever shows it
        self.gen = torch.Generator()
        self.shared_gen = torch.Generator()  # the same draws on every worker (the head on everyone's activations)
        self.first_step_at: float | None = None  # wall-clock time of the run's first optimizer step
        self._features: tuple[torch.Tensor, ...] | None = None
        self._all_features: tuple[torch.Tensor, torch.Tensor] | None = None
        # The plain valid (probabilities, labels) of the run's best epoch so far, as its validation
        # gave them (recipe.py keeps them): the run's final metrics need no pass of their own.
        # In memory only: a resumed run scores its best weights again.
        self.best_valid: tuple[torch.Tensor, torch.Tensor] | None = None
        self.model.to(device=device, memory_format=memory_format(device, precision))

    def reseed(self, seed: int) -> None:
        """Every random draw of the next unit (data order, augmentation, dropout) from `seed`, and the
        worker's rank: seeded per unit, so a run resumed from a checkpoint draws what the
        uninterrupted run drew."""
        self.gen.manual_seed(seed + self.comm.rank * 1009)
        self.shared_gen.manual_seed(seed)
        torch.manual_seed(seed + self.comm.rank * 1009)

    # ---- what a stage trains, and on what ----------------------------------------------------
    def _net(self, stage: Stage) -> nn.Module:
        freeze_to(self.model, stage.frozen)
        if stage.on_features:
            self.model.head.train()
            if self.all_features() is not None:
                # Every worker steps the head alike on everyone's activations: no all-reduce a step
                # (for a head this small it costs more than the step itself); rank 0's head is sent
                # to the others when the unit ends (their dropout draws differ).
                return self.model.head
            return self.comm.wrap(self.model.head, self.device, "head")
        set_train_mode(self.model, self.bn_freeze)
        return self.comm.wrap(self.model, self.device, f"frozen{stage.frozen}")

    def _bn_target(self, stage: Stage) -> nn.Module:
        """The smallest part of the model that holds every BatchNorm the stage trains (called
        after _net has set the train mode): the head when the body is frozen, or when bn_freeze
        keeps every BatchNorm of the body; then the statistics are re-taken from the head's own
        inputs, with no second pass through the body, and only the head's are pooled."""
        if stage.frozen >= N_GROUPS - 1:
            return self.model.head
        body_trains = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                          for m in self.model.body.modules())
        return self.model if body_trains else self.model.head

    def _batches(self, stage: Stage) -> Iterator[Batch]:
        """One epoch of (input, label) batches for the stage: activations, or augmented images."""
        if stage.on_features:
            everyone = self.all_features()
            if everyone is not None:  # the global batch from everyone's activations, drawn alike everywhere
                f, y = everyone
                batches = index_batches(len(f), self.global_bs, self.data.steps_per_epoch, self.shared_gen)
            else:
                f, y = self.features()[:2]
                batches = index_batches(len(f), self.bs, self.data.steps_per_epoch, self.gen)
            for idx in batches:
                yield f[idx], y[idx]
            return
        fmt = memory_format(self.device, self.precision)
        for x, y in self.data.train_batches(self.gen):
            yield augment(x, self.spec, self.gen).contiguous(memory_format=fmt), y

    def _forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return net(x).float()

    def _step(self, net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.cross_entropy(self._forward(net, x), y.long(), label_smoothing=self.optim.label_smoothing)
        opt.zero_grad(set_to_none=True)
        # (a worker's share of a DDP step is weighted; a step on the whole global batch is not)
        weight = self.loss_weight if net is not self.model.head else 1.0
        (loss * weight if weight != 1.0 else loss).backward()
        opt.step()
        if self.first_step_at is None:
            self.first_step_at = time.time()
        return float(loss.detach())

    def _optimizer(self) -> torch.optim.SGD:
        o = self.optim
        return make_optimizer(self.model, [0.0] * N_GROUPS, o.momentum, o.weight_decay, o.nesterov)

    # ---- units ---------------------------------------------------------------------------------
    def train_epoch(self, stage: Stage, lrs_at: Callable[[int], list[float]], first_step: int,
                    steps: list[dict] | None, label: str = "") -> float:
        """One epoch; `lrs_at(step)` gives every group's rate at a step counted from the start of
        the stage. Rank 0 appends one row per step to `steps` (steps.csv). Returns the mean loss,
        averaged over workers."""
        net, opt = self._net(stage), self._optimizer()
        losses = []
        bn_net, tail = self._bn_target(stage), bn_stats.TailBatches(self.bn_images)
        # What reaches the part of the network whose BatchNorms train: the images, or (body frozen)
        # the body's activations, taken on their way in at no extra cost.
        hook = bn_net.register_forward_pre_hook(lambda _, args: tail.add(args[0])) if self.bn_images else None
        try:
            for i, (x, y) in enumerate(self._batches(stage)):
                lrs = lrs_at(first_step + i)
                for g, lr in zip(opt.param_groups, lrs, strict=True):
                    g["lr"] = lr
                loss = self._step(net, opt, x, y)
                losses.append(loss)
                if self.on_step is not None:
                    self.on_step(label or stage.name, i + 1, self.data.steps_per_epoch)
                if steps is not None and self.comm.rank == 0:
                    row = {"stage": stage.name, "step": first_step + i, "loss": loss}
                    row.update({f"lr_{g}": r for g, r in zip(GROUP_NAMES, lrs, strict=True)})
                    steps.append(row)
        finally:
            if hook is not None:
                hook.remove()
        if self.bn_images:
            bn_stats.recompute(bn_net, tail.batches(), lambda x: self._forward(bn_net, x))
        if net is self.model.head:
            # Every worker stepped alike: rank 0's head (weights and statistics) for all.
            self.comm.broadcast(self.model.head)
        else:
            # Every rank evaluates (and rank 0 saves) the same model: the statistics the stage moved
            # (a frozen body's stay as they were, in eval mode) are made the same on every rank.
            self.comm.sync_buffers(bn_net)
        return self.comm.mean(sum(losses) / len(losses) if losses else float("nan"))

    def sweep(self, stage: Stage, group_rates: Callable[[float], list[float]], rule: str) -> dict:
        """lr_find on the stage: the range test, then the model (and BN statistics) restored exactly."""
        net, opt = self._net(stage), self._optimizer()
        snap = copy.deepcopy(self.model.state_dict())
        batches = EpochCycler(lambda: self._batches(stage))
        n = lr_find.sweep_steps(self.data.steps_per_epoch, cheap=stage.on_features)

        def step(lr: float) -> float:
            for g, r in zip(opt.param_groups, group_rates(lr), strict=True):
                g["lr"] = r
            x, y = batches.next()
            return self.comm.mean(self._step(net, opt, x, y))

        lrs, losses, smoothed = lr_find.range_test(step, n)
        batches.drain()
        self.model.load_state_dict(snap)
        suggested = min(1.0, max(1e-5, lr_find.suggestion(lrs, smoothed, rule, losses)))
        return {"lr": lrs, "loss": losses, "smoothed_loss": smoothed, "suggestion": suggested, "steps": n}

    # ---- activations and evaluation ------------------------------------------------------------
    @torch.no_grad()
    def features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train activations, labels, valid activations, labels) of the frozen body, computed once
        from the plain view of every image and kept on the device."""
        if self._features is None:
            self.model.eval()
            body = lambda x: self._forward(self.model.features, x)
            parts = []
            for batches in (self.data.train_pass(), self.data.valid_batches()):
                fs, ys = [], []
                for x, y in batches:
                    fs.append(body(self._plain(x)))
                    ys.append(y.long())
                dim = self.model.head[0].num_features
                parts += [torch.cat(fs) if fs else torch.zeros(0, dim, device=self.device),
                          torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long, device=self.device)]
            self._features = tuple(parts)
        return self._features

    def all_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every worker's train activations and labels (in rank order), on every worker: the head's
        precompute stage then needs no all-reduce a step. None when they would take more than
        GATHER_FEATURES_BYTES a worker (the stage then steps with DDP on each worker's own)."""
        if self.comm.world_size == 1:
            f, y = self.features()[:2]
            return f, y
        if self._all_features is None:
            f, y = self.features()[:2]
            total = self.comm.mean(float(f.numel() * f.element_size())) * self.comm.world_size
            self._all_features = (self.comm.gather(f).to(self.device), self.comm.gather(y).to(self.device)) \
                if gathers_features(total) else ()
        return self._all_features or None

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.spec).contiguous(memory_format=memory_format(self.device, self.precision))

    def valid(self, stage: Stage, views: list[View] | None = None, beta: float = 0.25, blended: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and labels of the whole valid set (every worker's part), on every worker.

        On activations the head scores them as they are (a frozen stage on images too, once they
        are cached); on images, through `views` (default: the plain view alone): the first blended
        with the rest, or their mean (`blended=False`, core.evaluate)."""
        self.model.eval()
        k = self.model.n_classes
        # A frozen body's activations of the plain valid images are what precompute cached: a frozen
        # stage on images (the head with augmentation) scores them again at no cost (the body, its
        # BatchNorm statistics too, has not moved since they were taken).
        cached = self._features is not None and stage.frozen >= N_GROUPS - 1 and views is None
        if stage.on_features or cached:
            _, _, vf, vy = self.features()
            batches = ((vf[i:i + self.bs], vy[i:i + self.bs]) for i in range(0, len(vf), self.bs))
            probs, labels = evaluate(lambda f: self._forward(self.model.head, f), batches, [lambda f: f], k)
        else:
            fmt = memory_format(self.device, self.precision)
            probs, labels = evaluate(lambda x: self._forward(self.model, x.contiguous(memory_format=fmt)),
                                     self.data.valid_batches(), views or [plain_view(self.spec)], k, beta, blended)
        return self.comm.gather(probs), self.comm.gather(labels)
