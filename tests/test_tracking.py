"""Experiment tracking: TensorBoard event files read back with tensorboardX's own record format
(unit), and a real `raycat train --tracking mlflow` from a labels CSV with --valid-pct, read back
with MLflow's client from a local file store (integration)."""

import glob
import os
import struct

import pytest

from raycat import tracking


def scalars(logdir):
    """{tag: [(step, value)]} from TensorBoard event files (TFRecords of Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        with open(path, "rb") as f:
            while header := f.read(8):
                (n,) = struct.unpack("<Q", header)
                f.read(4)
                ev = Event.FromString(f.read(n))
                f.read(4)
                for v in ev.summary.value if ev.HasField("summary") else []:
                    out.setdefault(v.tag, []).append((ev.step, round(v.simple_value, 5)))
    return out


def test_tensorboard_gets_every_epoch_s_row_as_it_arrives(tmp_path):
    t = tracking.tracker("tensorboard", str(tmp_path), {}, "run")
    rows = [{"stage": "unfrozen", "epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "valid_loss": 2.0 / e,
             "accuracy": 0.5 + e / 10, "seconds": 3.0, "valid_seconds": 1.0} for e in (1, 2, 3)]
    for i, row in enumerate(rows):
        t.log_epoch(row, i)
    t.log_metrics({"valid_accuracy": 0.8, "classes": ["a"]})
    t.finish(str(tmp_path))
    got = scalars(str(tmp_path / "tensorboard"))
    assert got["valid_loss"] == [(0, 2.0), (1, 1.0), (2, 0.66667)]
    assert [v for _, v in got["accuracy"]] == [0.6, 0.7, 0.8] and got["final/valid_accuracy"] == [(0, 0.8)]


def test_an_uninstalled_tracker_is_a_usage_error_naming_the_flag(monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "mlflow" else real(name, *a, **k))
    with pytest.raises(tracking.ConfigError, match="--tracking mlflow: mlflow is not installed"):
        tracking.require("mlflow")


@pytest.mark.integration
def test_train_from_a_labels_csv_logs_params_every_epoch_and_outputs_to_mlflow(ray_local, tmp_path, monkeypatch,
                                                                               capsys):
    import json

    import mlflow

    from raycat.cli import main
    from raycat.datasets import make_shapes_dataset

    # A Kaggle-style set: one folder of images, a labels.csv, no split: --valid-pct makes one.
    shapes = make_shapes_dataset(str(tmp_path / "shapes"), classes=("circle", "square"), n_train=20, n_valid=1,
                                 seed=0, easy=True, clutter=False)
    data = tmp_path / "kaggle"
    rows = ["fname,label"]
    for c in ("circle", "square"):
        for f in sorted(os.listdir(os.path.join(shapes, "train", c))):
            os.makedirs(data, exist_ok=True)
            os.replace(os.path.join(shapes, "train", c, f), data / f)
            rows.append(f"{f},{c}")
    rows.append("missing.jpg,circle")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    args = [str(data), "--labels", str(tmp_path / "labels.csv"), "--valid-pct", "0.25"]
    assert main(["check", *args, "--size", "32"]) == 0
    report = capsys.readouterr().out
    assert "1 row(s) of the labels file could not be used" in report and "missing.jpg" in report
    out = tmp_path / "out"
    assert main(["train", *args, "--out", str(out), "--tracking", "mlflow", "--arch", "resnet18", "--weights", "none",
                 "--size", "32", "--batch-size", "8", "--unfrozen-cycles", "2", "--cycle-mult", "1",
                 "--tta", "0"]) == 0
    m = json.load(open(out / "metrics.json"))
    assert m["n_train"] == 30 and m["n_valid"] == 10 and m["n_skipped"] == 1  # 25% of 20 a class; the bad row

    client = mlflow.tracking.MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])[0]
    assert run.data.params["arch"] == "resnet18" and run.data.params["weights"] == "none"
    history = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [h.step for h in history] == [0, 1]  # every epoch, as it ended
    assert run.data.metrics["final_valid_accuracy"] == pytest.approx(m["valid_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "history.csv", "model", "skipped.csv"} <= artifacts
