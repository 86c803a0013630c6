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

from raycat.cli import main
from raycat.core.device import resolve_precision
from raycat.core.metrics import confusion_matrix, precision_recall
from raycat.edge import model_card, storage

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
    # The grids' rows, recomputed from the predictions: the --top (16) highest -log p(label), and
    # the 16 lowest confidences.
    import numpy as np

    df["loss"] = -np.log(np.clip([row[f"p_{row['label']}"] for _, row in df.iterrows()], 1e-12, None))
    top = list(csv.DictReader(io.StringIO(s3_text(bucket, "pred/top_losses.csv"))))
    want = df.sort_values("loss", ascending=False).head(16)
    assert [r["path"] for r in top] == list(want["path"])
    assert [float(r["loss"]) for r in top] == pytest.approx(list(want["loss"]), abs=1e-4)
    assert [r["predicted"] for r in top] == list(want["prediction"]) and [r["actual"] for r in top] == list(
        want["label"])
    unsure = list(csv.DictReader(io.StringIO(s3_text(bucket, "pred/most_uncertain.csv"))))
    want = df.sort_values("confidence").head(16)
    assert [float(r["confidence"]) for r in unsure] == pytest.approx(list(want["confidence"]), abs=1e-5)
    assert set(r["path"] for r in unsure) <= set(df["path"]) and len(unsure) == 16
    skipped = list(csv.DictReader(io.StringIO(s3_text(bucket, "pred/skipped.csv"))))
    assert sorted(os.path.basename(r["path"]) for r in skipped) == ["truncated.jpg", "zero.jpg"]
    assert not [k for k in s3_keys(bucket, "pred") if "raycat-predict" in k or "staging" in k]


@pytest.mark.integration
def test_tta_really_averages_views_and_a_rerun_replaces_outputs(trained_run, tmp_path):
    images = os.path.join(trained_run["data"], "valid")
    model = trained_run["out"]
    out = str(tmp_path / "p")
    # fp32 here: the folder run and the file run below score in batches of other sizes, and bf16's
    # kernels round differently by batch, more than the 2e-4 compared.
    assert main(["predict", model, images, "--out", out, "--tta", "0", "--precision", "fp32"]) == 0
    plain = predictions(os.path.join(out, "predictions")).set_index("path").sort_index()
    plain_metrics = json.load(open(os.path.join(out, "metrics.json")))
    # `raycat predict MODEL FILE...` (no --out, no cluster) prints what the folder run scored, and
    # skips a corrupt file, naming it, with exit 1.
    files = list(plain.index[:2])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    import contextlib

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["predict", model, *files, str(corrupt), "--tta", "0", "--precision", "fp32"]) == 1
    lines = printed.getvalue().strip().splitlines()
    assert len(lines) == 3 and lines[2].startswith(f"{corrupt}: skipped (")
    for path, line in zip(files, lines, strict=False):
        name, rest = line.rsplit(": ", 1)
        cls, prob = rest.split(" (")
        assert name == path and cls == plain.loc[path, "prediction"]
        assert float(prob.rstrip(")")) == pytest.approx(float(plain.loc[path, "confidence"]), abs=2e-4)
    assert main(["predict", model, images, "--out", out, "--tta", "4", "--precision", "fp32"]) == 0
    tta = predictions(os.path.join(out, "predictions")).set_index("path").sort_index()
    with_tta = json.load(open(os.path.join(out, "metrics.json")))
    assert with_tta["tta_views"] == 4 and list(tta.index) == list(plain.index)
    assert plain_metrics["scoring_dtype"] == with_tta["scoring_dtype"] == "fp32"
    # The augmented views changed the probabilities (TTA that did nothing would leave them equal),
    # and blending in four views at beta 0.25 changes each by less than a quarter.
    diff = (tta["confidence"] - plain["confidence"]).abs()
    assert diff.max() > 1e-3 and diff.max() <= 0.25 + 1e-6
    assert with_tta["accuracy"] >= plain_metrics["accuracy"] - 0.1
    # An unlabelled rerun into the same OUT replaces everything the labelled run wrote.
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for f in sorted(os.listdir(os.path.join(images, "circle")))[:5]:
        shutil.copy(os.path.join(images, "circle", f), unlabelled / f)
    assert main(["predict", model, str(unlabelled), "--out", out, "--tta", "0"]) == 0
    assert sorted(os.listdir(out)) == ["least_confident.csv", "least_confident.png", "metrics.json", "predictions",
                                       "report.html"]
    df = predictions(os.path.join(out, "predictions"))
    assert len(df) == 5 and df["label"].isna().all()
    # Without --precision each actor resolves auto on its node: bf16 where the CPU has AMX.
    auto = resolve_precision("auto", torch.device("cpu"))
    assert json.load(open(os.path.join(out, "metrics.json")))["scoring_dtype"] == auto


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
    folder, card = model_card.find(str(model.parent))
    assert card.classes == ["cat", "dog"] and card.aug == "side_on" and folder == str(model)


