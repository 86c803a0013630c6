"""Integration: a real two-node Ray cluster on this machine (`ray start --head` plus a second
`ray start --address` node with its own resources, both on loopback, token auth on), jobs submitted
through the Jobs API with `raycat submit`, storage on the S3 server."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3
import pytest

from raycat import storage
from raycat.cli import main
from raycat.datasets import make_shapes_dataset

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def kill_cluster(temp_dir):
    # Only this cluster's processes: every one of them has its temp dir on its command line. (`ray stop`
    # would also stop the test session's own Ray instance.)
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)


@pytest.fixture(scope="module")
def cluster(s3_server):
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths have a length limit
    p = free_ports(12)
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    common = ["--temp-dir", temp_dir, "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--num-cpus=3"]
    head = [RAY, "start", "--head", f"--port={p[0]}", f"--dashboard-port={p[1]}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--ray-client-server-port={p[2]}", f"--dashboard-agent-listen-port={p[3]}",
            f"--dashboard-agent-grpc-port={p[4]}", f"--metrics-export-port={p[5]}", f"--runtime-env-agent-port={p[6]}",
            *common]
    second = [RAY, "start", f"--address=127.0.0.1:{p[0]}", '--resources={"second_node": 1}',
              f"--dashboard-agent-listen-port={p[7]}", f"--dashboard-agent-grpc-port={p[8]}",
              f"--metrics-export-port={p[9]}", f"--runtime-env-agent-port={p[10]}", *common]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(second, env=env, check=True, capture_output=True, timeout=120)
        yield {"dashboard": f"http://127.0.0.1:{p[1]}", "gcs": f"127.0.0.1:{p[0]}"}
    finally:
        kill_cluster(temp_dir)


def submit(cluster, monkeypatch, job, *args):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    deadline = time.time() + 90
    while True:  # the head's job agent needs a few seconds after `ray start`
        try:
            return main(["submit", "--address", cluster["dashboard"], "--working-dir", ROOT, "--python",
                         sys.executable, job, *args])
        except SystemExit:
            raise
        except Exception:  # noqa: BLE001
            if time.time() > deadline:
                raise
            time.sleep(3)


def test_train_then_predict_jobs_on_two_nodes_with_s3(cluster, bucket, tmp_path, monkeypatch, capsys):
    local = make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square", "triangle"), n_train=20,
                                n_valid=6, seed=0, easy=True, clutter=False)
    data = f"s3://{bucket}/cluster/data"
    storage.upload_tree(local, data)
    out = f"s3://{bucket}/cluster/train"
    rc = submit(cluster, monkeypatch, "train", data, "--out", out, "--workers", "2", "--placement", "SPREAD",
                "--arch", "resnet18", "--weights", "none", "--size", "32", "--batch-size", "8",
                "--precompute-epochs", "0", "--head-cycles", "1", "--unfrozen-cycles", "1", "--tta", "0")
    logs = capsys.readouterr().out
    assert rc == 0, logs[-3000:]
    s3 = boto3.client("s3")
    metrics = json.loads(s3.get_object(Bucket=bucket, Key="cluster/train/metrics.json")["Body"].read())
    assert metrics["workers"] == 2 and len(set(metrics["worker_nodes"])) == 2  # Train workers on both nodes
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="cluster/train/")["Contents"]}
    assert {"cluster/train/model/weights.pt", "cluster/train/history.csv"} <= keys

    pred = f"s3://{bucket}/cluster/pred"
    rc = submit(cluster, monkeypatch, "predict", out, f"{data}/valid", "--out", pred, "--tta", "1", "--workers", "2")
    assert rc == 0, capsys.readouterr().out[-3000:]
    m = json.loads(s3.get_object(Bucket=bucket, Key="cluster/pred/metrics.json")["Body"].read())
    assert m["n_images"] == 18 and m["n_skipped"] == 0


def test_a_failing_job_returns_its_exit_status(cluster, monkeypatch, tmp_path):
    assert submit(cluster, monkeypatch, "train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")) == 2
