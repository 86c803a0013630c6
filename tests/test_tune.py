"""`raycat tune`: the search space (unit) and a real sweep with ASHA on a local Ray (integration)."""

import csv
import json
import os

import pytest

from raycat.cli import main, parse_config
from raycat.config import ConfigError, Recipe, TrainResources, TuneConfig
from raycat.datasets import make_shapes_dataset
from raycat.shell.search_space import DEFAULT_SPACE, TUNABLE, load_space
from raycat.shell.tune_job import max_concurrent


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
    def sweep(workers=2, gpu=False, **kw):
        return TuneConfig(data="d", out="o", resources=TrainResources(workers=workers, gpu=gpu), **kw)

    assert max_concurrent(sweep(), 1, cluster_cpus=6, cluster_gpus=0) == 3  # 2 workers x 1 CPU a trial
    assert max_concurrent(sweep(max_concurrent=10), 1, 6, 0) == 3
    assert max_concurrent(sweep(max_concurrent=1), 1, 6, 0) == 1
    assert max_concurrent(sweep(), 3, 6, 0) == 1
    assert max_concurrent(sweep(workers=1, gpu=True), 4, 16, 2) == 2


def test_every_recipe_setting_but_weights_and_seed_is_tunable():
    import dataclasses

    assert TUNABLE == {f.name for f in dataclasses.fields(Recipe)} - {"weights", "seed"}
    assert "workers" not in TUNABLE and "gpu" not in TUNABLE


@pytest.mark.integration
def test_sweep_resumes_after_the_driver_dies_and_asha_stops_the_bad_lr(ray_local, tmp_path, hold_at):
    """One sweep (3 trials, the last with a hopeless lr): its driver is killed after the first trial,
    the same command resumes it, ASHA stops the bad trial, best_recipe.json feeds `raycat train`.

    The order matters: Tune's restore does not replay the scheduler's rungs, and a trial restored
    past its first rung is never recorded there. The second trial always runs its first rung after
    the restore, so the bad one always meets a good one at the rung. (Two bad trials with the same
    settings would tie there, and ASHA stops only the strictly worse.)"""
    import signal
    import subprocess
    import sys

    folders = make_shapes_dataset(str(tmp_path / "folders"), classes=("circle", "square", "triangle"), n_train=10,
                                  n_valid=4, seed=0, easy=True, clutter=False)
    # A folder of images and a labels CSV whose split column says train/valid: the trials read it.
    data, labels = tmp_path / "data", tmp_path / "labels.csv"
    rows = ["fname,label,split"]
    for split in ("train", "valid"):
        for c in sorted(os.listdir(os.path.join(folders, split))):
            for f in sorted(os.listdir(os.path.join(folders, split, c))):
                os.makedirs(data, exist_ok=True)
                os.replace(os.path.join(folders, split, c, f), data / f"{split}-{c}-{f}")
                rows.append(f"{split}-{c}-{f},{c},{split}")
    labels.write_text("\n".join(rows) + "\n")
    data = str(data)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"grid": [0.01, 0.01, 1000.0]}, "lr_mult": 3, "head_cycles": 1,
                                 "unfrozen_cycles": 1, "cycle_mult": 1}))
    out = tmp_path / "tune"
    args = ["tune", data, "--labels", str(labels), "--out", str(out), "--samples", "1", "--space", str(space),
            "--max-concurrent", "1",
            "--arch", "resnet18", "--weights", "none", "--size", "32", "--batch-size", "8",
            "--precompute-epochs", "0", "--tta", "0", "--patience", "5",
            # fp32: the two good trials must tie at ASHA's rung. bf16 (auto on a CPU with AMX) rounds
            # by thread layout, so equal settings need not give equal losses, and ASHA may stop one.
            "--precision", "fp32"]
    # The driver joins this session's Ray (a second local instance would cost its start-up and
    # share 2 cores with this one); when it is killed, Ray ends its trials with it.
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver_log = open(tmp_path / "driver.log", "wb")
    finished = lambda: [d for d in (os.listdir(out / "trials") if (out / "trials").exists() else [])
                        if (out / "trials" / d / "history.csv").exists()]
    # The second trial holds before it trains (decided before the sweep starts): the driver dies
    # there, with exactly one trial done whatever the machine's speed.
    with hold_at("trial=1") as h:
        proc = subprocess.Popen([sys.executable, "-m", "raycat", *args], start_new_session=True, env=env,
                                stdout=driver_log, stderr=subprocess.STDOUT)
        (held,) = h.wait(1, timeout=400)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies after its first trial
        proc.wait()
        h.release()
    assert held["trial_id"].endswith("_00001")
    first = finished()
    assert len(first) == 1 and not (out / "trials.csv").exists()
    history = (out / "trials" / first[0] / "history.csv").read_bytes()

    assert main(args) == 0  # the same command again: resumes
    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 3 and {"valid_loss", "accuracy", "status", "lr", "lr_mult"} <= set(trials[0])
    assert sorted(float(t["lr"]) for t in trials) == [0.01, 0.01, 1000.0]  # not 6: no fresh start
    assert (out / "trials" / first[0] / "history.csv").read_bytes() == history  # its epochs were not trained again
    assert [t["status"] for t in trials if float(t["lr"]) == 1000.0] == ["early_stopped"]
    assert all(t["status"] == "completed" for t in trials if float(t["lr"]) == 0.01)
    assert not any(t["status"] == "error" for t in trials)
    for t in trials:  # trials never share files: each wrote under its own folder
        if t["status"] == "completed":
            assert os.path.exists(out / "trials" / t["trial_id"] / "model" / "weights.pt")
            # each trial has its rate: no lr_find sweep ran, so it drew no curve
            assert not os.path.exists(out / "trials" / t["trial_id"] / "lr_find.csv")
            m = json.load(open(out / "trials" / t["trial_id"] / "metrics.json"))
            assert (m["n_train"], m["n_valid"]) == (30, 12)  # the labels file's split
            # The report shows the sweep's command, passed in as a value: never the trial process's
            # own argv (Ray's worker arguments, a Redis password among them on some clusters).
            page = (out / "trials" / t["trial_id"] / "report.html").read_text()
            assert "raycat tune " in page and "--node-ip-address" not in page and "--gcs-address" not in page
    assert (out / "model" / "weights.pt").exists() and (out / "trials.png").exists()
    best = str(out / "best_recipe.json")
    recipe = json.load(open(best))
    import dataclasses

    # best_recipe.json is the recipe alone: no workers, GPUs or cluster address
    assert recipe["lr"] == 0.01 and set(recipe) == {f.name for f in dataclasses.fields(Recipe)}
    _, cfg = parse_config(["train", data, "--labels", str(labels), "--out", str(tmp_path / "again"), "--config",
                           best])
    assert dataclasses.asdict(cfg.recipe) == recipe
    # The sweep's outputs, checkpoints, its killed driver's log and this Ray session's logs never
    # hold the AWS secret every test's environment has (Tune's runtime envs would have logged it).
    driver_log.close()
    assert_no_canary(out, tmp_path / "driver.log")


