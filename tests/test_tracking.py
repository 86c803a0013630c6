"""Experiment tracking: TensorBoard event files read back with tensorboardX's own record format
(unit); MLflow runs read back with MLflow's client from a local sqlite store: none for a bad input,
an S3 OUT's outputs logged without its checkpoints (the real S3 server), a real `raycat train
--tracking mlflow` from a labels CSV with --valid-pct into the README's own offline store, and one
that fails after its run started; Tune's TensorBoard files only when asked (integration)."""

import glob
import os
import re
import struct
import tempfile

import pytest

from raycat.edge import storage
from raycat.shell import tracking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """One sqlite store for this module's tests (a new one spends seconds creating its tables);
    each test tells its own runs apart from the others'. Its experiment keeps the artifacts beside
    it (by default they would go to ./mlruns of whatever folder the tests run in)."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    store = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.tracking.MlflowClient(store).create_experiment(tracking.EXPERIMENT, artifact_location=str(root / "mlruns"))
    return store


def mlflow_runs(store: str) -> dict:
    """Every run in an MLflow store, in any experiment, by id."""
    import mlflow

    client = mlflow.tracking.MlflowClient(store)
    return {r.info.run_id: r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}


def test_a_bad_input_exits_2_and_leaves_no_mlflow_run(mlflow_store, tmp_path, monkeypatch):
    from raycat.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    before = mlflow_runs(mlflow_store)
    (tmp_path / "data" / "valid" / "cat").mkdir(parents=True)  # no train/
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--tracking", "mlflow"]) == 2
    assert mlflow_runs(mlflow_store).keys() == before.keys()


@pytest.mark.integration
def test_an_s3_out_s_outputs_are_logged_without_fetching_its_checkpoints(mlflow_store, s3_outage, bucket, tmp_path,
                                                                         monkeypatch):
    import mlflow

    out = f"s3://{bucket}/tracked"
    files = {"metrics.json": b'{"valid_accuracy": 0.9}', "history.csv": b"stage,epoch\n", "model/weights.pt": b"w",
             "model/model.json": b"{}", "checkpoints/train/checkpoint_0/recipe_state.pt": b"c" * 4096,
             "tensorboard/events.out.tfevents.1.host": b"e"}
    for name, data in files.items():
        storage.write_bytes(f"{out}/{name}", data)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    scratch = tmp_path / "scratch"  # where the fetched copies go, to see that they are gone after
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    t = tracking.tracker("mlflow", out, {"arch": "resnet18"}, "tracked")
    refused = s3_outage.refused  # counted over the session: earlier tests' outages are in it
    s3_outage.down_at(b"/checkpoints/")  # the store goes away at the first request for a checkpoint
    t.finish(out)
    assert s3_outage.is_up and s3_outage.refused == refused  # nothing asked for one
    assert [n for n in os.listdir(scratch) if n.startswith("raycat")] == []

    client = mlflow.tracking.MlflowClient(mlflow_store)
    assert client.get_run(t.run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(t.run_id)} == {"metrics.json", "history.csv", "model"}
    assert {a.path for a in client.list_artifacts(t.run_id, "model")} == {"model/weights.pt", "model/model.json"}
    got = client.download_artifacts(t.run_id, "metrics.json", str(tmp_path))
    assert open(got, "rb").read() == files["metrics.json"]


def test_an_uninstalled_tracker_is_a_usage_error_naming_the_flag(monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "mlflow" else real(name, *a, **k))
    with pytest.raises(tracking.ConfigError, match="--tracking mlflow: mlflow is not installed"):
        tracking.require("mlflow")


def readme_offline_store() -> str:
    """The offline MLflow store the README's --tracking bullet tells users to set, as written."""
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.search(r"`MLFLOW_TRACKING_URI=(sqlite:[^`]+)`", f.read()).group(1)


