"""Integration: a real two-node Ray cluster on this machine (`ray start --head` plus a second
`ray start --address` node with its own resources, both on loopback, token auth on), jobs submitted
through the Jobs API with `raycat submit`, storage on the S3 server."""

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from raycat.datasets import make_shapes_dataset
from raycat.edge import storage

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


def start_cluster(temp_dir):
    p = free_ports(12)
    # Ray Train looks for room to grow an elastic group every 2 s (the nodes' env reaches the jobs'
    # drivers and the workers). The fault-injection points (raycat/shell/faults.py) are named here, before
    # any job runs: a Train group holds after the checkpoints of epochs LOSS_EPOCH and HOLD_EPOCH, a scoring actor
    # before its second shard, each only while the hold file exists (a test makes it before it
    # submits the job), and each writes a marker the test waits for.
    # A start at the old size that waits for the lost node gives up after 10 s here (raycat's 30 s
    # is for real clusters; a retry costs nothing).
    # The GCS asks each node every second and declares it dead after 5 failed checks in a row: a
    # killed raylet fails each at once (about 5 s to notice the loss), while a raylet that is alive
    # but slow on a busy machine has 5 s to answer each, about 30 s in all (with 1 s to answer, a
    # returning node was declared dead while it started, on a machine whose other core was busy).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAYCAT_RESIZE_INTERVAL_S": "2",
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10", "RAYCAT_TESTING_HOLD_FILE": os.path.join(temp_dir, "hold"),
           "RAYCAT_TESTING_HOLD_AT_EPOCH": f"{LOSS_EPOCH},{HOLD_EPOCH}", "RAYCAT_TESTING_HOLD_AT_SHARD": "1",
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
           "RAY_health_check_timeout_ms": "5000",
           # Two workers of 2 threads share these 2 cores: OpenMP's spinning waits made their epochs
           # 7x those of 1-thread workers; sleeping waits halve that.
           "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("RAY_ADDRESS", None)
    common = ["--temp-dir", temp_dir, "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--num-cpus=3"]
    head = [RAY, "start", "--head", f"--port={p[0]}", f"--dashboard-port={p[1]}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--ray-client-server-port={p[2]}", f"--dashboard-agent-listen-port={p[3]}",
            f"--dashboard-agent-grpc-port={p[4]}", f"--metrics-export-port={p[5]}", f"--runtime-env-agent-port={p[6]}",
            *common]
    second = [RAY, "start", f"--address=127.0.0.1:{p[0]}", '--resources={"second_node": 1}',
              f"--dashboard-agent-listen-port={p[7]}", f"--dashboard-agent-grpc-port={p[8]}",
              f"--metrics-export-port={p[9]}", f"--runtime-env-agent-port={p[10]}", *common]
    for cmd in (head, second):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    # The second node's raylet alone has this port on its command line: the node to lose.
    return {"dashboard": f"http://127.0.0.1:{p[1]}", "gcs": f"127.0.0.1:{p[0]}", "second": second, "env": env,
            "second_raylet": f"raylet.*runtime_env_agent_port={p[10]}", "hold": env["RAYCAT_TESTING_HOLD_FILE"]}


@pytest.fixture(scope="module")
def cluster(s3_server):
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        for attempt in range(3):
            # Ports picked free can be taken by another process before Ray binds them: try others.
            try:
                info = start_cluster(temp_dir)
                break
            except RuntimeError:
                kill_cluster(temp_dir)
                if attempt == 2:
                    raise
        yield info
    finally:
        kill_cluster(temp_dir)


