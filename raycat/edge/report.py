"""`report.html`: one self-contained page per train, predict and tune run, in OUT beside its files.

The pages are pure functions of what the run already computed (no Ray; storage only in `write`).
Each page is one HTML file: images inlined as base64 `data:` URIs, inline CSS, no JavaScript, and a
Content-Security-Policy that forbids scripts and every fetch, so a downloaded copy or a presigned S3
URL shows the same page, offline. Every class name, path, note and setting is escaped: a class
folder named `<script>` is text on the page. Each part is a `<section id=...>` with a stable id.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raycat.edge import storage

if TYPE_CHECKING:
    from raycat.config import TrainConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# No scripts, no fetches: images only from data: URIs, styles only inline. Anything that would reach
# the network (or injected code) is blocked by the browser rather than half-working.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-top:.4em}h3{font-size:1em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
.row{display:flex;flex-wrap:wrap;gap:0 2em}.row>div{flex:1 1 480px;min-width:0}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
tr.stage-start td{border-top:2px solid #888}tr.kept td{background:#e3f3e6}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;word-break:break-all}
.running{background:#fff4d6;padding:.5em;border-left:4px solid #e0a800}
.bar{display:inline-block;height:.8em;background:#7aa7d6}.muted{color:#777}
"""
MAX_ROWS = 100  # of a long list (classes, skipped files) on the page; the CSVs hold them all
MAX_PAIRS = 15  # most-confused pairs shown
# Settings read in orders of magnitude: shown as 1.00e-03, plotted on a log axis.
RATE_SETTINGS = {"lr", "base_lr", "unfrozen_lr", "weight_decay"}
ASHA_STOPPED = "early_stopped"  # tune_job.trial_status: a trial ASHA cut before its plan ended
GRID_CAPTIONS = {
    "top_losses": "The most confidently wrong (highest loss): prediction / actual, loss / probability",
    "most_uncertain": "The least confident predictions (labelled images): prediction / actual, confidence",
    "least_confident": "The least confident predictions: prediction, confidence",
}


class Html(str):
    """Markup built here from escaped parts: tables pass it through as it is."""


class Rate(float):
    """A learning rate or decay: always shown in scientific notation."""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def number(value) -> float | None:
    """A float from a number or a CSV cell (tables read back hold strings); None for blanks, text, NaN."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(value) -> str:
    """A value as a reader wants it: 4 significant digits; scientific for rates and tiny or huge values."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if isinstance(value, Rate) or (value != 0 and not 1e-3 <= abs(value) < 1e6):
            return f"{value:.2e}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def shown(key: str, value):
    """A setting's value for a table: a rate as Rate (also from CSV text), anything else as it is."""
    v = number(value)
    return Rate(v) if key in RATE_SETTINGS and v is not None and not isinstance(value, bool) else value


def from_csv(value):
    """A cell of a table read back as text (trials.csv): a number where it is one."""
    v = number(value) if isinstance(value, str) else None
    return value if v is None else v


def duration(seconds) -> str:
    s = number(seconds)
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:02.0f} s" if s < 3600 else f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# ---- HTML pieces ------------------------------------------------------------------------------

def img(png: bytes | None, alt: str) -> str:
    """The PNG inlined as a data: URI; nothing for a missing or non-PNG image (never a broken icon)."""
    if not isinstance(png, (bytes, bytearray)) or not png.startswith(PNG_MAGIC):
        return ""
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{esc(alt)}">'


def table(header: list[str] | None, rows: list, row_classes: list[str] | None = None) -> str:
    """Cells are formatted and escaped (numbers right-aligned) unless they are Html already."""
    def cell(v) -> str:
        if isinstance(v, Html):
            return f"<td>{v}</td>"
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f'<td class="n">{esc(fmt(v))}</td>' if numeric else f"<td>{esc(fmt(v))}</td>"

    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join((f'<tr class="{c}">' if c else "<tr>") + "".join(cell(v) for v in r) + "</tr>"
                   for r, c in zip(rows, row_classes or [""] * len(rows), strict=True))
    return f"<table>{head}{body}</table>"


