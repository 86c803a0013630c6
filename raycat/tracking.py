"""Experiment tracking through Ray's own integrations: `--tracking mlflow | tensorboard`.

- mlflow: `ray.air.integrations.mlflow.setup_mlflow` starts a run (in experiment `raycat`, on the
  server or store `MLFLOW_TRACKING_URI` names; a local `file:` store works offline) and logs the
  recipe as its params; every epoch's row is logged as it arrives; the output files, at the end.
  Tune sweeps use Ray's `MLflowLoggerCallback`: a run a trial. Needs `pip install 'raycat[mlflow]'`.
- tensorboard: event files under OUT/tensorboard/ (tensorboardX, which Ray installs), one scalar
  series per column of the epoch table; Tune sweeps get Ray's TBXLoggerCallback's files under
  OUT/tune/.

The driver does the logging: epoch rows reach it through console.Relay, so workers need no
tracking client and no credentials.
"""

from __future__ import annotations

import os
import tempfile
import time

from raycat import storage
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
        local = storage.local_copy(out)
        for name in sorted(os.listdir(local)):
            path = os.path.join(local, name)
            if name.startswith(".") or name in ("checkpoints", "tensorboard"):
                continue  # Ray's checkpoints stay where the run keeps them
            if os.path.isdir(path):
                self.mlflow.log_artifacts(path, artifact_path=name)
            else:
                self.mlflow.log_artifact(path)
        self.mlflow.end_run()


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


def tracker(kind: str, out: str, params: dict, run_name: str) -> Tracker:
    if kind == "mlflow":
        return MLflowTracker(params, run_name)
    if kind == "tensorboard":
        return TensorBoardTracker(out)
    return Tracker()


def tune_callbacks(kind: str) -> list:
    """Ray Tune's own loggers for a sweep: MLflowLoggerCallback (a run a trial) for mlflow; Tune adds
    its TBXLoggerCallback by itself (event files in each trial's folder under OUT/tune/)."""
    if kind != "mlflow":
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"), experiment_name=EXPERIMENT,
                                 save_artifact=False)]
