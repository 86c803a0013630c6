"""Elastic worker groups (`--workers MIN-MAX`): the flag, the recipe's invariants when the group
resizes, and what the console says about the group. The runs that lose and regain a node are in
test_cluster.py (a real two-node cluster)."""

import os
import queue
import time

import pytest
import torch
import torch.nn.functional as F
from ray.train.v2._internal.execution.controller.state import (
    InitializingState,
    ReschedulingState,
    RestartingState,
    RunningState,
    SchedulingState,
)
from ray.train.v2._internal.execution.scaling_policy import ResizeDecision

from raycat.cli import main
from raycat.core.data import batch_share, loss_weight
from raycat.shell import group_watch


@pytest.mark.parametrize("value", ["3-2", "0-2", "0", "2-x", "1-2-3", "-2"])
def test_a_bad_worker_range_exits_2_naming_the_flag_before_any_cluster_time(value, tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), f"--workers={value}"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_range_is_for_train_and_tune_only(tmp_path, capsys):
    from raycat.cli import parse_config

    _, cfg = parse_config(["tune", "d", "--out", "o", "--workers", "2-4"])
    assert (*cfg.resources.workers, cfg.resources.workers.elastic) == (2, 4, True)
    _, cfg = parse_config(["train", "d", "--out", "o", "--workers", "3"])
    assert (cfg.resources.workers, cfg.resources.workers.elastic) == ((3, 3), False)
    with pytest.raises(SystemExit):
        parse_config(["predict", "m", "i", "--out", "o", "--workers", "1-2"])


def test_a_config_file_may_give_the_range_or_a_number(tmp_path):
    from raycat.cli import parse_config

    for value, expected in (('"1-3"', (1, 3)), ("2", (2, 2))):
        path = tmp_path / "c.json"
        path.write_text('{"workers": %s}' % value)
        _, cfg = parse_config(["train", "d", "--out", "o", "--config", str(path)])
        assert tuple(cfg.resources.workers) == expected


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_the_shares_add_up_to_the_global_batch_whatever_the_group(world):
    shares = [batch_share(64, world, r) for r in range(world)]
    assert sum(shares) == 64 and max(shares) - min(shares) <= 1


def test_weighted_shares_give_the_gradient_of_the_whole_global_batch():
    # DDP averages the workers' gradients; with unequal shares each worker's mean loss is weighted
    # so that the average is the full batch's gradient (what one worker with all 10 images gets).
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    full = torch.autograd.grad(F.cross_entropy(net(x), y), net.weight)[0]
    world, grads, start = 3, [], 0
    for r in range(world):
        n = batch_share(10, world, r)
        loss = F.cross_entropy(net(x[start:start + n]), y[start:start + n]) * loss_weight(10, world, r)
        grads.append(torch.autograd.grad(loss, net.weight)[0])
        start += n
    assert torch.allclose(torch.stack(grads).mean(0), full, atol=1e-6)
    # Unweighted, the 4-image share would count for less per image than the 3-image ones.
    assert [batch_share(10, 3, r) for r in range(3)] == [4, 3, 3]


def test_failure_reasons_read_from_ray_train_errors():
    assert group_watch.failure_reason(RuntimeError(
        "The actor died because its node has died. Node Id: abc")) == "node lost"
    assert group_watch.failure_reason(RuntimeError(
        "WorkerGroupStartupTimeoutError: timed out waiting for 2 workers")) == "waiting for resources"
    assert group_watch.failure_reason(ValueError("CUDA out of memory\nmore")).startswith("worker failed: CUDA")
    # A killed node's worker fails its health check before the cluster marks the node dead.
    health = RuntimeError("A worker health check failed.\n  metadata=ActorMetadata(node_id='ab12cd34ef56ab12cd34',")
    assert group_watch.failure_reason(health, {"ab12cd34ef56ab12cd34"}) == "node lost"
    assert group_watch.failure_reason(health, set()).startswith("worker failed: A worker health check")


def test_the_waiting_line_says_what_the_group_needs_and_what_is_free():
    line = group_watch.waiting_line(31, 2, {"CPU": 3.0}, [{"CPU": 2.0, "memory": 2**31}, {"CPU": 1.0}])
    assert "needs 2 worker(s) x 3 CPU" in line and "2 node(s) alive" in line and "room for 0" in line
    assert group_watch.workers_that_fit([{"CPU": 4.0}, {"CPU": 3.0, "GPU": 1.0}], {"CPU": 2.0}) == 3
    assert group_watch.workers_that_fit([{"CPU": 4.0}, {"CPU": 3.0, "GPU": 1.0}], {"CPU": 2.0, "GPU": 1}) == 1