def key_values(pairs, skip_none: bool = True) -> str:
    """Name-value pairs as a two-column table; with `skip_none`, facts a run doesn't have are left out."""
    return table(None, [[Html(f"<b>{esc(k)}</b>"), shown(k, v)] for k, v in pairs if v is not None or not skip_none])


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{esc(text)}</p>' if css else f"<p>{esc(text)}</p>"


def section(id_: str, title: str, body: str) -> str:
    return f'<section id="{id_}"><h2>{esc(title)}</h2>{body}</section>\n'


def page(title: str, heading: str, sections: list[str], banner: str = "") -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><h1>{esc(heading)}</h1>{banner}\n"
            + "".join(sections) + "</body></html>\n")


def names(items: list, where: str) -> str:
    """A list of names, cut at MAX_ROWS with how many more and where they all are."""
    rest = f' <span class="muted">… and {len(items) - MAX_ROWS} more ({esc(where)})</span>' \
        if len(items) > MAX_ROWS else ""
    return "<p>" + ", ".join(esc(i) for i in items[:MAX_ROWS]) + f"{rest}</p>"


def skipped_table(skipped) -> str:
    rows = sorted({(str(p), str(why)) for p, why in skipped or ()})
    if not rows:
        return paragraph("No file was skipped.")
    more = paragraph(f"… and {len(rows) - MAX_ROWS} more: skipped.csv lists them all.", "muted") \
        if len(rows) > MAX_ROWS else ""
    return table(["path", "reason"], [list(r) for r in rows[:MAX_ROWS]]) + more


def grids_html(images: dict) -> str:
    parts = [f"<h3>{esc(caption)}</h3>{img(images.get(name), caption)}" for name, caption in GRID_CAPTIONS.items()
             if img(images.get(name), caption)]
    return "".join(parts) or paragraph("No grid in this run.")


# ---- per-class numbers from a confusion matrix (core.metrics' own functions) ---------------------

def per_class(confusion: list[list[int]], classes: list[str]) -> list[tuple[str, int, float | None, float | None]]:
    """(class, images of that class, precision, recall); None where undefined (nothing predicted as
    the class, or no image of it). core.metrics computes them, as for predict's metrics.json."""
    import torch

    from raycat.core import metrics

    cm = torch.tensor(confusion, dtype=torch.long).reshape(len(classes), len(classes))
    precision, recall = metrics.precision_recall(cm)
    return list(zip(classes, [int(n) for n in cm.sum(1)], precision, recall, strict=True))


def most_confused(confusion: list[list[int]], classes: list[str]) -> list[tuple[str, str, int]]:
    import torch

    from raycat.core import metrics

    return metrics.most_confused(torch.tensor(confusion, dtype=torch.long), classes)


def per_class_html(rows, pairs) -> str:
    confused = ("<h3>Most confused (actual → predicted)</h3>"
                + table(["actual", "predicted", "images"], [list(p) for p in pairs[:MAX_PAIRS]])) \
        if pairs else paragraph("No image was taken for another class.")
    return table(["class", "images", "precision", "recall"], [list(r) for r in rows]) + confused


# ---- train ------------------------------------------------------------------------------------

@dataclass
class TrainReport:
    command: str  # the command line as typed (or reconstructed)
    settings: dict  # resolved settings, flat {flag_name: value}
    weights_from: str  # what the run started from (weights.starting_model)
    classes: list[str]
    counts: dict  # {"n_train", "n_valid", "n_skipped"}
    history: list[dict]  # history.csv's rows so far
    lr_finds: dict  # "lr_find" | "lr_find_unfrozen" -> {"png": bytes | None, "suggestion": float, "on": str}
    images: dict  # name -> PNG bytes: "history", "confusion_matrix", "top_losses", "most_uncertain"
    metrics: dict | None = None  # metrics.json once the run finished; None while it runs
    confusion: list[list[int]] | None = None  # valid set, kept epoch: rows true, columns predicted
    worker_groups: list[dict] = ()  # metrics.json's worker_groups: workers, reason, from_epoch, at_seconds
    timing: dict = ()  # label -> seconds, in the order the run spent them
    skipped: list = ()  # (path, reason)
    running: bool = False
    out: str = ""  # OUT, for the page's title


def epoch_name(row: dict) -> str:
    """An epoch as metrics.json's best_epoch names it: "<stage> <epoch within the stage>"."""
    return f"{row.get('stage')} {row.get('epoch')}"