@pytest.mark.integration
def test_train_from_a_labels_csv_logs_params_every_epoch_and_outputs_to_the_readme_s_mlflow_store(
        ray_local, tmp_path, monkeypatch, capsys):
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
    # The README's store, from the folder the command runs in, with nothing else set: what the
    # extra installs must be enough.
    store = readme_offline_store()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    args = [str(data), "--labels", str(tmp_path / "labels.csv"), "--valid-pct", "0.25"]
    assert main(["check", *args, "--size", "32"]) == 0
    report = capsys.readouterr().out
    assert "1 folder(s) or labels-file row(s) could not be used" in report and "missing.jpg" in report
    out = tmp_path / "out"
    assert main(["train", *args, "--out", str(out), "--tracking", "mlflow", "--arch", "resnet18", "--weights", "none",
                 "--size", "32", "--batch-size", "8", "--unfrozen-cycles", "2", "--cycle-mult", "1",
                 "--tta", "0", "--lr", "0.01"]) == 0
    m = json.load(open(out / "metrics.json"))
    assert m["n_train"] == 30 and m["n_valid"] == 10 and m["n_skipped"] == 1  # 25% of 20 a class; the bad row

    client = mlflow.tracking.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    # where the README says: the runs in ./mlflow.db, their artifacts under ./mlruns/
    assert (tmp_path / "mlflow.db").exists() and str(tmp_path / "mlruns") in run.info.artifact_uri
    assert run.data.params["arch"] == "resnet18" and run.data.params["weights"] == "none"
    history = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [h.step for h in history] == [0, 1]  # every epoch, as it ended
    assert run.data.metrics["final_valid_accuracy"] == pytest.approx(m["valid_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "history.csv", "model", "skipped.csv"} <= artifacts


@pytest.mark.integration
def test_a_fit_that_fails_after_its_mlflow_run_started_ends_it_failed(ray_local, mlflow_store, s3_outage, bucket,
                                                                      tmp_path, monkeypatch):
    """An S3 OUT whose store goes away as Ray Train sets the run up (at the marker it writes to
    check the storage), after raycat's checks passed and the MLflow run started: fit fails, exit 1,
    and the run ends FAILED, not left RUNNING for ever."""
    from raycat.cli import main
    from raycat.datasets import make_shapes_dataset

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    before = mlflow_runs(mlflow_store)
    data = make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square"), n_train=2, n_valid=1, seed=0,
                               easy=True, clutter=False)
    s3_outage.down_at(b".validate_storage_marker")
    assert main(["train", data, "--out", f"s3://{bucket}/fails", "--tracking", "mlflow", "--arch", "resnet18",
                 "--weights", "none", "--size", "16", "--tta", "0"]) == 1
    assert not s3_outage.is_up  # it met the outage, where it was meant to
    [run] = [r for i, r in mlflow_runs(mlflow_store).items() if i not in before]
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.params["arch"] == "resnet18"


@pytest.mark.integration
def test_epochs_are_numbered_by_their_index_in_the_run_s_history(ray_local):
    """Each epoch comes with its index in the history, the step a tracker logs it at, so a resumed
    run's series go on from the earlier run's instead of starting again at 0. A group that starts
    from a checkpoint tells its epochs again, flagged so: a resumed command's tracker gets them (the
    killed driver may have died before their rows reached it), but only once per command, and they
    don't count as the epochs the group trained. A row reaches the tracker once its checkpoint is
    kept: an epoch trained again after a lost node is logged once, with the values the run kept."""
    import io

    from raycat.shell import console

    seen = []
    relay = console.Relay(out=io.StringIO(), on_epoch=lambda row, i: seen.append((row["loss"], i)))
    _, _, epoch_row = console.sender(relay.queue)
    kept = lambda n: relay.queue.put(("kept", n))  # noqa: E731 - what GroupWatch sends as Ray Train keeps one
    relay.queue.put(("group", {"workers": 2, "reason": "start", "at": 0.0}))
    for i in range(3):  # the command resumed a run whose checkpoint holds 3 epochs
        epoch_row(i, {"loss": i}, True)
    epoch_row(3, {"loss": 3})
    kept(4)
    epoch_row(4, {"loss": 4})  # its row is out; its checkpoint is not kept when the node is lost
    relay.queue.put(("group", {"workers": 1, "reason": "a node was lost", "at": 1.0}))
    for i in range(4):  # the next group starts from the checkpoint of 4 epochs ...
        epoch_row(i, {"loss": i}, True)
    epoch_row(4, {"loss": 4.5})  # ... and trains epoch 5 again, to other values
    kept(5)
    epoch_row(5, {"loss": 5})  # a last row, then the kept note overtaken by nothing: held until kept
    kept(6)
    relay.close()
    # Each step once, with the value of the epoch the run kept
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 3), (4.5, 4), (5, 5)]
    assert [g["from_epoch"] for g in relay.groups] == [3, 4]
    # close() wakes the relay's thread (its get waits up to 30 s for a line) behind what is queued
    assert not relay._thread.is_alive()


