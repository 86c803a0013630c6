"""Resuming `raycat train` after its driver died: the same command with the same OUT goes on.

Ray Train (V2) resumes a run by itself when a trainer starts with the same storage path and name
as an earlier one: its workers get the latest checkpoint from `get_checkpoint()`. That is right
for a run that was cut off, and wrong for two cases this module guards against:

- the earlier run finished: a new `raycat train` is a new run (its checkpoints are cleared);
- the earlier run had other settings (another lr, arch, classes...): resuming would mix two
  recipes, and starting over would throw its checkpoints away, so raycat stops (exit 2), names
  the settings that differ and says how to start over.

The recipe (config.Recipe), the classes and the train/valid split must match: a run resumed on
another split (another --labels or --valid-pct, or images added under DATA) may have trained on
images it now validates on. The split is compared by a digest of every image's path relative to
DATA and its label, so the data may move. Resources may change between the runs (workers, GPUs,
CPUs, cache, cluster address, where the data lives), so a run cut off on one cluster can go on on
another.
"""

from __future__ import annotations

import hashlib
import json

from raycat.config import TrainConfig, to_dict
from raycat.edge import storage
from raycat.errors import BadInput

MARKER = "raycat_run.json"


class ResumeError(BadInput):
    """OUT holds an unfinished run with other settings (exit 2)."""


def run_dir(out: str, name: str) -> str:
    return storage.join(out, "checkpoints", name)


def split_digest(layout) -> str:
    """A digest of the train/valid split (layout.DatasetLayout): each image's path relative to DATA
    and its label, split by split, in the layout's (sorted, seeded) order."""
    h = hashlib.sha256()
    for name in ("train", "valid"):
        split = getattr(layout, name)
        h.update(f"[{name}]\n".encode())
        for path, label in zip(split.paths, split.labels, strict=True):
            h.update(f"{'/'.join(storage.relative_parts(layout.root, path))}\t{label}\n".encode())
    return h.hexdigest()[:16]


def settings(cfg: TrainConfig, classes: list[str], split: str, stepping: dict | None = None) -> dict:
    """What a run computes: the recipe's settings, the classes it learns and the split it learns on,
    and what its schedule steps by (`stepping`: the global batch and the steps an epoch, which
    --workers, --batch-size and the number of images decide between them)."""
    return {**to_dict(cfg.recipe), "classes": list(classes), "valid_pct": cfg.valid_pct, "split": split,
            **(stepping or {})}


def differences(before: dict, now: dict, written_before: tuple = ()) -> list[str]:
    """'key: old -> new' for each setting that differs, sorted by key. Keys in `written_before`
    that `before` lacks are left out: a note from an older raycat did not record them."""
    keys = sorted(k for k in set(before) | set(now) if k in before or k not in written_before)
    return ["split: the images in train and valid differ (another --labels or --valid-pct, or images added or "
            "removed under DATA)" if k == "split" else f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
            for k in keys if before.get(k) != now.get(k)]


def _has_checkpoints(uri: str) -> bool:
    return any(n.startswith("checkpoint_") for n in storage.list_dir(uri))


STEPPING_KEYS = ("global_batch", "steps_per_epoch", "sweeps")  # recorded since the review of the elastic round


def prepare(cfg: TrainConfig, classes: list[str], split: str, name: str = "train", stepping: dict | None = None
            ) -> str:
    """Make OUT/checkpoints/<name> ready for this run; returns what happens, for the user.

    Called before any cluster time is spent. Raises ResumeError if an unfinished run with other
    settings is there."""
    where = run_dir(cfg.out, name)
    if name != "train":  # lr-find is one short unit: always a fresh sweep
        storage.delete_tree(where)
        return ""
    now = settings(cfg, classes, split, stepping)
    marker = storage.join(where, MARKER)
    message = ""
    if storage.exists(marker):
        before = json.loads(storage.read_text(marker))
        if before.get("finished"):
            storage.delete_tree(where)
            message = f"raycat train: the run in {where} finished; starting a new one"
        elif _has_checkpoints(where):
            diff = differences(before.get("settings", {}), now, written_before=STEPPING_KEYS)
            if diff:
                raise ResumeError(
                    f"--out {cfg.out}: holds an unfinished run with other settings ({'; '.join(diff)}). "
                    f"Run with its settings to resume it, or remove {where} (or choose another --out) "
                    "to start over")
            message = f"raycat train: resuming the unfinished run in {where} from its latest checkpoint"
    elif storage.is_dir(where) and _has_checkpoints(where):
        # Checkpoints without raycat's note: not ours to reuse, and not ours to delete.
        raise ResumeError(f"--out {cfg.out}: {where} holds checkpoints raycat did not write; remove it or "
                          "choose another --out")
    storage.write_text(marker, json.dumps({"settings": now, "finished": False}, indent=2, sort_keys=True) + "\n")
    return message


def mark_finished(cfg: TrainConfig, classes: list[str], split: str, name: str = "train",
                  stepping: dict | None = None) -> None:
    """After every output is written: the next run with this OUT starts afresh."""
    marker = storage.join(run_dir(cfg.out, name), MARKER)
    storage.write_text(marker, json.dumps({"settings": settings(cfg, classes, split, stepping), "finished": True},
                                          indent=2, sort_keys=True) + "\n")
