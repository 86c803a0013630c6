"""Writing the contract's output files (docs/contract.md, 'Outputs') through the storage module.

Every file is written whole (storage.write_bytes is atomic), so a crash leaves earlier files
complete and later ones absent, never half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from typing import Any, Callable, Iterable

from raycat.edge import plots, storage
from raycat.errors import BadInput


class OutputError(BadInput):
    """OUT can't be written; found before work starts."""


def check_writable(out: str) -> None:
    """Fail early, naming OUT, if it can't be written (a probe file is written and removed)."""
    probe = storage.join(out, f".raycat-write-probe-{os.getpid()}")
    try:
        storage.write_bytes(probe, b"probe")
        storage.delete_tree(probe)
    except Exception as e:  # noqa: BLE001 - any failure here means OUT is unusable
        raise OutputError(f"--out {out}: not writable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None


MB = 1 << 20


def check_space(out: str, need_bytes: int, what: str) -> None:
    """Fail early, naming OUT, if its disk can't hold what the run will write (local OUT only: object
    stores have no such limit). The probe in check_writable shows OUT exists by then."""
    if storage.is_s3(out):
        return
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise OutputError(f"--out {out}: {free / MB:.0f} MB free, and this run writes about "
                          f"{need_bytes / MB:.0f} MB ({what})")


def model_bytes(state_dict: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state_dict.values())


def csv_bytes(header: list[str], rows: Iterable[Iterable[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode("utf-8")


def write_csv(uri: str, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    storage.write_bytes(uri, csv_bytes(header, rows))


def write_json(uri: str, obj: Any) -> None:
    storage.write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_dicts(uri: str, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    write_csv(uri, columns, ([r.get(c) for c in columns] for r in rows))


def write_lr_find(out: str, name: str, found: dict) -> bytes:
    """NAME.csv and NAME.png; returns the PNG (the report inlines it)."""
    write_csv(storage.join(out, f"{name}.csv"), ["lr", "loss", "smoothed_loss"],
              zip(found["lr"], found["loss"], found["smoothed_loss"], strict=True))
    title = f"{name} on {found.get('on', 'the model')}"
    png = plots.lr_find_png(found["lr"], found["loss"], found["smoothed_loss"], found["suggestion"], title)
    storage.write_bytes(storage.join(out, f"{name}.png"), png)
    return png


def write_lr_find_not_run(out: str, name: str, why: str) -> None:
    """NAME.csv and NAME.png of a run that swept nothing (--lr given): the contract's files, saying so."""
    write_csv(storage.join(out, f"{name}.csv"), ["lr", "loss", "smoothed_loss"], [[f"not run: {why}", "", ""]])
    storage.write_bytes(storage.join(out, f"{name}.png"), plots.note_png(name, f"not run: {why}"))


def write_confusion(out: str, cm, classes: list[str], title: str = "confusion matrix") -> bytes:
    """confusion_matrix.csv and .png; returns the PNG (the report inlines it)."""
    rows = ([c, *[int(v) for v in cm[i].tolist()]] for i, c in enumerate(classes))
    write_csv(storage.join(out, "confusion_matrix.csv"), ["actual\\predicted", *classes], rows)
    png = plots.confusion_png(cm, classes, title)
    storage.write_bytes(storage.join(out, "confusion_matrix.png"), png)
    return png


def write_run(out: str, write_files: Callable[[], None], metrics: dict, stale: Iterable[str] = ()) -> None:
    """A run's outputs in OUT: metrics.json is removed first (then the `stale` files an earlier run
    left), `write_files()` writes the rest, and metrics.json comes back last. So an OUT that has a
    metrics.json holds one whole run's outputs, whatever point a failure stopped a run at."""
    storage.delete_tree(storage.join(out, "metrics.json"))
    for name in stale:
        storage.delete_tree(storage.join(out, name))
    write_files()
    write_json(storage.join(out, "metrics.json"), metrics)


def write_skipped(out: str, skipped: list[tuple[str, str]]) -> None:
    """skipped.csv when anything was skipped; a stale one from an earlier run is removed."""
    uri = storage.join(out, "skipped.csv")
    if skipped:
        write_csv(uri, ["path", "reason"], sorted(set(skipped)))
    else:
        storage.delete_tree(uri)

