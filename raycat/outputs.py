"""Writing the contract's output files (CONTRACT.md, 'Outputs') through the storage module.

Every file is written whole (storage.write_bytes is atomic), so a crash leaves earlier files
complete and later ones absent, never half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from typing import Any, Iterable

import torch

from raycat import __version__, plots, storage
from raycat.augment import IMAGENET_MEAN, IMAGENET_STD
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


def model_card(arch: str, classes: list[str], size: int, aug: str = "side_on", max_zoom: float = 1.1) -> dict:
    # aug and max_zoom travel with the model: predict's TTA views use the training augmentation.
    return {"arch": arch, "classes": list(classes), "size": size, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "raycat_version": __version__, "aug": aug, "max_zoom": max_zoom}


def write_model(out: str, state_dict: dict, arch: str, classes: list[str], size: int, aug: str = "side_on",
                max_zoom: float = 1.1) -> None:
    """model/weights.pt (a plain state dict, loadable with weights_only=True) and model/model.json.

    The weights go first: model.json is what marks a folder as a raycat model, so a crash between
    the two leaves a folder that is not mistaken for a complete model.
    """
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    storage.write_bytes(storage.join(out, "model", "weights.pt"), buf.getvalue())
    write_json(storage.join(out, "model", "model.json"), model_card(arch, classes, size, aug, max_zoom))


def write_lr_find(out: str, name: str, found: dict) -> None:
    write_csv(storage.join(out, f"{name}.csv"), ["lr", "loss", "smoothed_loss"],
              zip(found["lr"], found["loss"], found["smoothed_loss"], strict=True))
    title = "lr_find (head, frozen body)" if name == "lr_find" else "lr_find after unfreezing (head group's rate)"
    storage.write_bytes(storage.join(out, f"{name}.png"),
                        plots.lr_find_png(found["lr"], found["loss"], found["smoothed_loss"], found["suggestion"],
                                          title))


def write_confusion(out: str, cm, classes: list[str], title: str = "confusion matrix") -> None:
    rows = ([c, *[int(v) for v in cm[i].tolist()]] for i, c in enumerate(classes))
    write_csv(storage.join(out, "confusion_matrix.csv"), ["actual\\predicted", *classes], rows)
    storage.write_bytes(storage.join(out, "confusion_matrix.png"), plots.confusion_png(cm, classes, title))


def write_skipped(out: str, skipped: list[tuple[str, str]]) -> None:
    """skipped.csv when anything was skipped; a stale one from an earlier run is removed."""
    uri = storage.join(out, "skipped.csv")
    if skipped:
        write_csv(uri, ["path", "reason"], sorted(set(skipped)))
    else:
        storage.delete_tree(uri)