def assert_no_canary(*roots) -> None:
    """No file under `roots` (or this Ray session's folder) holds conftest.CANARY_SECRET."""
    import ray
    from conftest import CANARY_SECRET

    session_dir = ray._private.worker._global_node.get_session_dir_path()
    hits = []
    for root in (*map(str, roots), session_dir):
        walk = [(os.path.dirname(root), [], [os.path.basename(root)])] if os.path.isfile(root) else os.walk(root)
        for dirpath, _, files in walk:
            for f in files:
                p = os.path.join(dirpath, f)
                try:
                    with open(p, "rb") as fh:
                        if CANARY_SECRET.encode() in fh.read():
                            hits.append(p)
                except OSError:
                    pass
    assert not hits, hits


@pytest.mark.integration
def test_the_canary_secret_is_never_written(ray_local, trained_run):
    """A train run's outputs and checkpoints, and this session's Ray logs, never hold the secret."""
    assert_no_canary(trained_run["out"])


@pytest.mark.parametrize("command", ["tune", "lr-find", "train", "check"])
def test_labels_and_valid_pct_reach_every_command_s_layout(tmp_path, command, capsys):
    """Each command that reads a dataset reads --labels and --valid-pct, before any cluster time:
    a labels file with a split column and --valid-pct too is refused (exit 2), and one without a
    split column needs --valid-pct."""
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.jpg").write_bytes(b"")
    (tmp_path / "split.csv").write_text("fname,label,split\na.jpg,x,train\nb.jpg,y,train\nc.jpg,x,valid\n"
                                        "d.jpg,y,valid\n")
    (tmp_path / "plain.csv").write_text("fname,label\na.jpg,x\nb.jpg,y\nc.jpg,x\nd.jpg,y\n")
    out = [] if command == "check" else ["--out", str(tmp_path / "out")]
    assert main([command, str(tmp_path), "--labels", str(tmp_path / "split.csv"), "--valid-pct", "0.5", *out]) == 2
    assert "--valid-pct: --labels" in capsys.readouterr().err
    assert main([command, str(tmp_path), "--labels", str(tmp_path / "plain.csv"), *out]) == 2
    assert "add --valid-pct" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_weights_out_of_reach_exit_2_before_any_trial(tmp_path, monkeypatch, capsys):
    """Offline, `--weights imagenet` for a body whose weights no package holds is refused before
    Ray starts, as train refuses it; it used to fail every trial after cluster time."""
    from raycat.edge import weights

    monkeypatch.setattr(weights, "_from_library", lambda arch, family: None)  # offline, nothing cached
    data = make_shapes_dataset(str(tmp_path / "d"), classes=("circle", "square"), n_train=4, n_valid=2, seed=0)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"arch": {"grid": ["tf_efficientnet_lite0", "resnet50d"]}}))
    rc = main(["tune", data, "--out", str(tmp_path / "o"), "--samples", "1", "--space", str(space)])
    err = capsys.readouterr().err
    assert rc == 2 and "--weights imagenet: no ImageNet weights for resnet50d" in err, err
    assert not (tmp_path / "o" / "tune").exists() and not (tmp_path / "o" / "trials").exists()  # no trial ran