@pytest.mark.integration
def test_a_killed_run_leaves_no_partial_outputs_and_a_rerun_completes(ray_local, trained_run, tmp_path, hold_at):
    import signal

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
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    # Killed mid-scoring, decided before it starts: its one actor holds before its second shard (3
    # class folders: 3 shards), the first one's part written (conftest's hold, raycat/shell/faults.py).
    with hold_at("shard=1") as hold:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
        hold.wait(1, 120)
        assert os.listdir(out / ".raycat-predict" / "parts")  # scoring has written
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finals = ["predictions", "metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "most_confused.csv"]
    assert not [f for f in finals if (out / f).exists()]  # nothing under a final name yet
    # Another command into that OUT clears the dead run's parts and writes every output whole.
    assert main(["predict", trained_run["out"], str(images), "--out", str(out), "--tta", "0"]) == 0
    assert sorted(os.listdir(out)) == ["confusion_matrix.csv", "confusion_matrix.png", "metrics.json",
                                       "most_confused.csv", "most_uncertain.csv", "most_uncertain.png",
                                       "predictions", "report.html", "top_losses.csv", "top_losses.png"]
    assert len(predictions(str(out / "predictions"))) == n
    assert json.load(open(out / "metrics.json"))["n_images"] == n


@pytest.mark.integration
def test_a_killed_driver_resumes_scoring_only_what_is_missing_and_ends_as_a_clean_run(ray_local, tmp_path,
                                                                                     hold_at):
    """5,000 images (12 shards); the driver is SIGKILLed once the actor has scored 6 shards (it holds
    before its seventh: decided before the run starts); the same command scores only the rest, and
    its outputs equal an uninterrupted run's."""
    import signal

    import predict_scale
    from results import write_random_model

    from raycat.shell import predict_job, scoring

    model = write_random_model(str(tmp_path / "m"), predict_scale.CLASSES, 32)
    images = str(tmp_path / "images")
    predict_scale.make_images(images, 5000)
    args = lambda out: ["predict", model, images, "--out", out, "--tta", "2", "--batch-size", "128"]  # noqa: E731
    clean = str(tmp_path / "clean")
    assert main(args(clean)) == 0

    out = tmp_path / "resumed"
    done = out / predict_job.RUN_DIR / scoring.DONE
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}

    def scored() -> tuple[int, int]:  # (shards, images scored or skipped) whose summary is written
        names = [f for f in os.listdir(done) if f.endswith(".json") and not f.startswith(".")] if done.exists() else []
        summaries = [json.load(open(done / f)) for f in names]  # (a temporary sibling is hidden)
        # resumed_images counts a shard's images whether scored or skipped (every 100th is unreadable;
        # which shards are done first follows the listing, so some hold unreadable ones)
        return len(names), sum(s["n_scored"] + len(s["skipped"]) for s in summaries)

    with hold_at("shard=6") as hold:
        proc = subprocess.Popen([sys.executable, "-m", "raycat", *args(str(out))], start_new_session=True, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hold.wait(1, 240)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    shards, before = scored()
    assert shards == 6 and not (out / "metrics.json").exists(), (shards, before)

    assert main(args(str(out))) == 0
    m, c = json.load(open(out / "metrics.json")), json.load(open(os.path.join(clean, "metrics.json")))
    assert m["resumed_shards"] == 6 and m["resumed_images"] == before  # only what was missing was scored
    # the actors are up before the first shard's summary, which comes before the end
    assert 0 < c["actors_ready_seconds"] <= c["first_shard_seconds"] <= c["seconds"], c
    timing = {"seconds", "first_shard_seconds", "actors_ready_seconds", "resumed_shards", "resumed_images"}
    assert {k: v for k, v in m.items() if k not in timing} == {k: v for k, v in c.items() if k not in timing}
    a = predictions(str(out / "predictions")).sort_values("path").reset_index(drop=True)
    b = predictions(os.path.join(clean, "predictions")).sort_values("path").reset_index(drop=True)
    assert len(a) == 5000 - 50 and a.equals(b)  # every image once, scored as the clean run scored it
    for name in ("confusion_matrix.csv", "skipped.csv", "top_losses.csv", "most_uncertain.csv"):
        assert open(out / name).read() == open(os.path.join(clean, name)).read(), name
