"""report.html's pages as pure functions: every part there, images inlined, data escaped, a run in
progress, per-class numbers against a hand-computed confusion matrix, trials in order."""

from __future__ import annotations

import base64
import html
import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from raycat.edge import report

EVIL = "<script>alert(1)</script>"
AWKWARD_PATH = 'data/cats & dogs/"odd".jpg'
PNG_SRC = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
TRAIN_IDS = ["command", "data", "weights", "lr-find", "history", "metrics", "confusion", "worth-a-look", "time"]
PREDICT_IDS = ["summary", "skipped", "confusion", "worth-a-look", "model"]
TUNE_IDS = ["trials", "best", "plot"]
# What a page may be built of: no script, no link, no frame, nothing that fetches.
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "section", "div", "p", "pre", "b",
                "span", "img", "table", "tr", "th", "td", "ul", "li"}


def tiny_png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def history(n: int = 5) -> list[dict]:
    stages = ["precompute", "head", "head", "unfrozen", "unfrozen", "unfrozen"][:n]
    losses = [1.2, 0.9, 0.8, 0.5, 0.45, 0.6][:n]
    return [{"stage": s, "epoch": stages[:i + 1].count(s), "lr": 1e-2, "train_loss": v + 0.1, "valid_loss": v,
             "accuracy": 1 - v / 2, "seconds": 10.0, "valid_seconds": 1.5}
            for i, (s, v) in enumerate(zip(stages, losses, strict=True))]


CLASSES = ["ant", "bee", EVIL]
CONFUSION = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]


def train_report(**changes) -> report.TrainReport:
    r = report.TrainReport(
        command='raycat train data --out "runs/a&b"', settings={"arch": "resnet34", "lr": None, "note": EVIL},
        weights_from="ImageNet weights: torchvision", classes=CLASSES,
        counts={"n_train": 120, "n_valid": 16, "n_skipped": 1}, history=history(6),
        lr_finds={"lr_find": {"png": tiny_png(), "suggestion": 3e-3, "on": "the head, body frozen"},
                  "lr_find_unfrozen": {"png": tiny_png(), "suggestion": 1e-4, "on": "the whole network"}},
        images={k: tiny_png() for k in ("history", "confusion_matrix", "top_losses", "most_uncertain")},
        metrics={"valid_accuracy": 0.75, "valid_loss": 0.45, "valid_accuracy_tta": 0.8, "valid_loss_tta": 0.4,
                 "tta_views": 4, "best_epoch": "unfrozen 2", "epochs": 6, "stopped_early": True,
                 "notes": [f"unfrozen 3: {EVIL} rose"]},
        confusion=CONFUSION,
        worker_groups=[{"workers": 2, "reason": "start", "from_epoch": 0, "at_seconds": 3.0},
                       {"workers": 1, "reason": "node lost", "from_epoch": 4, "at_seconds": 80.0}],
        timing={"Ray start": 5.1, "lr_find": 12.0, "epochs": 60.0, "TTA": 3.0},
        skipped=[(AWKWARD_PATH, "not an image")], out='runs/a&b"')
    for k, v in changes.items():
        setattr(r, k, v)
    return r


def predict_args(**changes) -> dict:
    args = dict(
        metrics={"n_images": 16, "n_skipped": 1, "n_labelled": 16, "n_shards": 1, "accuracy": 0.75, "seconds": 4.0,
                 "first_shard_seconds": 2.0, "tta_views": 4, "model": "runs/a&b/model",
                 "precision": {"ant": 0.7, "bee": 0.75, EVIL: 0.8}, "recall": {"ant": 0.8, "bee": 0.5, EVIL: 1.0}},
        card={"arch": "resnet34", "classes": CLASSES, "size": 224, "mean": [0.485, 0.456, 0.406]},
        skipped=[(AWKWARD_PATH, "truncated")],
        images={k: tiny_png() for k in ("confusion_matrix", "top_losses", "most_uncertain")},
        confusion=CONFUSION, most_confused=[("bee", "ant", 2), ("ant", "bee", 1), ("bee", EVIL, 1)], out="out")
    return {**args, **changes}


TRIALS = [{"trial_id": "t1", "lr": 1e-3, "schedule": "sgdr", "valid_loss": 0.5, "accuracy": 0.8, "units_done": 7,
           "status": "completed"},
          {"trial_id": "t2", "lr": "3e-2", "schedule": EVIL, "valid_loss": "9.0", "accuracy": "0.3",
           "units_done": "2", "status": "early_stopped"},  # as read back from trials.csv: strings
          {"trial_id": "t3", "lr": 1e-4, "schedule": "sgdr", "valid_loss": None, "accuracy": None, "units_done": 0,
           "status": "error"},
          {"trial_id": "t4", "lr": 3e-3, "schedule": "one_cycle", "valid_loss": 10.0, "accuracy": 0.2,
           "units_done": 3, "status": "early_stopped"}]


