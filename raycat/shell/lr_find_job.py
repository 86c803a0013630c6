"""`raycat lr-find`: the learning-rate range test alone (a Ray Train run whose plan is the sweep),
and the state a later `raycat train` starts from to reuse its sweep (the demo: lr-find, then train)."""

from __future__ import annotations

from raycat.config import LrFindConfig
from raycat.core.recipe import SWEEP_ONLY
from raycat.edge import outputs, storage
from raycat.shell.train_job import FitResult, fit


def lr_find_done(lr_found: FitResult, source: str):
    """The state a `raycat train` starts from to take the sweep of an lr-find run with the same data,
    seed and settings instead of sweeping again (the demo's lr-find, then train). The sweep
    restores the model as it found it, so this is the state that run's own sweep would have left,
    and the run goes on as a run resumed after its sweep does."""
    import dataclasses

    return dataclasses.replace(lr_found.result.state, first_step_at=None, seconds=0.0, started_from=source)


def run_lr_find(cfg: LrFindConfig, keep: list | None = None) -> int:
    """`raycat lr-find`; `keep` (a list) gets the run's FitResult (the demo's train starts from it)."""
    fitted = fit(cfg.as_train(), sweeps=SWEEP_ONLY)
    if keep is not None:
        keep.append(fitted)
    found = fitted.result.state.lr_finds["lr_find"]
    outputs.write_lr_find(cfg.out, "lr_find", found)
    outputs.write_skipped(cfg.out, fitted.result.skipped)
    print(f"raycat lr-find: suggested lr {found['suggestion']:.2e}; curve in "
          f"{storage.join(cfg.out, 'lr_find.png')}")
    return 0