def kept_epoch(history: list[dict], metrics: dict) -> str | None:
    """The epoch whose weights are kept: metrics.json's best_epoch, or while running the lowest valid
    loss so far (the recipe keeps the lowest over every stage)."""
    if metrics.get("best_epoch"):
        return str(metrics["best_epoch"])
    losses = [(number(h.get("valid_loss")), i) for i, h in enumerate(history)]
    finite = [(v, i) for v, i in losses if v is not None]
    return epoch_name(history[min(finite)[1]]) if finite else None


def history_html(r: TrainReport, m: dict) -> str:
    kept, groups = kept_epoch(r.history, m), list(r.worker_groups or ())
    # A group that started after the first epoch (or any of several) marks the row it began at.
    starts = {g.get("from_epoch"): g for g in groups if g.get("from_epoch") is not None and
              (g.get("from_epoch") or len(groups) > 1)}
    rows, classes = [], []
    for i, h in enumerate(r.history):
        is_kept = kept == epoch_name(h)
        notes = ["best so far" if r.running else "kept (lowest valid loss)"] if is_kept else []
        if i in starts:
            notes.append(f"{starts[i].get('workers')} worker(s) from here: {starts[i].get('reason')}")
        rows.append([h.get("stage"), h.get("epoch"), shown("lr", h.get("lr")),
                     *[number(h.get(k)) for k in ("train_loss", "valid_loss", "accuracy", "seconds", "valid_seconds")],
                     Html(esc("; ".join(notes)))])
        new_stage = i > 0 and h.get("stage") != r.history[i - 1].get("stage")
        classes.append(" ".join(c for c, on in (("stage-start", new_stage), ("kept", is_kept)) if on))
    header = ["stage", "epoch", "lr", "train loss", "valid loss", "accuracy", "train s", "valid s", ""]
    body = img(r.images.get("history"), "training curves") + (
        table(header, rows, classes) if rows else paragraph("No epoch has ended yet."))
    if m.get("stopped_early"):
        body += paragraph(f"Stopped early: valid loss rose for --patience epochs in a row; the weights of {kept} "
                          "are kept.")
    if groups:
        body += "<h3>Worker groups</h3>" + table(["workers", "why it started", "first epoch", "at"], [
            [g.get("workers"), g.get("reason"), epoch_name(r.history[g["from_epoch"]])
             if isinstance(g.get("from_epoch"), int) and g["from_epoch"] < len(r.history) else None,
             Html(esc(duration(g.get("at_seconds"))))] for g in groups])
    notes = m.get("notes") or []
    return body + ("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else "")


def train_metrics_html(m: dict) -> str:
    views = m.get("tta_views")
    tta = f"with TTA ({views} augmented views)" if views is not None else "with TTA"
    return table(["valid set", "accuracy", "loss"],
                 [["plain (centre crop)", number(m.get("valid_accuracy")), number(m.get("valid_loss"))],
                  [tta, number(m.get("valid_accuracy_tta")), number(m.get("valid_loss_tta"))]]) + key_values(
        [("kept epoch", m.get("best_epoch")), ("epochs", m.get("epochs")), ("stopped early", m.get("stopped_early")),
         ("base_lr", m.get("base_lr")), ("unfrozen_lr", m.get("unfrozen_lr")), ("workers", m.get("workers")),
         ("CPUs a worker", m.get("cpus_per_worker")), ("batch size a worker", m.get("batch_size")),
         ("decoded images", m.get("cache")), ("training dtype", m.get("training_dtype")),
         ("raycat", m.get("raycat_version"))])


def train_timing(r: TrainReport, m: dict) -> dict:
    """The caller's timing or, for a run that gave none, what metrics.json has."""
    if r.timing:
        return dict(r.timing)
    found = {"Ray start": m.get("ray_start_seconds"), "to the first step": m.get("to_first_step_seconds"),
             "training": m.get("seconds"), "validation": m.get("valid_seconds")}
    return {k: v for k, v in found.items() if number(v) is not None}


def timing_html(timing: dict) -> str:
    """Seconds per part, each with a bar against the longest (parts may overlap: no shares of a total)."""
    longest = max([number(v) or 0 for v in timing.values()] + [1e-9])
    return table(["part", "time", ""], [
        [k, Html(esc(duration(v))), Html(f'<span class="bar" style="width:{300 * (number(v) or 0) / longest:.0f}px">'
                                          "</span>")] for k, v in timing.items()])


def train_page(r: TrainReport) -> str:
    """The train page; with `running`, what there is so far (the parts a run adds at its end left out)."""
    m = r.metrics or {}
    counts = {k: r.counts.get(k, m.get(k)) for k in ("n_train", "n_valid", "n_skipped")}
    data = key_values([("train images", counts["n_train"]), ("valid images", counts["n_valid"]),
                       ("skipped files", len(r.skipped) if counts["n_skipped"] is None else counts["n_skipped"]),
                       ("classes", len(r.classes))]) + names(list(r.classes), "model/model.json lists them all")
    if r.skipped:
        data += "<h3>Skipped files</h3>" + skipped_table(r.skipped)
    parts = [section("command", "Command and settings", f"<pre>{esc(r.command)}</pre>"
                     + key_values(list(r.settings.items()), skip_none=False)),  # None: "not set" says something
             section("data", "Data", data),
             section("weights", "Starting weights", paragraph(r.weights_from or m.get("weights_from") or "–"))]
    finds = [f"<div><h3>{esc(name)} on {esc(f.get('on', 'the model'))}: suggested lr "
             f"{esc(fmt(shown('lr', f.get('suggestion'))))}</h3>{img(f.get('png'), name)}</div>"
             for name, f in r.lr_finds.items()]
    if finds or not r.running:
        parts.append(section("lr-find", "Learning-rate finder", f'<div class="row">{"".join(finds)}</div>' if finds
                             else paragraph("No lr_find sweep in this run: the rate was given.")))
    parts.append(section("history", "History", history_html(r, m)))
    if r.metrics is not None:
        parts.append(section("metrics", "Metrics (valid set, kept epoch)", train_metrics_html(m)))
    if r.confusion is not None or "confusion_matrix" in r.images or not r.running:
        body = img(r.images.get("confusion_matrix"), "confusion matrix")
        if r.confusion is not None:
            body += per_class_html(per_class(r.confusion, r.classes), most_confused(r.confusion, r.classes))
        parts.append(section("confusion", "Confusion matrix (valid set, kept epoch)",
                             body or paragraph("No confusion matrix in this run.")))
    if any(n in r.images for n in GRID_CAPTIONS) or not r.running:
        parts.append(section("worth-a-look", "Images worth a look (valid set)", grids_html(r.images)))
    timing = train_timing(r, m)
    if timing or not r.running:
        parts.append(section("time", "Where the time went", timing_html(timing) if timing else paragraph("–")))
    banner = paragraph(f"In progress: {len(r.history)} epoch(s) so far. This page is rewritten after each epoch; "
                       "the metrics, confusion matrix and grids come when the run ends.", "running") \
        if r.running else ""
    state = " (in progress)" if r.running else ""
    return page(f"raycat train{state}: {r.out or r.command}", f"raycat train{state}", parts, banner)


# ---- predict ----------------------------------------------------------------------------------

def predict_page(metrics: dict, card: dict, skipped: list[tuple[str, str]], images: dict[str, bytes],
                 confusion: list[list[int]] | None, most_confused: list[tuple[str, str, int]],
                 out: str = "") -> str:
    m, classes = metrics, list(card.get("classes") or metrics.get("classes") or [])
    seconds, n = number(m.get("seconds")), number(m.get("n_images"))
    shards = m.get("n_shards")
    if m.get("resumed_shards"):
        shards = f"{shards} ({m['resumed_shards']} scored by an earlier run: {m.get('resumed_images')} images)"
    summary = key_values([
        ("model", m.get("model")), ("images scored", m.get("n_images")), ("labelled", m.get("n_labelled")),
        ("skipped", m.get("n_skipped")), ("accuracy", number(m.get("accuracy"))), ("TTA views", m.get("tta_views")),
        ("TTA β", m.get("tta_beta")), ("scoring dtype", m.get("scoring_dtype")), ("shards", shards),
        ("time", duration(seconds) if seconds is not None else None),
        ("scoring rate", f"{n / seconds:.1f} images/s" if seconds and n is not None else None),
        ("first shard after", duration(m["first_shard_seconds"]) if "first_shard_seconds" in m else None),
        ("raycat", m.get("raycat_version"))])
    if m.get("n_labelled"):
        support = {c: sum(row) for c, row in zip(classes, confusion or [], strict=False)}
        precision, recall = m.get("precision") or {}, m.get("recall") or {}
        rows = [(c, support.get(c), number(precision.get(c)), number(recall.get(c))) for c in classes]
        confusion_body = img(images.get("confusion_matrix"), "confusion matrix") + per_class_html(
            rows, list(most_confused or ()))
    else:
        confusion_body = paragraph("No labelled image: no confusion matrix, precision or recall.")
    exported = card.get("exported")
    card_facts = [(k, v) for k, v in card.items() if k not in ("classes", "exported")] + (
        [("exported", f"{exported.get('file', '')}: {exported.get('format', '')}")] if isinstance(exported, dict)
        else [])
    parts = [section("summary", "Summary", summary),
             section("skipped", "Skipped files", skipped_table(skipped)),
             section("confusion", "Confusion matrix and per-class numbers", confusion_body),
             section("worth-a-look", "Images worth a look", grids_html(images)),
             section("model", "Model card (model.json)", key_values(card_facts)
                     + f"<h3>{len(classes)} classes</h3>" + names(classes, "model.json lists them all"))]
    return page(f"raycat predict: {out or m.get('model', '')}", "raycat predict", parts)


# ---- tune -------------------------------------------------------------------------------------

def sorted_trials(trials: list[dict], metric: str, mode: str) -> list[dict]:
    """Best first by `metric` (mode "min" or "max"); trials with no value for it last."""
    sign = 1 if mode == "min" else -1
    return sorted(trials, key=lambda t: (number(t.get(metric)) is None, sign * (number(t.get(metric)) or 0)))


def trial_status(t: dict) -> str:
    if t.get("status") == ASHA_STOPPED:
        units = t.get("units_done")
        return f"stopped by ASHA after {units} unit(s)" if units not in (None, "") else "stopped by ASHA"
    return str(t.get("status", ""))


def tune_page(trials: list[dict], metric: str, mode: str, best_recipe: dict, searched: list[str],
              plot_png: bytes | None, out: str = "") -> str:
    ranked = sorted_trials(trials, metric, mode)
    columns = ["trial_id", *searched, "valid_loss", "accuracy", "units_done"]
    rows = [[t.get("trial_id"), *[shown(c, from_csv(t.get(c))) for c in columns[1:]], trial_status(t)]
            for t in ranked]
    stopped = sum(t.get("status") == ASHA_STOPPED for t in trials)
    summary = paragraph(f"{len(trials)} trials, {stopped} stopped early by ASHA (on valid loss, after a unit: one "
                        f"epoch or one lr_find sweep); sorted by {metric}, {'lowest' if mode == 'min' else 'highest'} "
                        "first.")
    best = next((t for t in ranked if t.get("status") == "completed"), None)
    source = paragraph(f"From trial {best.get('trial_id')}; raycat train --config takes it as it is.") if best else ""
    best_facts = [(k, shown(k, v)) for k, v in best_recipe.items()]
    parts = [section("trials", "Trials", summary + table([*columns, "status"], rows)),
             section("best", "Best recipe (best_recipe.json; searched settings in bold)", source + table(None, [
                 [Html(f"<b>{esc(k)}</b>") if k in searched else k, v] for k, v in best_facts])),
             section("plot", f"{metric} against each searched setting",
                     img(plot_png, f"{metric} against each searched setting") or paragraph("No plot."))]
    return page(f"raycat tune: {out}", "raycat tune", parts)


def metric_plot_png(trials: list[dict], metric: str, searched: list[str]) -> bytes:
    """One small panel per searched setting: the metric (y, shared) against the setting (x; log for
    rates and for values spread over two decades). Trials ASHA stopped are hollow red rings: their
    metric is the last one reported, from a shorter run."""
    from raycat.edge import plots  # matplotlib: only a sweep's report draws

    keys = list(searched) or ["trial_id"]
    cols = min(4, len(keys))
    n_rows = -(-len(keys) // cols)
    fig, axes = plots.plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.8 * n_rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    scored = [t for t in trials if number(t.get(metric)) is not None]
    for k, (ax, key) in enumerate(zip(axes.flat, keys, strict=False)):
        values = [t.get(key) for t in scored]
        numeric = all(number(v) is not None for v in values)
        # Text choices (a schedule, an architecture) take evenly spaced places, labelled.
        cats = sorted({str(v) for v in values})
        x = [number(v) for v in values] if numeric else [cats.index(str(v)) for v in values]
        for stopped, style in ((False, {"color": "C0", "label": "completed"}),
                               (True, {"facecolors": "none", "edgecolors": "C3", "label": "stopped by ASHA"})):
            pts = [(xi, number(t[metric])) for xi, t in zip(x, scored, strict=True)
                   if (t.get("status") == ASHA_STOPPED) == stopped]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=30, **style)
        if numeric and x and min(x) > 0 and (key in RATE_SETTINGS or max(x) >= 100 * min(x)):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(cats)), [c[:16] for c in cats], rotation=30, ha="right", fontsize=7)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.set_xlabel(key)
        if k % cols == 0:
            ax.set_ylabel(metric)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{metric} against each searched setting", fontsize=10)
    fig.tight_layout()
    return plots._png(fig)


