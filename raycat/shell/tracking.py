"""Experiment tracking through Ray's own integrations: `--tracking mlflow | tensorboard`.

- mlflow: `ray.air.integrations.mlflow.setup_mlflow` starts a run (in experiment `raycat`, on the
  server or store `MLFLOW_TRACKING_URI` names; offline, a local `sqlite:` store, which the extra's
  SQLAlchemy serves) once the inputs are checked, and logs the recipe as its params; every epoch's
  row is logged as it arrives; the output files, at the end. A command that fails after the run
  started ends it FAILED. Tune sweeps use Ray's `MLflowLoggerCallback`: a run a trial. Needs
  `pip install 'raycat[mlflow]'`.
- tensorboard: event files under OUT/tensorboard/ (tensorboardX, which Ray installs), one scalar
  series per column of the epoch table, stepped by the epoch's index in the run's history (a
  resumed command logs its checkpoint's epochs again, at the same steps, then goes on). Tune
  sweeps get Ray's TBXLoggerCallback's files under OUT/tune/<trial>/ with `--tracking
  tensorboard`, and none otherwise.

The driver does the logging: epoch rows reach it through console.Relay, so workers need no
tracking client and no credentials.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from raycat.edge import storage
from raycat.errors import ConfigError

EXPERIMENT = "raycat"
SCALARS = ("train_loss", "valid_loss", "accuracy", "lr", "seconds", "valid_seconds")


def require(kind: str) -> None:
    """Fail before any work if the chosen tracker can't be used (exit 2, naming the flag)."""
    if kind == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("--tracking mlflow: mlflow is not installed; pip install 'raycat[mlflow]'") from None
    elif kind == "tensorboard":
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ConfigError("--tracking tensorboard: tensorboardX is not installed (Ray installs it with "
                              "ray[tune]); pip install tensorboardX") from None


class Tracker:
    """No tracking: the interface the others keep."""

    def log_epoch(self, row: dict, step: int) -> None:
        pass

    def log_metrics(self, metrics: dict) -> None:
        pass

    def finish(self, out: str) -> None:
        pass

    def fail(self) -> None:
        """The command failed after the tracker started."""


# OUT's folders that are not logged: Ray's checkpoints stay where the run keeps them (and are
# several copies of the weights); the event files are TensorBoard's.
NOT_LOGGED = ("checkpoints", "tensorboard")


class MLflowTracker(Tracker):
    def __init__(self, params: dict, run_name: str):
        from ray.air.integrations.mlflow import setup_mlflow

        self.mlflow = setup_mlflow(config=params, experiment_name=EXPERIMENT, create_experiment_if_not_exists=True,
                                   run_name=run_name, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
        # Epoch rows arrive on the console's thread, and MLflow's active run is per thread (there,
        # the fluent API would start a second run): they go to this run by id, through a client.
        self.run_id = self.mlflow.active_run().info.run_id
        self.client = self.mlflow.tracking.MlflowClient()

    def log_epoch(self, row: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(row[k]), now, step) for k in SCALARS
                                                    if row.get(k) is not None])

    def log_metrics(self, metrics: dict) -> None:
        # "final_": the run's final figures (the best epoch's), apart from the per-epoch series.
        self.mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))
                                 and not isinstance(v, bool)})

    def finish(self, out: str) -> None:
        # Entry by entry, so that an S3 OUT's checkpoints are never fetched; what is fetched goes
        # to a folder removed once MLflow has its copy (a local OUT's files are logged in place).
        with tempfile.TemporaryDirectory(prefix="raycat-mlflow-") as tmp:
            for name in storage.list_dir(out):
                uri = storage.join(out, name)
                if name.startswith(".") or name in NOT_LOGGED:
                    continue
                if storage.is_dir(uri):
                    self.mlflow.log_artifacts(storage.local_copy(uri, os.path.join(tmp, name)), artifact_path=name)
                else:
                    self.mlflow.log_artifact(storage.local_copy(uri, tmp))
        self.mlflow.end_run()

    def fail(self) -> None:
        self.mlflow.end_run(status="FAILED")


class TensorBoardTracker(Tracker):
    def __init__(self, out: str):
        from tensorboardX import SummaryWriter

        self.out = out
        # S3 has no appendable files: write locally, upload whole at the end.
        self.local = os.path.join(storage.absolute(out), "tensorboard") if not storage.is_s3(out) else \
            tempfile.mkdtemp(prefix="raycat-tb-")
        self.writer = SummaryWriter(logdir=self.local)

    def log_epoch(self, row: dict, step: int) -> None:
        for k in SCALARS:
            if row.get(k) is not None:
                self.writer.add_scalar(f"{row['stage']}/{k}" if k in ("lr",) else k, float(row[k]), global_step=step)
        self.writer.flush()

    def log_metrics(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"final/{k}", float(v), global_step=0)

    def finish(self, out: str) -> None:
        self.writer.close()
        if storage.is_s3(out):
            storage.upload_tree(self.local, storage.join(out, "tensorboard"))

    def fail(self) -> None:
        # The epochs it saw are worth keeping: a resumed run's series goes on from them.
        self.finish(self.out)


def tracker(kind: str, out: str, params: dict, run_name: str) -> Tracker:
    if kind == "mlflow":
        return MLflowTracker(params, run_name)
    if kind == "tensorboard":
        return TensorBoardTracker(out)
    return Tracker()


def fail(t: Tracker) -> None:
    """End a started tracker's run as failed, never hiding the error that ended the command behind
    one of the tracker's own."""
    try:
        t.fail()
    except Exception as e:  # noqa: BLE001 - the command's own error is the one to report
        print(f"warning: could not end the tracked run as failed: {e}", file=sys.stderr)


def finish_best_effort(t: Tracker, metrics: dict, out: str) -> None:
    """Log the final metrics and the outputs of a run that finished; a failure here is a warning
    (the outputs are whole and the run is marked finished), and the tracked run is ended FAILED
    rather than left RUNNING."""
    try:
        t.log_metrics(metrics)
        t.finish(out)
    except Exception as e:  # noqa: BLE001 - whatever the tracker raises, the run itself succeeded
        print(f"warning: the run finished and its outputs are in {out}, but the tracker could not log them "
              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); the tracked run is ended "
              "as failed", file=sys.stderr)
        fail(t)


def tune_callbacks(kind: str) -> list:
    """Ray Tune's own loggers for a sweep: MLflowLoggerCallback (a run a trial) for mlflow,
    TBXLoggerCallback (event files in each trial's folder under OUT/tune/) for tensorboard.

    Tune adds a TBXLoggerCallback by itself unless one is passed: so that the other kinds write no
    event files, they pass one that logs nothing."""
    from ray.tune.logger import TBXLoggerCallback

    if kind == "tensorboard":
        return [TBXLoggerCallback()]
    callbacks = []
    if kind == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                                              experiment_name=EXPERIMENT, save_artifact=False))

    class NoTensorBoard(TBXLoggerCallback):
        """Counts as the sweep's TensorBoard logger, so Tune adds none; logs nothing."""

        def log_trial_start(self, trial) -> None:
            pass

        def log_trial_result(self, iteration, trial, result) -> None:
            pass

        def log_trial_end(self, trial, failed: bool = False) -> None:
            pass

    try:
        callbacks.append(NoTensorBoard())
    except ImportError:  # no tensorboardX: Tune can't add its own either
        pass
    return callbacks
