"""Integration: `raycat predict` with inputs and outputs on the S3 server, and its error paths."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import boto3
import pyarrow.dataset as pads
import pytest
import torch
from images import bad_files

from raycat import storage
from raycat.cli import main
from raycat.metrics import confusion_matrix, precision_recall
from raycat.predict_job import PredictInputError, label_images, read_model_card

CHECK_OUTPUTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bin", "check-outputs")


def s3_text(bucket, key):
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def s3_keys(bucket, prefix):
    r = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in r.get("Contents", []))


def predictions(uri):
    fs, path = storage.filesystem(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()


@pytest.fixture(scope="module")
def s3_inputs(trained_run, bucket, tmp_path_factory):
    """The model and a labelled image folder (valid set x3, plus corrupt files) in the bucket."""
    local = tmp_path_factory.mktemp("images")
    for rep in range(3):
        for c in ("circle", "square", "triangle"):
            os.makedirs(local / c, exist_ok=True)
            src = os.path.join(trained_run["data"], "valid", c)
            for f in os.listdir(src):
                shutil.copy(os.path.join(src, f), local / c / f"r{rep}_{f}")
    bad = bad_files()
    for name in ("zero.jpg", "truncated.jpg"):
        (local / "circle" / name).write_bytes(bad[name])
    storage.upload_tree(str(local), f"s3://{bucket}/images")
    storage.upload_tree(os.path.join(trained_run["out"], "model"), f"s3://{bucket}/model")
    return {"images": f"s3://{bucket}/images", "model": f"s3://{bucket}/model", "n_good": 108, "n_bad": 2}


@pytest.mark.integration
def test_predict_s3_to_s3_outputs_agree(s3_inputs, bucket):
    out = f"s3://{bucket}/pred"
    assert main(["predict", s3_inputs["model"], s3_inputs["images"], "--out", out, "--tta", "2",
                 "--batch-size", "16", "--workers", "2"]) == 0
    if os.path.exists(CHECK_OUTPUTS):
        r = subprocess.run([sys.executable, CHECK_OUTPUTS, "predict", out], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    df = predictions(f"{out}/predictions")
    assert len(df) == s3_inputs["n_good"] and df["path"].is_unique  # more images than a batch, each once
    classes = json.loads(s3_text(bucket, "model/model.json"))["classes"]
    rows = list(csv.reader(io.StringIO(s3_text(bucket, "pred/confusion_matrix.csv"))))
    assert rows[0][1:] == classes
    cm = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
    assert int(cm.sum()) == s3_inputs["n_good"]  # every labelled, readable image, once
    idx = {c: i for i, c in enumerate(classes)}
    from_preds = confusion_matrix(torch.tensor(df["prediction"].map(idx).values),
                                  torch.tensor(df["label"].map(idx).values), len(classes))
    assert torch.equal(cm, from_preds)
    m = json.loads(s3_text(bucket, "pred/metrics.json"))
    prec, rec = precision_recall(cm)
    assert m["precision"] == {c: pytest.approx(p) for c, p in zip(classes, prec, strict=True)}
    assert m["recall"] == {c: pytest.approx(r) for c, r in zip(classes, rec, strict=True)}
    assert m["n_images"] == s3_inputs["n_good"] and m["n_skipped"] == s3_inputs["n_bad"]
    assert m["accuracy"] == pytest.approx(float((df["label"] == df["prediction"]).mean()))
    skipped = list(csv.DictReader(io.StringIO(s3_text(bucket, "pred/skipped.csv"))))
    assert sorted(os.path.basename(r["path"]) for r in skipped) == ["truncated.jpg", "zero.jpg"]
    assert not [k for k in s3_keys(bucket, "pred") if "staging" in k or "scored" in k]


@pytest.mark.integration
def test_tta_does_not_lower_accuracy_and_a_rerun_replaces_outputs(trained_run, tmp_path):
    images = os.path.join(trained_run["data"], "valid")
    model = trained_run["out"]
    out = str(tmp_path / "p")
    assert main(["predict", model, images, "--out", out, "--tta", "0"]) == 0
    plain = json.load(open(os.path.join(out, "metrics.json")))["accuracy"]
    assert main(["predict", model, images, "--out", out, "--tta", "4"]) == 0
    with_tta = json.load(open(os.path.join(out, "metrics.json")))
    assert with_tta["tta_views"] == 4 and with_tta["accuracy"] >= plain
    # An unlabelled rerun into the same OUT replaces everything the labelled run wrote.
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for f in sorted(os.listdir(os.path.join(images, "circle")))[:5]:
        shutil.copy(os.path.join(images, "circle", f), unlabelled / f)
    assert main(["predict", model, str(unlabelled), "--out", out, "--tta", "0"]) == 0
    assert sorted(os.listdir(out)) == ["metrics.json", "predictions"]
    df = predictions(os.path.join(out, "predictions"))
    assert len(df) == 5 and df["label"].isna().all()


def test_bad_inputs_fail_before_any_work(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "not a raycat model" in capsys.readouterr().err
    model = tmp_path / "m" / "model"
    model.mkdir(parents=True)
    (model / "weights.pt").write_bytes(b"x")
    (model / "model.json").write_text(json.dumps({"arch": "resnet18", "classes": ["cat", "dog"], "size": 32}))
    assert main(["predict", str(model.parent), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    card = read_model_card(str(model.parent))
    assert card.classes == ["cat", "dog"] and card.aug == "side_on"


def test_labelled_folders_must_match_the_model(tmp_path):
    for rel in ["cat/1.jpg", "dog/2.jpg", "horse/3.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(PredictInputError, match="labelled folders horse are not among the model's classes"):
        label_images(str(tmp_path), ["cat", "dog"])
    (tmp_path / "loose.jpg").write_bytes(b"x")  # not a labelled layout any more: unknown folders are unlabelled
    paths, labels = label_images(str(tmp_path), ["cat", "dog"])
    assert [(os.path.basename(p), y) for p, y in zip(paths, labels, strict=True)] == [
        ("1.jpg", 0), ("2.jpg", 1), ("3.jpg", -1), ("loose.jpg", -1)]


@pytest.mark.integration
def test_a_killed_run_leaves_no_partial_outputs_and_a_rerun_completes(trained_run, tmp_path):
    import signal
    import time

    images = tmp_path / "images"
    src = os.path.join(trained_run["data"], "valid")
    for c in os.listdir(src):
        (images / c).mkdir(parents=True)
        for rep in range(8):
            for f in os.listdir(os.path.join(src, c)):
                shutil.copy(os.path.join(src, c, f), images / c / f"{rep}_{f}")
    n = sum(len(os.listdir(images / c)) for c in os.listdir(images))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "raycat", "predict", trained_run["out"], str(images), "--out", str(out),
           "--tta", "8", "--batch-size", "8"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and any(".staging-" in p for p in os.listdir(out))):
        time.sleep(0.2)  # wait until scoring has started writing
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finals = ["predictions", "metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "most_confused.csv"]
    assert not [f for f in finals if (out / f).exists()]  # nothing under a final name yet
    # The rerun removes the dead run's staging folders and writes every output whole.
    assert main(["predict", trained_run["out"], str(images), "--out", str(out), "--tta", "0"]) == 0
    assert sorted(os.listdir(out)) == ["confusion_matrix.csv", "confusion_matrix.png", "metrics.json",
                                       "most_confused.csv", "predictions"]
    assert len(predictions(str(out / "predictions"))) == n
    assert json.load(open(out / "metrics.json"))["n_images"] == n
