"""`raycat tune`: the search space (unit) and a real sweep with ASHA on a local Ray (integration)."""

import csv
import json
import os

import pytest

from raycat.cli import main, parse_config
from raycat.config import ConfigError, TuneConfig
from raycat.datasets import make_shapes_dataset
from raycat.search_space import DEFAULT_SPACE, load_space, recipe_keys
from raycat.tune_job import max_concurrent


def test_space_file_overrides_defaults(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("lr: {loguniform: [0.001, 0.1]}\nlr-mult: 5\narch: {choice: [resnet18, resnet34]}\n")
    space = load_space(str(f))
    assert space["lr"] == {"loguniform": [0.001, 0.1]} and space["lr_mult"] == 5
    assert space["arch"] == {"choice": ["resnet18", "resnet34"]} and space["cycle_mult"] == DEFAULT_SPACE["cycle_mult"]


@pytest.mark.parametrize("content,message", [
    ({"colour": 1}, "'colour' is not a tunable setting"),
    ({"lr": {"uniform": [0.1, 0.01]}}, "low < high"),
    ({"lr": {"gaussian": [0, 1]}}, "must be a value or one of"),
    ({"head_cycles": {"choice": []}}, "non-empty list"),
])
def test_bad_space_names_the_key(tmp_path, content, message):
    f = tmp_path / "s.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        load_space(str(f))


def test_concurrency_is_bounded_by_the_cluster():
    cfg = TuneConfig(data="d", out="o", workers=2)
    assert max_concurrent(cfg, cluster_cpus=6, cluster_gpus=0) == 2  # 3 CPUs a trial
    assert max_concurrent(TuneConfig(data="d", out="o", workers=2, max_concurrent=10), 6, 0) == 2
    assert max_concurrent(TuneConfig(data="d", out="o", workers=2, max_concurrent=1), 6, 0) == 1
    assert max_concurrent(TuneConfig(data="d", out="o", workers=1, gpu=True), 16, 2) == 2


@pytest.mark.integration
def test_sweep_with_asha_stops_a_bad_lr_and_its_best_recipe_round_trips(ray_local, tmp_path):
    data = make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square", "triangle"), n_train=16,
                               n_valid=6, seed=0, easy=True, clutter=False)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"grid": [0.01, 1000.0]}, "lr_mult": 3, "head_cycles": 1,
                                 "unfrozen_cycles": 2, "cycle_mult": 1}))
    out = str(tmp_path / "tune")
    assert main(["tune", data, "--out", out, "--samples", "2", "--space", str(space), "--max-concurrent", "1",
                 "--arch", "resnet18", "--weights", "none", "--size", "32", "--batch-size", "8",
                 "--precompute-epochs", "1", "--tta", "0", "--patience", "5"]) == 0
    with open(os.path.join(out, "trials.csv")) as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 4 and {"valid_loss", "accuracy", "status", "lr", "lr_mult"} <= set(trials[0])
    statuses = {t["trial_id"]: t["status"] for t in trials}
    assert "early_stopped" in statuses.values() and "completed" in statuses.values()
    assert all(t["status"] == "early_stopped" for t in trials if float(t["lr"]) == 1000.0)
    for t in trials:  # trials never share files: each wrote under its own folder
        if t["status"] == "completed":
            assert os.path.exists(os.path.join(out, "trials", t["trial_id"], "model", "weights.pt"))
    assert os.path.exists(os.path.join(out, "model", "weights.pt")) and os.path.exists(os.path.join(out, "trials.png"))
    best = os.path.join(out, "best_recipe.json")
    recipe = json.load(open(best))
    assert recipe["lr"] == 0.01 and set(recipe) <= set(recipe_keys())
    _, cfg = parse_config(["train", data, "--out", str(tmp_path / "again"), "--config", best])
    assert all(getattr(cfg, k) == v for k, v in recipe.items())


@pytest.mark.integration
def test_an_interrupted_sweep_resumes_instead_of_starting_over(ray_local, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data = make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square"), n_train=8, n_valid=4, seed=0,
                               easy=True, clutter=False)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"grid": [0.01, 0.02, 0.03]}, "lr_mult": 3, "head_cycles": 1,
                                 "unfrozen_cycles": 1, "cycle_mult": 1}))
    out = tmp_path / "tune"
    args = ["tune", data, "--out", str(out), "--samples", "1", "--space", str(space), "--max-concurrent", "1",
            "--arch", "resnet18", "--weights", "none", "--size", "32", "--batch-size", "8", "--precompute-epochs",
            "0", "--tta", "0"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "raycat", *args], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    finished = lambda: [d for d in (os.listdir(out / "trials") if (out / "trials").exists() else [])
                        if (out / "trials" / d / "metrics.json").exists()]
    while time.time() < deadline and not finished():
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies after its first trial
    proc.wait()
    first = finished()
    assert len(first) == 1 and not (out / "trials.csv").exists()
    stamp = os.path.getmtime(out / "trials" / first[0] / "metrics.json")
    assert main(args) == 0
    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 3 and sorted(float(t["lr"]) for t in trials) == [0.01, 0.02, 0.03]
    assert os.path.getmtime(out / "trials" / first[0] / "metrics.json") == stamp  # not trained again