PAGE, LIVE_PAGE = "report.html", "report.live.html"


def write(out: str, html_text: str, name: str = PAGE) -> None:
    """OUT/report.html (or the live page's name), written whole (storage writes atomically), local or S3."""
    storage.write_text(storage.join(out, name), html_text)


# ---- the train page while the run goes on, and what it shows of the run's settings ----------------

def shown_command(cfg: TrainConfig) -> str:
    """The command the report shows: the one its runner passed in (a tune trial: the sweep's),
    else the run's DATA and OUT as a command (raycat called from Python)."""
    import shlex

    return cfg.command or shlex.join(["raycat", "train", cfg.data, "--out", cfg.out])


def flat_settings(cfg: TrainConfig) -> dict:
    """The run's settings by flag name, the recipe's resolved (the report's table)."""
    from raycat.config import to_dict

    d = to_dict(dataclasses.replace(cfg, recipe=cfg.recipe.resolved()))
    recipe, resources = d.pop("recipe"), d.pop("resources")
    return {**d, **recipe, **{k: str(v) if k == "workers" else v for k, v in resources.items()}}


class LiveReport:
    """The run's page rewritten as each epoch's row is kept (console.Relay's on_epoch), so a running
    job's page shows its progress; the finished page replaces it at the end. Best effort: a page
    that can't be written never stops training.

    Into a fresh OUT it is OUT/report.html. An OUT that holds an earlier finished run (its
    metrics.json) keeps that run whole until this one ends: the live page is then
    OUT/report.live.html, removed when this run's outputs are written."""

    def __init__(self, cfg: TrainConfig, weights_from: str, classes: list[str], counts: dict):
        self.cfg, self.weights_from, self.classes, self.counts = cfg, weights_from, classes, counts
        self.rows: dict[int, dict] = {}
        self.warned = False
        finished = storage.exists(storage.join(cfg.out, "metrics.json"))
        self.name = LIVE_PAGE if finished else PAGE
        if finished:
            print(f"raycat train: {cfg.out} holds an earlier finished run until this one ends; this run's live page is "
                  f"{storage.join(cfg.out, self.name)}")

    def epoch(self, row: dict, index: int) -> None:
        self.rows[index] = row
        rows = [self.rows[i] for i in sorted(self.rows)]
        try:
            # The table alone: drawing the plot (matplotlib, a second of CPU) on the driver would take
            # it from the workers on a small machine; the finished page has the plots.
            write(self.cfg.out, train_page(TrainReport(
                command=shown_command(self.cfg), settings=flat_settings(self.cfg), weights_from=self.weights_from,
                classes=self.classes, counts=self.counts, history=rows, lr_finds={}, images={}, running=True,
                out=self.cfg.out)), self.name)
        except Exception as e:  # noqa: BLE001 - the page is for people; the run goes on without it
            if not self.warned:
                self.warned = True
                print(f"raycat train: warning: could not update {storage.join(self.cfg.out, self.name)} "
                      f"({type(e).__name__}: {e})")