class Queue:
    def __init__(self):
        self.q = queue.Queue()

    def put_nowait(self, item):
        self.q.put(item)

    def items(self):
        out = []
        while not self.q.empty():
            out.append(self.q.get())
        return out


def _start(watch, n):
    decision = ResizeDecision(num_workers=n, resources_per_worker={"CPU": 2.0})
    watch.before_controller_execute_resize_decision(decision)
    watch.after_controller_state_update(SchedulingState(decision), RunningState())


def test_the_watch_reports_each_group_with_why_it_started(monkeypatch):
    monkeypatch.setattr(group_watch, "dead_nodes", lambda: set())
    q = Queue()
    watch = group_watch.GroupWatch(q, {"CPU": 2.0}, 1, 2, "train")
    watch.after_controller_state_update(InitializingState(), InitializingState())
    _start(watch, 2)
    watch.after_controller_state_update(RunningState(), RestartingState(RuntimeError("node has died")))
    # A start that times out while the node is gone keeps the cause before it.
    watch.after_controller_state_update(RestartingState(RuntimeError("x")), ReschedulingState(
        RuntimeError("WorkerGroupStartupTimeoutError")))
    _start(watch, 1)
    watch.before_controller_execute_resize_decision(ResizeDecision(num_workers=2, resources_per_worker={}))
    _start(watch, 2)
    items = q.items()
    groups = [i[1] for i in items if i[0] == "group"]
    assert [(g["workers"], g["reason"]) for g in groups] == [(2, "start"), (1, "node lost"),
                                                              (2, "room for more workers")]
    lines = [i[1] for i in items if i[0] == "line"]
    assert lines == ["raycat train: worker group: 2 worker(s)",
                     "raycat train: resized: 2 -> 1 workers, node lost; from the latest checkpoint",
                     "raycat train: resized: 1 -> 2 workers, room for more workers; from the latest checkpoint"]


def test_the_watch_says_it_waits_and_says_it_again_while_it_waits(monkeypatch):
    monkeypatch.setattr(group_watch, "dead_nodes", lambda: set())
    monkeypatch.setattr(group_watch, "WAIT_FIRST_S", 0.5)
    monkeypatch.setattr(group_watch, "WAIT_EVERY_S", 1.0)
    monkeypatch.setattr(group_watch, "POLL_S", 0.1)
    monkeypatch.setattr(group_watch, "free_by_node", lambda: [{"CPU": 1.0}])
    q = Queue()
    watch = group_watch.GroupWatch(q, {"CPU": 2.0}, 2, 2, "train")
    watch.after_controller_start(None)
    try:
        _start(watch, 2)
        time.sleep(0.8)
        assert not [i for i in q.items() if "waiting" in str(i[1])]  # running: nothing to say
        watch.after_controller_state_update(RunningState(), RestartingState(RuntimeError("node has died")))
        waits, deadline = [], time.monotonic() + 30  # the second line is the event waited for
        while len(waits) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            waits += [i[1] for i in q.items() if "waiting" in str(i[1])]
        assert len(waits) >= 2, waits
        assert "needs 2 worker(s) x 2 CPU" in waits[0] and "free: 1 CPU" in waits[0]
        _start(watch, 2)
        q.items()
        time.sleep(1.5)
        assert not [i for i in q.items() if "waiting" in str(i[1])]
    finally:
        watch.before_controller_abort()


def test_the_first_wait_s_is_read_in_the_driver_and_travels_to_the_controller(monkeypatch):
    import pickle

    monkeypatch.setenv("RAYCAT_WAIT_FIRST_S", "2")
    watch = group_watch.GroupWatch(None, {"CPU": 1.0}, 1, 2, "train")  # (the queue: a Ray actor handle in a run)
    monkeypatch.delenv("RAYCAT_WAIT_FIRST_S")  # the controller's process has the cluster's env, not the job's
    there = pickle.loads(pickle.dumps(watch))
    assert watch.wait_first_s == there.wait_first_s == 2.0
    assert group_watch.GroupWatch(None, {"CPU": 1.0}, 1, 2, "train").wait_first_s == group_watch.WAIT_FIRST_S


@pytest.mark.integration
def test_a_min_this_machine_can_never_hold_exits_2_before_training(ray_local, tmp_path, capsys):
    from raycat.datasets import make_shapes_dataset

    data = make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square"), n_train=4, n_valid=2,
                               seed=0)
    rc = main(["train", data, "--out", str(tmp_path / "o"), "--workers", "3-4", "--cpus-per-worker", "1",
               "--weights", "none", "--size", "32"])
    err = capsys.readouterr().err
    assert rc == 2 and "--workers 3-4" in err and "holds 2 worker(s)" in err, err