def tune_html(**changes) -> str:
    args = dict(trials=TRIALS, metric="valid_loss", mode="min", best_recipe={"lr": 1e-3, "arch": "resnet34"},
                searched=["lr", "schedule"], plot_png=tiny_png(), out="s3://bucket/sweep")
    return report.tune_page(**{**args, **changes})


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def section(page: str, id_: str) -> str:
    return page.split(f'<section id="{id_}">')[1].split("</section>")[0]


def inlined_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(s, validate=True) for s in PNG_SRC.findall(page)]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = set(), set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)


def assert_inert(page: str) -> None:
    """Nothing from the data became markup: only the page's own tags, no event handlers, no script."""
    parsed = Tags()
    parsed.feed(page)
    assert parsed.tags <= ALLOWED_TAGS, parsed.tags - ALLOWED_TAGS
    assert not {a for a in parsed.attrs if a.startswith("on")}
    assert "<script" not in page.lower()


def test_train_page_has_every_part_and_its_images_inlined():
    page = report.train_page(train_report())
    assert section_ids(page) == TRAIN_IDS
    pngs = inlined_pngs(page)
    assert len(pngs) == 6  # history, confusion, two grids, two lr_find curves
    assert all(p.startswith(report.PNG_MAGIC) for p in pngs)
    assert "<title>raycat train: runs/a&amp;b&quot;</title>" in page
    assert "<tr><td><b>lr</b></td><td>–</td></tr>" in section(page, "command")  # not set: from lr_find
    assert "suggested lr 3.00e-03" in page and "on the whole network" in page
    assert "kept (lowest valid loss)" in page and "Stopped early" in page
    assert "1 worker(s) from here: node lost" in page
    assert "In progress" not in page and "src=" not in page.replace('src="data:image/png;base64,', "")


def test_every_page_escapes_class_names_paths_notes_and_settings():
    pages = [report.train_page(train_report()), report.predict_page(**predict_args()), tune_html()]
    for page in pages:
        assert_inert(page)
        assert html.escape(EVIL) in page
    assert html.escape(AWKWARD_PATH) in pages[0] and html.escape(AWKWARD_PATH) in pages[1]
    assert "data/cats &amp; dogs/&quot;odd&quot;.jpg" in pages[1]
    assert 'raycat train data --out &quot;runs/a&amp;b&quot;' in pages[0]


def test_a_running_train_page_shows_the_history_so_far_and_says_so():
    r = train_report(metrics=None, confusion=None, history=history(4), images={"history": tiny_png()},
                     lr_finds={}, timing={}, skipped=[], worker_groups=[], running=True)
    page = report.train_page(r)
    assert "In progress: 4 epoch(s) so far" in page and "(in progress)" in page
    assert section_ids(page) == ["command", "data", "weights", "history"]
    assert section(page, "history").count("<tr") == 1 + 4  # the header, four epochs
    assert page.count("best so far") == 1 and 'class="stage-start kept"' in page  # unfrozen 1: 0.5 the lowest
    assert len(inlined_pngs(page)) == 1
    assert_inert(page)


def test_a_finished_page_from_an_old_run_with_few_keys_still_renders():
    r = train_report(metrics={}, confusion=None, images={}, lr_finds={}, timing={}, worker_groups=[], history=[])
    page = report.train_page(r)
    assert section_ids(page) == TRAIN_IDS
    assert "No lr_find sweep" in page and "No confusion matrix" in page and "No grid" in page
    predict = report.predict_page({}, {}, [], {}, None, [])
    assert section_ids(predict) == PREDICT_IDS and "No labelled image" in predict


def test_per_class_precision_and_recall_against_a_hand_computed_matrix():
    # rows true, columns predicted: ant 5 right, 1 as bee; bee 2 as ant, 3 right, 1 as EVIL; EVIL 4 right
    rows = report.per_class(CONFUSION, CLASSES)
    assert [r[0] for r in rows] == CLASSES and [r[1] for r in rows] == [6, 6, 4]
    assert [r[2] for r in rows] == pytest.approx([5 / 7, 3 / 4, 4 / 5])  # by predicted column
    assert [r[3] for r in rows] == pytest.approx([5 / 6, 3 / 6, 4 / 4])  # by true row
    assert report.per_class([[2, 0], [1, 0]], ["a", "b"])[1][2:] == (None, 0.0)  # nothing predicted b
    assert report.most_confused(CONFUSION, CLASSES) == [("bee", "ant", 2), ("ant", "bee", 1), ("bee", EVIL, 1)]
    page = report.train_page(train_report())
    for value in ("0.7143", "0.8333", "0.75", "0.5"):
        assert f'<td class="n">{value}</td>' in page


