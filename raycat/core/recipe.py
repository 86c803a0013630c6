"""The staged fast.ai recipe in plain PyTorch: the plan, the state a run checkpoints, and `run`.

With a pretrained body (ImageNet's, or a file's):

    lr_find (the head, frozen body, on precomputed activations)
    -> the head on precomputed activations (--precompute-epochs at most: an epoch there costs a
       second, so it trains until an epoch does not lower the valid loss)
    -> the head with augmentation, SGDR cycle_len=1 (--head-cycles)
    -> unfreeze, differential rates [lr/m^2, lr/m, lr], lr_find again
    -> the unfrozen stage: SGDR cycle_len, cycle_mult (or one cycle) for --unfrozen-cycles,
       stopping after --patience epochs of rising valid loss
    -> the best epoch's weights; valid metrics, with and without TTA.

From scratch (--weights none) there is no body worth freezing: lr_find sweeps the whole network
and the unfrozen stage follows, every group at one rate (recipe settings may override both).

The run is a flat list of *units* (one lr_find or one epoch each). After every unit the caller's
`checkpoint(state)` runs; a `RecipeState` holds all a resumed run needs, so a run restarted from
any checkpoint skips the units already done and ends with the same history.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from raycat.core import lr_find, metrics
from raycat.core.augment import AugmentSpec
from raycat.core.data import RecipeData
from raycat.core.loop import HEAD, PRECOMPUTE, UNFROZEN, Loop, Optim, Stage
from raycat.core.model import Classifier, cpu_state
from raycat.core.schedules import group_lrs, sgdr_lr, stage_lr, total_epochs
from raycat.core.tta import DEFAULT_BETA, augmented_views, blend

if TYPE_CHECKING:  # the recipe arrives as a value (config.Recipe, a plain dataclass); the core never imports the face
    from raycat.config import Recipe

# An epoch whose valid loss is more than this many times the best so far, and worse than guessing
# (the loss of uniform probabilities, log(classes)), is called out in the table; the better weights
# are the ones kept. That is a fine-tuning step that blew up, not the noise of a small valid set.
GUARD_FACTOR = 2.0
DIVERGED = "diverged: counted as a rise for early stopping; the better weights are kept"


@dataclass
class RecipeState:
    """Everything a resumed run needs; holds only tensors, numbers, strings, lists and dicts."""

    units_done: int = 0
    base_lr: float | None = None
    unfrozen_lr: float | None = None
    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    lr_finds: dict[str, dict] = field(default_factory=dict)
    best_valid_loss: float = math.inf  # over every epoch of every stage: the weights the run keeps
    best_epoch: str = ""
    best_state: dict | None = None
    stage_last: float = math.inf  # the unfrozen stage's latest valid loss, for early stopping
    bad_epochs: int = 0
    stopped_early: bool = False
    precompute_stopped: bool = False  # an epoch on the activations did not lower the valid loss
    cycle_best_before: float = math.inf  # the best valid loss when the unfrozen stage's current cycle began
    model_state: dict | None = None
    seconds: float = 0.0  # in the recipe's units, validation included
    valid_seconds: float = 0.0
    first_step_at: float | None = None  # wall-clock time (time.time()) of the first optimizer step
    notes: list[str] = field(default_factory=list)  # what the guard saw, for metrics.json
    sweeps_not_run: dict[str, str] = field(default_factory=dict)  # a planned sweep left out -> why
    final: dict = field(default_factory=dict)
    started_from: str = "the latest checkpoint"  # where a run given this state says it resumes from
    precision: str | None = None  # the dtype the run trains in (fp32 | bf16), fixed at its start
    # Where the units' time went, seconds: lr_find, epochs (training), validation, TTA
    timing: dict = field(default_factory=dict)

    def spent(self, part: str, seconds: float) -> None:
        self.timing[part] = self.timing.get(part, 0.0) + seconds

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RecipeState":
        # stage_best, which early stopping no longer reads, may be in a checkpoint written before
        return cls(**{k: v for k, v in d.items() if k != "stage_best"})


# Which lr_find sweeps a run has (`sweeps`):
SWEEP_ONLY = "only"  # `raycat lr-find`: the sweep and nothing else
SWEEP_ALWAYS = "always"  # `raycat train`: its sweeps even with --lr (lr_find.csv and .png are outputs)
SWEEP_UNLESS_LR = "unless_lr"  # tune's trials: a trial with its rate has no use for a curve
SWEEP_MODES = (SWEEP_ONLY, SWEEP_ALWAYS, SWEEP_UNLESS_LR)


def sweeps_for(mode: str, lr_given: bool) -> bool:
    """Whether a run in `mode` sweeps: every mode does, except SWEEP_UNLESS_LR with a rate given
    (each sweep costs an epoch or more, to draw a curve the run would not use)."""
    if mode not in SWEEP_MODES:
        raise ValueError(f"sweeps: {mode!r} is not one of {', '.join(SWEEP_MODES)}")
    return not (mode == SWEEP_UNLESS_LR and lr_given)


def plan(recipe: Recipe, sweeps: str = SWEEP_ALWAYS) -> list[tuple[str, int]]:
    """The run as (unit, epoch-in-stage) pairs, with the lr_find units `sweeps` asks for."""
    r = recipe.resolved()
    swept = sweeps_for(sweeps, r.lr is not None)
    units = [("lr_find", 0)] if swept else []
    if sweeps == SWEEP_ONLY:
        return units
    units += [("precompute", e) for e in range(r.precompute_epochs)]
    units += [("head", e) for e in range(r.head_cycles)]
    if r.frozen_stages and swept:
        units += [("lr_find_unfrozen", 0)]
    units += [("unfrozen", e) for e in range(total_epochs(r.cycle_len, r.cycle_mult, r.unfrozen_cycles))]
    return units


TABLE_HEADER = (f"{'stage':<10} {'epoch':>5} {'lr':>9} {'train_loss':>10} {'valid_loss':>10} {'accuracy':>8} "
                f"{'time':>6} {'valid':>5}")


def table_row(row: dict) -> str:
    return (f"{row['stage']:<10} {row['epoch']:>5} {row['lr']:>9.2e} {row['train_loss']:>10.4f} "
            f"{row['valid_loss']:>10.4f} {row['accuracy']:>8.4f} {row['seconds']:>6.1f} {row['valid_seconds']:>5.1f}")


def run(recipe: Recipe, model: Classifier, data: RecipeData, comm, device: torch.device,
        state: RecipeState | None = None, checkpoint: Callable[[RecipeState], None] = lambda s: None,
        log: Callable[[str], None] = print, sweeps: str = SWEEP_ALWAYS, precision: str = "fp32",
        on_step: Callable[[str, int, int], None] | None = None, top: int = 16,
        loss_weight: float = 1.0, global_batch: int | None = None) -> RecipeState:
    """Run the recipe's units not yet in `state` on this worker, checkpointing after each. The
    final state names the `top` valid images worth a look (by index in the gathered valid set)."""
    r = recipe.resolved()
    state = state or RecipeState()
    say = log if comm.rank == 0 else (lambda _: None)
    if state.precision and state.precision != precision:
        # (a resumed run on a node that reads --precision auto otherwise: the run keeps its dtype)
        say(f"precision: {state.precision}, as the run started (this {device.type} would have taken {precision})")
    precision = state.precision = state.precision or precision
    if state.model_state is not None:
        model.load_state_dict(state.model_state)
    optim = Optim(r.momentum, r.weight_decay, r.nesterov, r.label_smoothing)
    # Augmented, then normalised as the body's pretraining was (its mean and std, on the model)
    spec = AugmentSpec(r.aug, r.max_zoom, mean=model.mean, std=model.std)
    loop = Loop(model, data, comm, device, precision, spec, optim, r.batch_size, log,
                on_step if comm.rank == 0 else None, loss_weight, r.bn_images, global_batch, r.bn_freeze)
    units = plan(r, sweeps)
    only_lr_find = sweeps == SWEEP_ONLY
    if ("lr_find", 0) not in units:  # no sweep: the given rate is every stage's
        state.base_lr = state.unfrozen_lr = r.lr
    if state.units_done >= len(units):
        checkpoint(state)  # nothing left to run: report the final state again for whoever listens
        return state
    if state.units_done:
        say(f"resuming after {state.units_done} of {len(units)} units (from {state.started_from})")
    elif not r.frozen_stages and not only_lr_find:
        say("from scratch (--weights none): no frozen stages; lr_find and every epoch train the whole network"
            + (", every layer group at one rate" if r.lr_mult == 1 else ""))
    say(TABLE_HEADER)
    for i, (unit, epoch) in enumerate(units):
        if i < state.units_done:
            continue
        t0 = time.time()
        loop.reseed(r.seed * 1_000_003 + i)
        if unit == "lr_find":
            stage = (PRECOMPUTE if r.precompute_epochs else HEAD) if r.frozen_stages else UNFROZEN
            found = _lr_find(loop, r, stage, "lr_find", say)
            state.spent("lr_find", time.time() - t0)
            state.lr_finds["lr_find"] = found
            state.base_lr = r.lr or found["suggestion"]
            state.unfrozen_lr = state.base_lr
        elif unit == "lr_find_unfrozen":
            # The lesson's unfrozen stage starts from the head's rate, halved as fastai 2's fine_tune
            # does (a restart at the full rate blew up a fine-tune on a few images), spread over the
            # layer groups ([lr/m^2, lr/m, lr]); the second sweep, which sees the whole network, replaces it only
            # where it can be read: an epoch of steps enough for a curve (it costs at most one), and
            # a curve that falls (a model already good gives flat, then up: noise to read).
            state.unfrozen_lr = r.lr or state.base_lr / 2
            spe = loop.data.steps_per_epoch
            if not lr_find.can_read_a_curve(spe):
                why = f"an epoch is {spe} steps, too few points for a curve"
                state.sweeps_not_run["lr_find_unfrozen"] = f"{why}; the unfrozen stage starts at half the head's rate"
                say(f"lr_find_unfrozen: not run ({why}); the unfrozen stage starts at half the head's rate, "
                    f"{state.unfrozen_lr:.2e}")
            else:
                found = _lr_find(loop, r, UNFROZEN, "lr_find_unfrozen", say)
                state.spent("lr_find", time.time() - t0)
                found["used"] = lr_find.has_descent(found["smoothed_loss"])
                state.lr_finds["lr_find_unfrozen"] = found
                if found["used"]:
                    state.unfrozen_lr = r.lr or found["suggestion"]
                else:
                    found["on"] += "; no descent to read: half the head's rate was used"
                    say(f"lr_find_unfrozen: no descent to read (the model is already good); the unfrozen stage "
                        f"starts at half the head's rate, {state.unfrozen_lr:.2e}")
        elif (unit == "unfrozen" and state.stopped_early) or (unit == "precompute" and state.precompute_stopped):
            if i < len(units) - 1:
                continue  # nothing ran: no new state to save
        else:
            _epoch(loop, r, state, {"precompute": PRECOMPUTE, "head": HEAD, "unfrozen": UNFROZEN}[unit], epoch, say)
        state.seconds += time.time() - t0
        state.first_step_at = state.first_step_at or loop.first_step_at
        state.units_done = i + 1
        state.model_state = cpu_state(model)
        if i == len(units) - 1 and not only_lr_find:
            _finish(loop, r, state, say, top)
        checkpoint(state)
    return state


def _lr_find(loop: Loop, r: Recipe, stage: Stage, name: str, say: Callable[[str], None]) -> dict:
    found = loop.sweep(stage, lambda lr: group_lrs(lr, r.lr_mult, stage.frozen), r.lr_suggest)
    n = found.pop("steps")
    found["on"] = "the head, body frozen" if stage.frozen else "the whole network"
    say(f"{name}: suggested lr {found['suggestion']:.2e} ({r.lr_suggest} rule, {len(found['lr'])} steps, "
        f"{'stopped at divergence' if len(found['lr']) < n else 'full sweep'})")
    return found


def cycle_bounds(cycle_len: int, cycle_mult: int, n_cycle: int) -> list[tuple[int, int]]:
    """(first, last) epoch (0-based, in the stage) of each SGDR cycle."""
    bounds, start = [], 0
    for k in range(n_cycle):
        length = cycle_len * cycle_mult**k
        bounds.append((start, start + length - 1))
        start += length
    return bounds


def _epoch(loop: Loop, r: Recipe, state: RecipeState, stage: Stage, epoch: int, say: Callable[[str], None]) -> None:
    spe = loop.data.steps_per_epoch
    cycles = cycle_bounds(r.cycle_len, r.cycle_mult, r.unfrozen_cycles) \
        if stage is UNFROZEN and r.until_overfit and r.schedule == "sgdr" else []
    if any(first == epoch for first, _ in cycles):
        state.cycle_best_before = state.best_valid_loss  # what this cycle has to beat
    if stage is UNFROZEN:
        lr = state.unfrozen_lr
        head_lr = lambda step: stage_lr(r.schedule, lr, step, spe, r.cycle_len, r.cycle_mult, r.unfrozen_cycles)
    else:  # the frozen stages: one-epoch SGDR cycles
        lr = state.base_lr
        head_lr = lambda step: sgdr_lr(lr, min(step, (epoch + 1) * spe - 1), spe, 1, 1)
    t0 = time.time()
    train_loss = loop.train_epoch(stage, lambda step: group_lrs(head_lr(step), r.lr_mult, stage.frozen),
                                  epoch * spe, state.steps, f"{stage.name} {epoch + 1}")
    t1 = time.time()
    probs, labels = loop.valid(stage)
    valid_loss, acc = metrics.nll_of_probs(probs, labels), metrics.accuracy(probs, labels)
    t2 = time.time()
    row = {"stage": stage.name, "epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "valid_loss": valid_loss,
           "accuracy": acc, "seconds": round(t1 - t0, 2), "valid_seconds": round(t2 - t1, 2)}
    state.history.append(row)
    state.valid_seconds += t2 - t1
    state.spent("epochs", t1 - t0)
    state.spent("validation", t2 - t1)
    say(table_row(row))
    name = f"{stage.name} {epoch + 1}"
    if not math.isfinite(valid_loss):
        # A diverged model (NaN or infinite loss) stays diverged: said once, not every epoch after.
        if not any(n.endswith(DIVERGED) for n in state.notes):
            note = f"{name}: valid loss is {valid_loss}; {DIVERGED}"
            state.notes.append(note)
            say(f"  ! {note}")
    elif math.isfinite(state.best_valid_loss) and not (valid_loss <= GUARD_FACTOR * state.best_valid_loss
                                                       or valid_loss <= math.log(loop.model.n_classes)):
        note = (f"{name}: valid loss {valid_loss:.4g} is over {GUARD_FACTOR:g}x the best so far "
                f"({state.best_valid_loss:.4g}, {state.best_epoch}) and worse than guessing; the better weights "
                "are kept")
        state.notes.append(note)
        say(f"  ! {note}")
    improved = valid_loss < state.best_valid_loss
    if improved:
        state.best_valid_loss, state.best_epoch, state.best_state = valid_loss, name, cpu_state(loop.model)
        loop.best_valid = (probs, labels)
    if stage is PRECOMPUTE and r.until_overfit and not improved and epoch < r.precompute_epochs - 1:
        # The lesson's "fit on the precomputed activations" was a few epochs of a 23,000-photo set:
        # hundreds of steps. At 2,000 photos an epoch is 16 steps, and one left a flowers head at
        # 0.64 (bench/RESULTS.md). An epoch here costs about a second, validation included, so the
        # head trains on the activations until an epoch stops lowering the valid loss.
        state.precompute_stopped = True
        say(f"precompute epoch {epoch + 1} did not lower the valid loss ({state.best_valid_loss:.4f}, "
            f"{state.best_epoch}): the head goes on to augmented images")
    if stage is UNFROZEN:
        # "Risen for --patience epochs": that many epochs in a row, each worse than the one before.
        # An SGDR restart raises the loss for an epoch by design and the rest of its cycle brings it
        # down again; over-fitting keeps it rising. (Counting epochs short of the stage's best, as
        # before, stopped a run on ants/bees at its second cycle's restart, at chance.)
        state.bad_epochs = rising_epochs(state.bad_epochs, state.stage_last, valid_loss)
        state.stage_last = valid_loss
        if state.bad_epochs:
            if state.bad_epochs >= r.patience:
                state.stopped_early = True
                say(f"valid loss has risen for {state.bad_epochs} epochs: stopping; keeping the best epoch "
                    f"({state.best_epoch}, valid loss {state.best_valid_loss:.4f})")
        # Until over-fitting: a cycle that ends without lowering the best valid loss ends the stage
        # (the next, twice as long, would be spent on a model that has stopped improving); so does
        # one that lowered it by less than --min-gain of it. On flowers an unfrozen epoch costs four
        # minutes; its first cycle took the loss from 0.724 to 0.716 (1.1%, accuracy +0.4 points), and
        # the cycles after it, 2, 4 and 8 epochs, would have been an hour (bench/RESULTS.md).
        k = next((i for i, (_, last) in enumerate(cycles) if last == epoch), None)
        if not state.stopped_early and k is not None and k < len(cycles) - 1 \
                and not state.best_valid_loss < state.cycle_best_before * (1 - r.min_gain):
            state.stopped_early = True
            span = f"unfrozen cycle {k + 1} (epochs {cycles[k][0] + 1}-{epoch + 1})"
            if state.best_valid_loss < state.cycle_best_before:
                gain = 1 - state.best_valid_loss / state.cycle_best_before
                say(f"{span} lowered the valid loss by {gain:.1%} ({state.cycle_best_before:.4f} to "
                    f"{state.best_valid_loss:.4f}), under --min-gain {r.min_gain:.0%}: stopping; keeping the best "
                    f"epoch ({state.best_epoch})")
            else:
                say(f"{span} did not lower the valid loss ({state.cycle_best_before:.4f} before it): stopping; "
                    f"keeping the best epoch ({state.best_epoch})")


def rising_epochs(rising: int, last_loss: float, loss: float) -> int:
    """Epochs in a row whose valid loss rose over the epoch before, after one with `loss`. A NaN or
    infinite loss counts as rising (`nan > last` is False: a diverged stage would otherwise reset
    the count every epoch and train to its end)."""
    return rising + 1 if not math.isfinite(loss) or loss > last_loss else 0


def _finish(loop: Loop, r: Recipe, state: RecipeState, say: Callable[[str], None], top: int) -> None:
    """Back to the best epoch's weights; valid metrics plain and with TTA; the images worth a look,
    from the plain view (as fast.ai's interpretation of a learner's valid set)."""
    if state.best_state is not None:
        loop.model.load_state_dict(state.best_state)
        state.model_state = state.best_state
    t0 = time.time()
    # The best epoch's own validation scored these weights on the plain view: no pass again
    # (issue 42: a pass through the body on the same images for the same numbers).
    probs, labels = loop.best_valid if loop.best_valid is not None else loop.valid(UNFROZEN)
    n = loop.model.n_classes
    final: dict[str, Any] = {
        "valid_loss": metrics.nll_of_probs(probs, labels),
        "valid_accuracy": metrics.accuracy(probs, labels),
        "confusion_matrix": metrics.confusion_matrix(probs.argmax(1), labels, n),
        "best_epoch": state.best_epoch,
        "worth_a_look": metrics.worth_a_look(probs, labels, top),
    }
    state.spent("validation", time.time() - t0)
    if r.tta > 0:
        t1 = time.time()
        # The augmented views alone; the plain view's probabilities are in hand (fast.ai's blend).
        augmented, tta_labels = loop.valid(UNFROZEN, augmented_views(loop.spec, r.tta, loop.gen), blended=False)
        if not torch.equal(tta_labels, labels):
            raise RuntimeError("TTA: the valid set's order changed between passes")
        tta_probs = blend(probs, [augmented], DEFAULT_BETA)
        state.spent("TTA", time.time() - t1)
        final["valid_accuracy_tta"] = metrics.accuracy(tta_probs, labels)
        final["valid_loss_tta"] = metrics.nll_of_probs(tta_probs, labels)
    else:
        final["valid_accuracy_tta"] = final["valid_accuracy"]
        final["valid_loss_tta"] = final["valid_loss"]
    final["epochs"] = len(state.history)
    state.valid_seconds += time.time() - t0
    state.final = final
    say(f"valid accuracy {final['valid_accuracy']:.4f}, with TTA ({r.tta} views) {final['valid_accuracy_tta']:.4f}"
        f" (weights of {state.best_epoch})")