class FakeShard:
    """A worker's split of the train files as Ray Data hands it over: numpy batches of
    {path, label, data, error} (no Ray: the decoding and keeping are what is tested)."""

    def __init__(self, files):
        self.files = files

    def iter_batches(self, batch_size, batch_format, prefetch_batches=0):
        import numpy as np

        for i in range(0, len(self.files), batch_size):
            part = self.files[i:i + batch_size]
            yield {"path": np.array([p for p, _ in part]), "label": np.array([0] * len(part)),
                   "data": np.array([d for _, d in part], dtype=object), "error": np.array([""] * len(part))}


def test_a_worker_keeps_its_decoded_shard_in_its_own_memory_and_writes_nothing(tmp_path, monkeypatch):
    """The decoded cache has one owner, the worker process: nothing on the node's disk to leak when
    a run is stopped, killed or cut by ASHA, or to hand stale pixels to a later group. A resized
    group (new processes) decodes its shard again: what its files hold now."""
    import io
    import tempfile

    from PIL import Image

    from raycat.shell import train_worker

    def png(v):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (v, 100, 50)).save(buf, format="PNG")
        return buf.getvalue()

    files = [(f"/data/train/a/{i}.png", png(i * 20)) for i in range(12)]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def group_pass(shard_files):
        data = train_worker.ShardData(FakeShard(shard_files), None, 16, 4, 3, torch.device("cpu"), cache=True,
                                      threads=1)
        list(data.train_pass())
        return data

    before = group_pass(files)
    assert before.train_cache is not None and len(before.train_cache[0]) == 12
    files[0] = (files[0][0], png(255))  # edited in place between two groups
    after = group_pass(files)
    assert int(after.train_cache[0][0, 0, 0, 0]) == 255 != int(before.train_cache[0][0, 0, 0, 0])
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_s_trials_are_elastic_groups_and_the_sweep_counts_their_max():
    # Each trial is a `raycat train` (train_job.fit): its range reaches it whole; the sweep plans
    # its concurrency for the trials at MAX, so trials that grow back still fit.
    from raycat.config import Recipe, TrainResources, TuneConfig
    from raycat.shell.tune_job import max_concurrent

    sweep = TuneConfig(data="d", out="o", resources=TrainResources(workers="1-3"))
    trial = sweep.trial(Recipe(), "o/trials/t0").resources
    assert (*trial.workers, trial.workers.elastic) == (1, 3, True)
    assert max_concurrent(sweep, 1, cluster_cpus=6, cluster_gpus=0) == 2


@pytest.mark.integration
def test_a_fixed_group_the_cluster_cannot_hold_says_it_waits_and_what_it_needs(ray_local, tmp_path):
    """A joined cluster may grow (or get its lost node back), so a group it can't hold now waits;
    the console says so after WAIT_FIRST_S ($RAYCAT_WAIT_FIRST_S) and names what is missing. (On this session's 2 CPUs,
    2 workers x 2 CPU never fit; the run is stopped once it has said so.)"""
    import signal
    import subprocess
    import sys

    from raycat.datasets import make_shapes_dataset

    data = make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square"), n_train=4, n_valid=2, seed=0)
    # The first "waiting" line after 2 s, not 20: what it says is under test, not how long it holds back.
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1",
           "RAYCAT_WAIT_FIRST_S": "2"}
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raycat", "train", data, "--out", str(tmp_path / "o"),
                                 "--workers", "2", "--cpus-per-worker", "2", "--weights", "none", "--size", "32"],
                                start_new_session=True, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 150
            while time.time() < deadline and proc.poll() is None and "waiting for resources" not in log.read_text():
                time.sleep(1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    line = next((x for x in text.splitlines() if "waiting for resources" in x), None)
    assert line is not None, text[-3000:]
    assert "needs 2 worker(s) x 2 CPU" in line and "free:" in line, line


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_each_group_s_workers_cut_the_valid_set_into_parts_that_hold_each_file_once(world):
    from raycat.shell.train_worker import valid_part

    valid = ([f"v/{i}.jpg" for i in range(20)], [i % 3 for i in range(20)])
    parts = [valid_part(valid, r, world) for r in range(world)]
    assert sorted(p for ps, _ in parts for p in ps) == sorted(valid[0])
    assert all(dict(zip(*valid, strict=True))[p] == y for ps, ys in parts for p, y in zip(ps, ys, strict=True))
