"""`raycat train`'s outputs, written by the driver from the final checkpoint: the contract's files
(model/, history, steps, lr_find curves, confusion matrix, grids, skipped files, report.html),
metrics.json last; then the note that the run finished and the tracker's copy."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from raycat.edge import grids, model_card, outputs, report, storage
from raycat.shell import resume

if TYPE_CHECKING:
    from raycat.config import TrainConfig
    from raycat.shell.train_job import FitResult

HISTORY_COLUMNS = ["stage", "epoch", "lr", "train_loss", "valid_loss", "accuracy", "seconds", "valid_seconds"]


def write_train_outputs(cfg: TrainConfig, fitted: FitResult, extra: dict, lr_find_note: bool = True) -> dict:
    """The contract's files, metrics.json last. `lr_find_note`: a run that swept nothing writes
    lr_find.csv and .png saying so (`raycat train --lr`; a tune trial writes none)."""
    from raycat import __version__
    from raycat.core import bodies
    from raycat.core.schedules import GROUP_NAMES
    from raycat.edge import plots

    out, r, state = cfg.out, cfg.recipe.resolved(), fitted.result.state
    f = state.final
    # The recipe's notes; write_files may add one (a failed export) before metrics.json, which holds
    # this very list, is written last.
    notes = list(state.notes)
    body = bodies.info(r.arch)

    def write_files() -> None:
        t0 = time.time()
        card = model_card.ModelCard(arch=r.arch, classes=fitted.classes, size=r.size, mean=list(body.mean),
                                    std=list(body.std), stem=r.stem, aug=r.aug, max_zoom=r.max_zoom,
                                    weights_from=fitted.weights_from)
        export_failed = model_card.write(out, state.model_state, card)
        if export_failed:
            print(f"raycat train: {export_failed}; model/weights.pt and model/model.json are whole, and predict "
                  "uses them")
            notes.append(export_failed)
        outputs.write_dicts(storage.join(out, "history.csv"), state.history, HISTORY_COLUMNS)
        images = {"history": plots.history_png(state.history)}
        storage.write_bytes(storage.join(out, "history.png"), images["history"])
        outputs.write_dicts(storage.join(out, "steps.csv"), state.steps,
                            ["stage", "step", "loss", *[f"lr_{g}" for g in GROUP_NAMES]])
        lr_finds = {name: {"png": outputs.write_lr_find(out, name, found), "suggestion": found["suggestion"],
                           "on": found.get("on", "the model")} for name, found in state.lr_finds.items()}
        if "lr_find" not in state.lr_finds and lr_find_note:
            outputs.write_lr_find_not_run(out, "lr_find", f"--lr {r.lr:g} was given (--lr-find sweeps anyway)")
        for name, why in state.sweeps_not_run.items():  # a sweep the plan had and the run left out, saying why
            if lr_find_note:
                outputs.write_lr_find_not_run(out, name, why)
        images["confusion_matrix"] = outputs.write_confusion(out, f["confusion_matrix"], fitted.classes,
                                                             "confusion matrix (valid set, best epoch)")
        outputs.write_skipped(out, fitted.result.skipped)
        for name, rows in fitted.result.grids.items():
            images[name] = grids.write(out, name, card, rows)
        timing = {"Ray start": metrics["ray_start_seconds"], "to the first step": metrics["to_first_step_seconds"],
                  **{k: round(v, 2) for k, v in state.timing.items()}, "outputs": round(time.time() - t0, 2)}
        report.write(out, report.train_page(report.TrainReport(
            command=report.shown_command(cfg), settings=report.flat_settings(cfg), weights_from=fitted.weights_from,
            classes=fitted.classes, counts=metrics, history=state.history, lr_finds=lr_finds,
            images={k: v for k, v in images.items() if v}, metrics=metrics,
            confusion=f["confusion_matrix"].tolist(), worker_groups=metrics["worker_groups"],
            timing={k: v for k, v in timing.items() if v is not None}, skipped=fitted.result.skipped, out=out)))

    # (an earlier run's curves, where this run drew none)
    stale = [f"{name}.{ext}" for name in ("lr_find", "lr_find_unfrozen") for ext in ("csv", "png")
             if name not in state.lr_finds and not (name == "lr_find" and lr_find_note)
             and not (name in state.sweeps_not_run and lr_find_note)]
    # an earlier run's grids (even where this run writes none), its page; this run's live page
    stale += [*grids.FILES, "report.html", "report.live.html"]
    metrics = {
        "valid_accuracy": f["valid_accuracy"],
        "valid_loss": f["valid_loss"],
        "valid_accuracy_tta": f["valid_accuracy_tta"],
        "valid_loss_tta": f["valid_loss_tta"],
        "tta_views": r.tta,
        "epochs": f["epochs"],
        "best_epoch": f["best_epoch"],
        "seconds": round(state.seconds, 2),
        "valid_seconds": round(state.valid_seconds, 2),
        # where the units' time went (the report's "Where the time went"): lr_find, epochs, validation, TTA
        "seconds_by_part": {k: round(v, 2) for k, v in state.timing.items()},
        # fixed costs: Ray's start (or join), then the rest of the way to the first optimizer step
        "ray_start_seconds": round(fitted.ray_up_at - fitted.started_at, 2),
        # (a resumed run took its first step in an earlier command: no figure)
        "to_first_step_seconds": round(state.first_step_at - fitted.ray_up_at, 2)
        if (state.first_step_at or 0) >= fitted.ray_up_at else None,
        "classes": fitted.classes,
        "base_lr": state.base_lr,
        "unfrozen_lr": state.unfrozen_lr,
        "stopped_early": state.stopped_early,
        "notes": notes,
        "weights_from": fitted.weights_from,
        "workers": cfg.resources.workers.max,
        # each Train worker group this command ran: its size, why it started, from which epoch
        "worker_groups": [{"workers": g["workers"], "reason": g["reason"], "from_epoch": g["from_epoch"],
                           "at_seconds": round(g["at"] - fitted.started_at, 1)} for g in fitted.groups],
        "cpus_per_worker": fitted.cpus_per_worker,
        "training_dtype": state.precision,  # what --precision came to, decided once for the run
        "batch_size": fitted.batch_size,
        "cache": "memory" if fitted.cache else "stream",
        "worker_nodes": fitted.result.worker_nodes,
        "n_train": fitted.result.n_train,
        "n_valid": fitted.result.n_valid,
        "n_skipped": len(fitted.result.skipped),
        "raycat_version": __version__,
        **extra,
    }
    outputs.write_run(out, write_files, metrics, stale=stale)
    return metrics


def finish_run(cfg: TrainConfig, fitted: FitResult, tracker) -> dict:
    """The outputs, then the note that the run finished, then the tracker's copy of them. Tracking
    after the outputs is best-effort: a tracker that fails here warns and the command still
    succeeds (failing it would make a job retry find the run finished, delete its checkpoints and
    train again, for outputs that are already whole)."""
    from raycat.shell import tracking

    try:
        metrics = write_train_outputs(cfg, fitted, {})
        resume.mark_finished(cfg, fitted.classes, fitted.split, stepping=fitted.stepping)
    except BaseException:
        tracking.fail(tracker)
        raise
    tracking.finish_best_effort(tracker, metrics, cfg.out)
    return metrics
