"""Shared fixtures: a real S3-protocol server (moto in server mode) on loopback, and one local Ray
instance for the whole session (Ray start-up is slow; tests that need it share it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(os.path.dirname(HERE), "bench")  # bench/results.py's helpers serve the tests too
for path in (HERE, BENCH):
    if path not in sys.path:
        sys.path.insert(0, path)


CANARY_SECRET = "raycat-canary-7d3f9e21b4"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on a loopback port and point the standard AWS variables at it, through
    a TCP forwarder that tests can take down (`s3_outage`).

    Set before Ray starts, so Ray's worker processes inherit the same endpoint and credentials.
    """
    from tcp_proxy import TcpProxy

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:  # noqa: BLE001 - keep polling until the server answers
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto S3 server did not start") from None
            time.sleep(0.2)
    global _PROXY
    _PROXY = TcpProxy(port)
    endpoint = _PROXY.url
    old = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                          "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        # A canary: tests assert it never shows up in any output, log or checkpoint.
        "AWS_SECRET_ACCESS_KEY": CANARY_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    yield endpoint
    _PROXY.close()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_PROXY = None


@pytest.fixture
def s3_outage(s3_server):
    """The forwarder in front of the S3 server (tests/tcp_proxy.py): .down(), .down_at(pattern),
    .up(), .refused; .upstream_url reaches the server directly, to look at it while it is "down".
    Always up again after the test."""
    yield _PROXY
    _PROXY.up()


@pytest.fixture(scope="session")
def bucket(s3_server):
    """A fresh bucket name on the S3 server."""
    import boto3

    name = f"raycat-test-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_server, tmp_path_factory):
    """One local Ray instance for the whole session: lean, but with the dashboard tune needs."""
    import ray

    from raycat.shell import faults, ray_session

    # The fault-injection points (raycat/shell/faults.py), inert until a test makes the hold file: Ray's
    # worker processes take this environment when the instance starts (the `hold` fixture).
    os.environ.update({faults.HOLD_FILE: os.path.join(tmp_path_factory.mktemp("hold"), "hold"),
                       faults.HOLD_AT_EPOCH: "1,2", faults.HOLD_AT_SHARD: "1"})
    ray_session.connect(None, dashboard=True)  # the tune tests share it
    yield ray
    ray.shutdown()


class Hold:
    """A test's hold (raycat/shell/faults.py): made on entering, so the job holds at the points the
    session named; `.wait(n)` the markers of n processes held; `.release()` lets them go on."""

    def __init__(self, path: str, points: str = ""):
        self.path, self.points = path, points  # points: the file's own, e.g. "shard=5" (raycat/shell/faults.py)

    def _clear(self) -> None:
        folder, name = os.path.split(self.path)
        for entry in os.listdir(folder):
            if entry == name or entry.startswith(name + ".held-"):
                os.remove(os.path.join(folder, entry))

    def __enter__(self):
        self._clear()
        with open(self.path, "w") as f:
            f.write(self.points)
        return self

    def __exit__(self, *exc):
        self._clear()

    def wait(self, n: int, timeout: float = 240, exclude=()) -> list[dict]:
        """The markers of n held processes (not counting those whose pid is in `exclude`)."""
        from raycat.shell import faults

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in faults.held(self.path) if m.get("pid") not in exclude]
            if len(found) >= n:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{n} process(es) did not reach the hold in {timeout}s")

    def release(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


@pytest.fixture
def hold(ray_local):
    from raycat.shell import faults

    with Hold(os.environ[faults.HOLD_FILE]) as h:
        yield h


@pytest.fixture
def hold_at(ray_local):
    """hold_at("shard=5"): a hold at the points the test names (context manager)."""
    from raycat.shell import faults

    return lambda points: Hold(os.environ[faults.HOLD_FILE], points)


@pytest.fixture(scope="session")
def trained_run(ray_local, tmp_path_factory):
    """One `raycat train` with 2 workers on tiny easy data, shared by the train and predict tests."""
    from raycat.cli import main
    from raycat.datasets import make_shapes_dataset

    root = tmp_path_factory.mktemp("train")
    data = make_shapes_dataset(str(root / "data"), classes=("circle", "square", "triangle"), n_train=60,
                               n_valid=12, seed=0, easy=True, clutter=False)
    out = str(root / "out")
    rc = main(["train", data, "--out", out, "--arch", "resnet18", "--weights", "none", "--size", "64",
               "--batch-size", "8", "--workers", "2", "--precompute-epochs", "1", "--head-cycles", "1",
               "--unfrozen-cycles", "2", "--cycle-mult", "2", "--lr-mult", "3", "--patience", "10", "--tta", "2",
               "--no-until-overfit",  # the tests read every epoch of the schedule (test_recipe: the rule)
               "--top", "6", "--precision", "fp32"])  # fp32: the tests rescore its model eagerly and compare closely
    assert rc == 0
    return {"data": data, "out": out}