@pytest.mark.integration
def test_a_sweep_writes_tensorboard_files_with_tensorboard_tracking_and_none_without(ray_local, tmp_path):
    """Tune's loggers as `raycat tune` passes them (tracking.tune_callbacks), on a one-trial sweep
    of a function that reports once: event files in the trial's folder only when asked for."""
    from ray import tune

    def trainable(config):
        tune.report({"valid_loss": config["x"]})

    from raycat.shell.tune_job import _keep_credentials_out_of_runtime_envs

    _keep_credentials_out_of_runtime_envs()  # as `raycat tune` does: the canary tests scan Ray's logs
    for kind in ("tensorboard", "none"):
        tune.Tuner(trainable, param_space={"x": 0.25},
                   run_config=tune.RunConfig(name=kind, storage_path=str(tmp_path), verbose=0,
                                             callbacks=tracking.tune_callbacks(kind))).fit()
    assert scalars(str(tmp_path / "tensorboard"))["ray/tune/valid_loss"] == [(1, 0.25)]
    assert glob.glob(str(tmp_path / "none" / "**" / "events.out.tfevents.*"), recursive=True) == []
    assert glob.glob(str(tmp_path / "none" / "*" / "result.json"))  # the trial ran and Tune's other loggers wrote


def test_a_tracker_that_fails_after_the_outputs_are_written_warns_and_the_run_stays_finished(tmp_path, capsys):
    """Tracking comes after the outputs and the note that the run finished, and is best-effort: it
    used to raise out of `raycat train` (exit 1 with whole outputs, and a job retry then found the
    run finished, deleted its checkpoints and trained again)."""
    import json
    import time

    import torch
    from test_recipe import recipe, setup

    from raycat.config import TrainConfig
    from raycat.core.comm import LocalComm
    from raycat.core.recipe import SWEEP_UNLESS_LR, run
    from raycat.shell import train_job, train_outputs
    from raycat.shell.train_worker import WorkerResult

    r = recipe(unfrozen_cycles=1, precompute_epochs=0, head_cycles=0, tta=0)
    model, data = setup()
    state = run(r, model, data, LocalComm(), torch.device("cpu"), log=lambda s: None, sweeps=SWEEP_UNLESS_LR)
    cfg = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "out"), recipe=r)
    now = time.time()
    fitted = train_job.FitResult(
        result=WorkerResult(state=state, worker_nodes=["node"], skipped=[], n_train=24, n_valid=8, grids={}),
        classes=["a", "b"], cache=True, cpus_per_worker=1, split="0123", stepping={}, weights_from="no weights",
        started_at=now, ray_up_at=now, groups=[], batch_size=8)
    ended = []

    class TrackerDown(tracking.Tracker):
        def log_metrics(self, metrics):
            raise ConnectionError("the tracking server went away")

        def fail(self):
            ended.append("FAILED")

    metrics = train_outputs.finish_run(cfg, fitted, TrackerDown())
    assert json.load(open(tmp_path / "out" / "metrics.json"))["valid_accuracy"] == metrics["valid_accuracy"]
    marker = json.load(open(tmp_path / "out" / "checkpoints" / "train" / "raycat_run.json"))
    assert marker["finished"] is True
    err = capsys.readouterr().err
    assert "warning: the run finished" in err and "the tracking server went away" in err and ended == ["FAILED"]
