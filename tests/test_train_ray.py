"""Integration: `raycat train` with 2 Ray Train workers on a tiny generated dataset."""

import contextlib
import csv
import glob
import io
import json
import math
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch

pytestmark = pytest.mark.integration

CHECK_OUTPUTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bin", "check-outputs")


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run["out"]


def test_every_contract_output_is_written(trained):
    if os.path.exists(CHECK_OUTPUTS):
        r = subprocess.run([sys.executable, CHECK_OUTPUTS, "train", trained], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    for name in ["model/weights.pt", "model/model.json", "model/model.pt2", "history.csv", "history.png",
                 "steps.csv", "lr_find.csv",
                 "lr_find.png", "lr_find_unfrozen.csv", "lr_find_unfrozen.png", "metrics.json",
                 "confusion_matrix.csv", "confusion_matrix.png", "report.html"]:
        assert os.path.getsize(os.path.join(trained, name)) > 0, name
    sd = torch.load(os.path.join(trained, "model", "weights.pt"), weights_only=True)
    card = json.load(open(os.path.join(trained, "model", "model.json")))
    assert card["classes"] == ["circle", "square", "triangle"] and card["arch"] == "resnet18" and card["size"] == 64
    m = json.load(open(os.path.join(trained, "metrics.json")))
    # --precision fp32 (the fixture pins it), decided once; what the run started from, in both files
    assert m["training_dtype"] == "fp32" and m["weights_from"] == card["weights_from"]
    assert card["weights_from"].startswith("no weights (--weights none)")
    assert "head.6.weight" in sd and sd["head.6.weight"].shape[0] == 3


def test_every_stage_ran(trained):
    hist = rows(os.path.join(trained, "history.csv"))
    stages = [r["stage"] for r in hist]
    assert stages == ["precompute", "head"] + ["unfrozen"] * 3  # 1 + 2 epochs after unfreezing
    assert [int(r["epoch"]) for r in hist if r["stage"] == "unfrozen"] == list(range(1, 4))
    assert all(float(r["valid_seconds"]) >= 0 for r in hist)  # validation timed apart from training
    steps = rows(os.path.join(trained, "steps.csv"))
    spe = math.ceil((180 // 2) / 8)
    assert [sum(r["stage"] == s for r in steps) for s in ("precompute", "head", "unfrozen")] == [spe, spe, 3 * spe]
    m = json.load(open(os.path.join(trained, "metrics.json")))
    # 2 workers on this session's Ray (2 CPUs): one CPU each, and the shards fit in memory.
    assert m["cpus_per_worker"] == 1 and m["cache"] == "memory" and m["n_train"] == 180 and m["n_valid"] == 36
    assert m["batch_size"] == 8  # as asked


def test_steps_show_cosine_restarts_at_cycle_boundaries(trained):
    steps = [r for r in rows(os.path.join(trained, "steps.csv")) if r["stage"] == "unfrozen"]
    lr = [float(r["lr_head"]) for r in steps]
    step = [int(r["step"]) for r in steps]
    spe = math.ceil((180 // 2) / 8)  # rows per worker / batch size
    assert step == list(range(3 * spe))
    base = lr[0]
    for restart in (0, spe):  # cycles of 1 and 2 epochs
        assert lr[restart] == pytest.approx(base)
        assert lr[restart - 1] < 0.2 * base if restart else True
    assert lr[spe + spe] == pytest.approx(base / 2)  # half-way through the 2-epoch cycle
    assert all(lr[i + 1] < lr[i] for i in range(len(lr) - 1) if i + 1 != spe)


def test_unfrozen_group_rates_stand_in_the_ratio_m(trained):
    for r in rows(os.path.join(trained, "steps.csv")):
        if r["stage"] == "unfrozen" and float(r["lr_head"]) > 0:
            assert float(r["lr_late"]) == pytest.approx(float(r["lr_head"]) / 3)
            assert float(r["lr_early"]) == pytest.approx(float(r["lr_head"]) / 9)
        if r["stage"] in ("precompute", "head"):
            assert float(r["lr_early"]) == 0 and float(r["lr_late"]) == 0


def test_accuracy_is_well_above_chance_and_metrics_agree(trained):
    m = json.load(open(os.path.join(trained, "metrics.json")))
    assert m["valid_accuracy"] >= 0.6  # chance is 1/3
    assert m["epochs"] == 5 and m["classes"] == ["circle", "square", "triangle"]
    with open(os.path.join(trained, "confusion_matrix.csv")) as f:
        cm = [[int(v) for v in r[1:]] for r in list(csv.reader(f))[1:]]
    assert sum(map(sum, cm)) == 36
    assert sum(cm[i][i] for i in range(3)) / 36 == pytest.approx(m["valid_accuracy"], abs=1e-6)


def test_valid_images_worth_a_look_are_the_saved_model_s_highest_losses(trained_run):
    # The grids' rows name each valid image by its path (gathered from 2 workers) and must agree
    # with scoring that file again with the saved model: a row mapped to the wrong path would not.
    from raycat.core.decode import decode_one
    from raycat.core.evaluate import view_probs
    from raycat.core.tta import tta_views
    from raycat.edge import model_card

    out, data = trained_run["out"], trained_run["data"]
    folder, card = model_card.find(out)
    model = model_card.load(folder, card)
    views = tta_views(card.augment_spec(), 0, torch.Generator())
    loss = {}
    for c, name in enumerate(card.classes):
        for f in os.listdir(os.path.join(data, "valid", name)):
            path = os.path.join(data, "valid", name, f)
            x = decode_one(open(path, "rb").read(), card.size).unsqueeze(0)
            loss[path] = -math.log(max(float(view_probs(model, x, views)[0, c]), 1e-12))
    # Every worker scores its part of the valid set with the saved model (BatchNorm's statistics
    # synced after each epoch), so the reported valid loss is the saved model's.
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert sum(loss.values()) / len(loss) == pytest.approx(m["valid_loss"], rel=2e-5)
    top = rows(os.path.join(out, "top_losses.csv"))
    assert len(top) == 6  # --top 6
    assert [r["path"] for r in top] == sorted(loss, key=loss.get, reverse=True)[:6]
    for r in top:
        assert os.path.basename(os.path.dirname(r["path"])) == r["actual"]
        assert float(r["loss"]) == pytest.approx(loss[r["path"]], rel=1e-3, abs=1e-4)
    unsure = rows(os.path.join(out, "most_uncertain.csv"))
    assert len(unsure) == 6 and all(os.path.basename(os.path.dirname(r["path"])) == r["actual"] for r in unsure)
    assert [float(r["confidence"]) for r in unsure] == sorted(float(r["confidence"]) for r in unsure)
    for name in ("top_losses.png", "most_uncertain.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_stream_mode_reads_every_epoch_from_storage_and_trains_the_same_epochs(trained_run, tmp_path, hold_at):
    """--cache stream (what auto picks when the decoded shard would not fit a worker's memory):
    every epoch reads and decodes the files again, so an image that turns unreadable after the
    first epoch (memory mode would never read it again) is seen, skipped and reported by a later
    epoch, and the run still ends with all its epochs. The body is EfficientNet-Lite0, whose input
    statistics are not ImageNet's: the card says so, and predict scores with them."""
    from raycat.cli import main
    from raycat.core.decode import decode_one
    from raycat.core.device import resolve_precision
    from raycat.edge import model_card

    data = str(tmp_path / "data")
    shutil.copytree(trained_run["data"], data)
    victim = sorted(os.listdir(os.path.join(data, "train", "circle")))[0]
    out = str(tmp_path / "out")
    args = ["train", data, "--out", out, "--arch", "tf_efficientnet_lite0", "--weights", "none", "--size", "32",
            "--workers", "1", "--unfrozen-cycles", "2", "--cycle-mult", "1", "--no-until-overfit", "--patience", "10",
            "--tta", "0", "--cache", "stream", "--lr", "0.01"]
    # The job holds after its first epoch's checkpoint (decided before it starts): the file is spoilt
    # while it waits, and the epoch left reads it again.
    with hold_at("epoch=1") as h:
        run = threading.Thread(target=lambda: done.append(main(args)), daemon=True)
        done: list[int] = []
        run.start()
        h.wait(1)
        with open(os.path.join(data, "train", "circle", victim), "wb") as f:
            f.write(b"not an image")
        h.release()
        run.join(timeout=600)
    assert done == [0]
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["cache"] == "stream"
    # Each worker resolves --precision auto on its node: bf16 where the CPU has AMX, else fp32.
    assert m["training_dtype"] == resolve_precision("auto", torch.device("cpu"))
    assert m["batch_size"] == 8  # the default for 180 images: 64 halved until an epoch has 16 steps
    assert [r["stage"] for r in rows(os.path.join(out, "history.csv"))] == ["unfrozen"] * 2
    assert victim in open(os.path.join(out, "skipped.csv")).read()  # found by a later epoch's read
    # --lr given: no sweep ran (its curve would go unused); the contract's lr_find files say so
    assert rows(os.path.join(out, "lr_find.csv"))[0]["lr"].startswith("not run: --lr 0.01 was given")
    assert m["base_lr"] == 0.01 and os.path.getsize(os.path.join(out, "lr_find.png")) > 0
    # Lite0 was trained on [-1, 1] inputs: mean = std = 0.5 in model.json, and predict scores with them
    card = json.load(open(os.path.join(out, "model", "model.json")))
    assert card["mean"] == card["std"] == [0.5, 0.5, 0.5]
    files = sorted(glob.glob(os.path.join(data, "valid", "*", "*")))[:4]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["predict", out, *files, "--tta", "0", "--precision", "fp32"]) == 0
    confidence = [float(line.rsplit(" (", 1)[1].rstrip(")")) for line in printed.getvalue().strip().splitlines()]
    folder, loaded = model_card.find(out)
    model = model_card.load(folder, loaded)
    x = torch.stack([decode_one(open(f, "rb").read(), loaded.size) for f in files]).float() / 255
    with torch.no_grad():
        half = model((x - 0.5) / 0.5).softmax(1).max(1).values
        imagenet = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1)
        other = model((x - imagenet[0]) / imagenet[1]).softmax(1).max(1).values
    assert confidence == pytest.approx(half.tolist(), abs=2e-4)
    assert (half - other).abs().max() > 1e-3  # (the check tells the two statistics apart)
    if os.path.exists(CHECK_OUTPUTS):
        r = subprocess.run([sys.executable, CHECK_OUTPUTS, "train", out], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
