"""The scoring pool (raycat/shell/scoring_pool.py) on the session's Ray: work only to actors that are up,
an actor lost any number of times, one dead for good while another lives, none left, more actors
than the instance holds; every shard scored once. Each fault lands at a point the test names
before the run starts (conftest's `hold`, raycat/shell/faults.py)."""

import json
import os
import signal
import threading

import pytest
from predict_scale import CLASSES, make_images
from results import write_random_model
from test_predict_faults import predictions

from raycat.cli import main
from raycat.edge import model_card
from raycat.shell import listing, scoring_pool
from raycat.shell.scoring import ScoringSpec

pytestmark = pytest.mark.integration
SIZE = 32


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    model = write_random_model(str(root / "m"), CLASSES, SIZE)
    images = str(root / "images")
    make_images(images, 96)  # 4 class folders; every 100th image truncated
    return model, images


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 8 images (the driver runs in this process): a few dozen images make many shards."""
    monkeypatch.setattr(listing, "SHARD_SIZE", 8)


def spec_for(model, run):
    folder, card = model_card.find(model)
    return ScoringSpec(model=folder, card=card.to_json(), tta=1, tta_beta=0.25, batch_size=8, gpu=False, cpus=1,
                       run=run, top=4)


def rows_of(model, images):
    _, card = model_card.find(model)
    source, units = listing.plan_listing(images, card.classes)
    return list(listing.stream_shards(units, source))


def in_thread(fn, hold):
    """fn in a thread that always lets the held processes go, so a failure can't hang the test."""
    failed = []

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - shown by the test
            failed.append(e)
        finally:
            hold.release()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, failed


def test_an_actor_killed_again_and_again_never_fails_the_run(model_and_images, tmp_path, hold, small_shards,
                                                            monkeypatch):
    """One actor, SIGKILLed four times, each time with a shard in hand and the next queued behind it
    (Ray Data's pool restarts without limit; a pool that gave up after three failed the run, then
    hung at exit). Both go back to the front of the queue in the order they were sent, and only
    the one in hand counts against its shard: with a limit of 2 here, a shard counted twice (the
    queued one, or the held one sent second again) would fail the run."""
    model, images = model_and_images
    monkeypatch.setattr(scoring_pool, "MAX_SHARD_TRIES", 2)  # (the driver runs in this process)
    killed = []

    def kill_four_times():
        for _ in range(4):
            [held] = hold.wait(1, 120, exclude=killed)  # the new process, before its second shard
            os.kill(held["pid"], signal.SIGKILL)
            killed.append(held["pid"])

    t, failed = in_thread(kill_four_times, hold)
    out = tmp_path / "out"
    assert main(["predict", model, images, "--out", str(out), "--tta", "0", "--workers", "1"]) == 0
    t.join(5)
    assert not failed and len(killed) == 4, failed
    p = predictions(str(out / "predictions"))
    m = json.load(open(out / "metrics.json"))
    assert len(p) == m["n_images"] and m["n_images"] + m["n_skipped"] == 96 and p["path"].is_unique  # each once


def test_an_actor_dead_for_good_leaves_its_shards_to_the_one_that_lives(model_and_images, tmp_path, hold,
                                                                        small_shards, ray_local):
    model, images = model_and_images
    rows = rows_of(model, images)
    pool = scoring_pool.ScorerPool(spec_for(model, str(tmp_path / "run")), 2, 1, False)

    def kill_one_for_good():
        hold.wait(2, 120)  # both actors up, each with a shard in hand
        ray_local.kill(pool.actors[0], no_restart=True)

    t, failed = in_thread(kill_one_for_good, hold)
    try:
        summaries = list(pool.score(rows))
    finally:
        pool.close()
    t.join(5)
    assert not failed, failed
    assert sorted(s["shard"] for s in summaries) == sorted(r["shard"] for r in rows)  # each shard once
    assert 0 in pool.dead and pool.up == {1} and pool.lost_calls >= 1


def test_no_actor_that_can_come_back_fails_the_run_naming_why(model_and_images, tmp_path, ray_local):
    model, images = model_and_images
    spec = spec_for(model, str(tmp_path / "run"))
    broken = ScoringSpec(**{**spec.__dict__, "model": str(tmp_path / "no-such-model")})
    pool = scoring_pool.ScorerPool(broken, 2, 1, False)
    try:
        with pytest.raises(scoring_pool.ScoringFailed, match="every scoring actor died"):
            list(pool.score(rows_of(model, images)))
    finally:
        pool.close()
    assert pool.ready_at is None and len(pool.dead) == 2  # a failed ready() is not ready


def test_an_actor_that_is_never_placed_gets_no_work_and_the_wait_is_said(model_and_images, tmp_path, ray_local,
                                                                        monkeypatch):
    """On a joined cluster that may grow, actors Ray can't place yet hold no shard; while none is
    up, the console says what they need and what the cluster has."""
    model, images = model_and_images
    monkeypatch.setattr(scoring_pool, "WAIT_FIRST_S", 0.5)
    pool = scoring_pool.ScorerPool(spec_for(model, str(tmp_path / "run")), 1, 64, False)
    said = []

    class Seen(Exception):
        pass

    def say(line):
        said.append(line)
        raise Seen

    try:
        with pytest.raises(Seen):
            next(pool.score(iter(rows_of(model, images)), say=say))
    finally:
        pool.close()
    assert "waiting for resources" in said[0] and "needs 1 scoring actor(s) x 64 CPU" in said[0], said


def test_more_actors_than_this_machine_holds_exit_2_before_any_work(model_and_images, tmp_path, ray_local, capsys):
    model, images = model_and_images
    out = tmp_path / "out"
    cpus = int(ray_local.cluster_resources()["CPU"])
    assert main(["predict", model, images, "--out", str(out), "--workers", str(cpus + 1),
                 "--cpus-per-worker", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--workers {cpus + 1}" in err and f"holds {cpus} scoring actor(s)" in err, err
    assert not out.exists() or not os.listdir(out)