def test_a_failing_job_returns_its_exit_status_and_a_lost_answer_does_not_submit_it_twice(cluster, tmp_path):
    """The dashboard takes the job, then the connection is reset before its answer comes back (the
    answer is lost on the way): submit tries again with the same submission id, the cluster refuses
    a second job under it, and submit follows the one job to its exit status."""
    from tcp_proxy import TcpProxy

    port = int(cluster["dashboard"].rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    try:
        proxy.down_at(b"POST /api/jobs/", seconds=1.0, deliver=True)
        # In its own process, as a user runs it: Ray reads RAY_AUTH_MODE once per process, and this
        # test process may have touched Ray's auth before (with token auth off).
        run = Driver(cluster, "submit", "--address", proxy.url, "--working-dir", ROOT, "--python",
                     sys.executable, "train", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
        assert run.finish(180) == 2, run.text()[-3000:]
        assert "not answering yet" in run.text(), run.text()[-3000:]  # the first try's answer was lost
    finally:
        proxy.close()
    # Jobs listed from a process of their own, with the cluster's token (as above)
    listing = subprocess.run([sys.executable, "-c", "import json, sys; from ray.job_submission import "
                              "JobSubmissionClient as C; print(json.dumps([j.entrypoint for j in "
                              f"C({cluster['dashboard']!r}).list_jobs()]))"],
                             env=cluster["env"], capture_output=True, text=True, timeout=120)
    entrypoints = json.loads(listing.stdout.strip().splitlines()[-1])
    assert sum(str(tmp_path / "missing") in e for e in entrypoints) == 1, entrypoints


# ---- elastic training: a node lost and found during a run ------------------------------------------

class Driver:
    """A `raycat` command in its own process (`train --address` joining the cluster, or `submit`
    following a job's logs); its console read line by line as it comes."""

    def __init__(self, cluster, *args):
        env = {**cluster["env"], "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "raycat", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern, timeout, after=float("-inf")):
        """(when, line) of the first line matching `pattern` printed after `after` (a monotonic
        time), waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, line in list(self.lines):
                if when > after and re.search(pattern, line):
                    return when, line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.5)
        raise AssertionError(f"no line matching {pattern!r} in {timeout}s:\n" + self.text()[-4000:])

    def finish(self, timeout):
        """The exit status; a command still running after `timeout` is killed, and the test fails
        showing what it printed."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self._reader.join(timeout=5)
            raise AssertionError(f"still running after {timeout}s:\n" + self.text()[-4000:]) from None
        self._reader.join(timeout=5)
        return rc

    def text(self):  # without the raylet state dumps Ray prints when a node dies
        return "\n".join(line for _, line in self.lines if "[state-dump]" not in line)


def lose_second_node(cluster):
    subprocess.run(["pkill", "-9", "-f", cluster["second_raylet"]], check=False)


def second_node_back(cluster):
    if subprocess.run(["pgrep", "-f", cluster["second_raylet"]], capture_output=True).returncode != 0:
        subprocess.run(cluster["second"], env=cluster["env"], check=True, capture_output=True, timeout=120)


@pytest.fixture
def elastic_data(tmp_path):
    return make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square", "triangle"), n_train=60,
                               n_valid=16, seed=0, easy=True, clutter=False)


# 2 CPUs a worker: each node (3 CPUs) holds one, so losing the second node leaves room for one.
# resnet10t (timm, 4.9M parameters): half of resnet18's gradients to reduce and checkpoints to
# write to the S3 server each epoch, and it learns these shapes as well. flip_shift: side_on's
# rotations and zooms at 32 px left the kept epoch anywhere between 0.83 and 0.98.
RUN = ["--cpus-per-worker", "2", "--arch", "resnet10t", "--weights", "none", "--size", "32", "--batch-size", "8",
       "--lr", "0.02", "--aug", "flip_shift", "--patience", "99", "--tta", "0", "--cache", "memory",
       "--no-until-overfit"]  # every epoch of the schedule, whatever the valid loss does
# Five one-epoch SGDR cycles. Every step is decided before the job starts, whatever the speed of an
# epoch: the two-worker group holds after epoch LOSS_EPOCH's checkpoint and the node is lost there;
# the one-worker group trains on from that checkpoint and holds after epoch HOLD_EPOCH's until the
# node is back and Ray Train has grown the group; the grown group trains the rest (these easy
# shapes are learnt in about 3 epochs).
ELASTIC_CYCLES, EPOCHS, LOSS_EPOCH, HOLD_EPOCH = 5, 5, 2, 3


@pytest.fixture
def hold(cluster):
    """The cluster's hold (raycat/shell/faults.py), made before the job starts (conftest.Hold)."""
    from conftest import Hold

    with Hold(cluster["hold"]) as h:
        yield h


def test_an_elastic_train_job_on_s3_rides_out_a_lost_node_and_its_model_scores_as_a_predict_job(
        cluster, elastic_data, bucket, hold):
    """`jobs/train.py --workers 1-2` submitted through the Jobs API, DATA and OUT on the S3 server,
    its two workers on the two nodes; the second node is killed mid-stage, started again; then
    `jobs/predict.py` scores the valid set with the model the run wrote."""
    data, out = f"s3://{bucket}/cluster/data", f"s3://{bucket}/cluster/train"
    storage.upload_tree(elastic_data, data)
    run = Driver(cluster, "submit", "--address", cluster["dashboard"], "--working-dir", ROOT, "--python",
                 sys.executable, "train", data, "--out", out, "--workers", "1-2", "--placement", "SPREAD",
                 "--unfrozen-cycles", str(ELASTIC_CYCLES), "--cycle-mult", "1", *RUN)
    try:
        [held] = hold.wait(1, 240)  # the two-worker group, its epoch LOSS_EPOCH kept
        assert (held["workers"], held["count"]) == (2, LOSS_EPOCH), held
        lose_second_node(cluster)
        lost_at = time.monotonic()
        shrunk, _ = run.wait_for(r"resized: 2 -> 1 workers, node lost", 120)
        assert shrunk - lost_at <= 90, f"{shrunk - lost_at:.0f}s"  # Ray's node-death detection, then a restart
        # The one-worker group goes on by itself, trains epoch HOLD_EPOCH and holds there, its checkpoint
        # kept, so the grow comes after an epoch of its own.
        held = [m for m in hold.wait(2, 240) if m["count"] == HOLD_EPOCH]
        assert [m["workers"] for m in held] == [1], held
        second_node_back(cluster)
        grown, _ = run.wait_for(r"resized: 1 -> 2 workers", 150)
        hold.release()
        rc = run.finish(300)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        hold.release()
        second_node_back(cluster)
    assert rc == 0, run.text()[-3000:]
    read = lambda name: storage.read_bytes(f"{out}/{name}").decode()  # noqa: E731
    # Went on with the one worker that fits, without waiting for the node: epochs ended between.
    assert [w for w, line in run.lines if shrunk < w < grown and re.match(r"^unfrozen\s+\d", line)], run.text()
    metrics = json.loads(read("metrics.json"))
    assert metrics["workers"] == 2 and len(set(metrics["worker_nodes"])) == 2  # the last group: both nodes
    groups = metrics["worker_groups"]
    assert [g["workers"] for g in groups] == [2, 1, 2], groups
    assert groups[1]["reason"] == "node lost" and groups[2]["reason"] == "room for more workers"
    # (0-based: the index of the first epoch each group trained)
    assert (groups[1]["from_epoch"], groups[2]["from_epoch"]) == (LOSS_EPOCH, HOLD_EPOCH), groups
    history = list(csv.DictReader(io.StringIO(read("history.csv"))))
    assert [int(r["epoch"]) for r in history] == list(range(1, EPOCHS + 1))  # each epoch once, none skipped
    # The recipe did not notice: the global batch, the steps per epoch and the rate at every step
    # are those of a run that never resized (the schedule of an unresized 2-worker run).
    from raycat.config import steps_per_epoch
    from raycat.core.schedules import sgdr_lr

    steps = list(csv.DictReader(io.StringIO(read("steps.csv"))))
    per_epoch = steps_per_epoch(metrics["n_train"], 2, 8)
    assert [int(r["step"]) for r in steps] == list(range(EPOCHS * per_epoch))
    expected = [sgdr_lr(0.02, i, per_epoch, 1, 1) for i in range(EPOCHS * per_epoch)]
    assert [float(r["lr_head"]) for r in steps] == pytest.approx(expected, rel=1e-6)
    # Within noise of an uninterrupted run: the same flags on one node, never resized, were at
    # 0.92-0.98 from epoch 3 and kept 0.98 (2026-12-06, Xeon); 48 valid images, so one
    # miss is 0.02.
    assert metrics["valid_accuracy"] >= 0.9, metrics

    pred = f"s3://{bucket}/cluster/pred"
    scoring = Driver(cluster, "submit", "--address", cluster["dashboard"], "--working-dir", ROOT, "--python",
                     sys.executable, "predict", out, f"{data}/valid", "--out", pred, "--tta", "1", "--workers", "2")
    assert scoring.finish(300) == 0, scoring.text()[-3000:]
    m = json.loads(storage.read_bytes(f"{pred}/metrics.json"))
    assert m["n_images"] == 48 and m["n_skipped"] == 0


def test_a_predict_job_rides_out_a_lost_node_and_scores_every_image_once(cluster, hold, tmp_path):
    """`jobs/predict.py` with two scoring actors of 2 CPUs, one on each node (a node has 3). Each
    holds before its second shard (a point named before the job starts); the second node is then
    killed, a shard in its actor's hands; the actor on the head scores the rest, and every image
    is in the predictions once. (The pool of the round before hung here for good.)"""
    import predict_scale
    from results import write_random_model
    from test_predict_faults import predictions

    model = write_random_model(str(tmp_path / "m"), predict_scale.CLASSES, 32)
    images = str(tmp_path / "images")
    # 4 class folders of 600: 8 shards (512 + 88 each). The actor up first takes at most 3 before it
    # holds (its first, its second, where it holds, and one queued: IN_FLIGHT 2), so the other always
    # gets 2 or more and holds too, whichever starts first and however slowly (with 4 shards, an
    # actor that started late on a busy machine got one and never reached its hold).
    n = 2400
    predict_scale.make_images(images, n)
    out = tmp_path / "out"
    run = Driver(cluster, "submit", "--address", cluster["dashboard"], "--working-dir", ROOT, "--python",
                 sys.executable, "predict", model, images, "--out", str(out), "--workers", "2",
                 "--cpus-per-worker", "2", "--tta", "0")
    try:
        held = hold.wait(2, 240)  # both actors scored a shard and hold another
        assert len({m["node"] for m in held}) == 2, held  # one actor on each node
        lose_second_node(cluster)
        hold.release()
        rc = run.finish(300)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        hold.release()
        second_node_back(cluster)
    assert rc == 0, run.text()[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    p = predictions(str(out / "predictions"))
    assert m["n_images"] + m["n_skipped"] == n and m["n_skipped"] == n // 100
    assert len(p) == m["n_images"] and p["path"].is_unique  # every readable image once