def test_predict_page_has_every_part_and_the_scoring_rate():
    page = report.predict_page(**predict_args())
    assert section_ids(page) == PREDICT_IDS
    assert len(inlined_pngs(page)) == 3
    assert "4.0 images/s" in page and "<title>raycat predict: out</title>" in page
    unlabelled = report.predict_page(**predict_args(metrics={"n_images": 5, "n_labelled": 0}, confusion=None,
                                                     most_confused=[], images={"least_confident": tiny_png()}))
    assert "No labelled image" in unlabelled and "least confident predictions: prediction" in unlabelled


def trial_order(page: str) -> list[str]:
    return re.findall(r"<tr[^>]*><td>(t\d)</td>", section(page, "trials"))


def test_tune_page_sorts_trials_by_the_metric_and_says_what_asha_stopped():
    page = tune_html()
    assert section_ids(page) == TUNE_IDS
    assert trial_order(page) == ["t1", "t2", "t4", "t3"]  # "9.0" (text) below 10.0; no value last
    assert trial_order(tune_html(metric="accuracy", mode="max")) == ["t1", "t2", "t4", "t3"]
    assert trial_order(tune_html(metric="accuracy", mode="min")) == ["t4", "t2", "t1", "t3"]
    assert "2 stopped early by ASHA" in page and "stopped by ASHA after 2 unit(s)" in page
    assert "From trial t1" in page
    assert "<tr><td><b>lr</b></td><td class=\"n\">1.00e-03</td></tr><tr><td>arch</td>" in section(page, "best")
    assert '<td>t2</td><td class="n">3.00e-02</td>' in page  # a rate read back from CSV text
    assert len(inlined_pngs(page)) == 1


def test_metric_plot_is_a_png_for_numeric_text_and_no_searched_settings():
    for trials, searched in ((TRIALS, ["lr", "schedule"]), (TRIALS, []), ([], ["lr"]),
                             (TRIALS, ["lr", "schedule", "trial_id", "units_done", "accuracy"])):
        png = report.metric_plot_png(trials, "valid_loss", searched)
        assert png.startswith(report.PNG_MAGIC)
        assert Image.open(io.BytesIO(png)).size[0] > 200


def test_numbers_are_formatted_for_reading():
    assert [report.fmt(v) for v in (None, True, 3, 0.123456, 3e-4, 2.5e7, 0.0, float("nan"), [1, 0.5])] == \
        ["–", "yes", "3", "0.1235", "3.00e-04", "2.50e+07", "0", "nan", "1, 0.5"]
    assert [report.duration(s) for s in (5.04, 125, 3725, None)] == ["5.0 s", "2 min 05 s", "1 h 02 min", "–"]
    assert report.number("9.0") == 9.0 and report.number("") is None and report.number(float("nan")) is None
    assert report.from_csv("9.0") == 9.0 and report.from_csv("sgdr") == "sgdr" and report.from_csv(3) == 3
    assert report.img(b"not a png", "x") == ""


def test_write_puts_report_html_in_out(tmp_path):
    report.write(str(tmp_path / "out"), "<!doctype html><p>é</p>")
    assert (tmp_path / "out" / "report.html").read_text(encoding="utf-8") == "<!doctype html><p>é</p>"


def _row(epoch):
    return {"stage": "unfrozen", "epoch": epoch, "lr": 0.01, "train_loss": 0.5, "valid_loss": 0.4, "accuracy": 0.9,
            "seconds": 1.0, "valid_seconds": 0.1}


def test_the_live_page_of_a_run_into_a_fresh_out_is_report_html_and_shows_each_kept_epoch(tmp_path):
    from raycat.config import TrainConfig
    from raycat.edge.report import LiveReport

    cfg = TrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "out"), command="raycat train d --out out")
    live = LiveReport(cfg, "no weights", ["a", "b"], {"n_train": 4, "n_valid": 2, "n_skipped": 0})
    live.epoch(_row(1), 0)
    live.epoch(_row(2), 1)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "raycat train d --out out" in page and page.count("unfrozen") >= 2
    assert not (tmp_path / "out" / "report.live.html").exists()


def test_a_run_into_an_out_holding_a_finished_run_leaves_that_run_whole(tmp_path, capsys):
    """An OUT with metrics.json holds one whole run: a rerun that fails part-way must not leave
    the earlier run's files beside a page of its own. The live page goes to report.live.html."""
    from raycat.config import TrainConfig
    from raycat.edge.report import LiveReport

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "report.html").write_text("the earlier run's page")
    cfg = TrainConfig(data=str(tmp_path / "d"), out=str(out), command="raycat train d --out out")
    live = LiveReport(cfg, "no weights", ["a", "b"], {"n_train": 4, "n_valid": 2, "n_skipped": 0})
    live.epoch(_row(1), 0)
    assert (out / "report.html").read_text() == "the earlier run's page"
    assert "raycat train d --out out" in (out / "report.live.html").read_text()
    assert "report.live.html" in capsys.readouterr().out
