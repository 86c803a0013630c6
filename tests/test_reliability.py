"""Reliability: hostile input, secrets, and a Train worker killed mid-run."""

import csv
import json
import os
import signal
import struct
import time
import zlib

import pytest
from procs import cmdline, descendants  # bench/procs.py (conftest puts bench/ on the path)

from raycat.core.decode import DecodeError, load_image
from raycat.edge.layout import scan_layout


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries no pixels: what a decompression bomb looks like up front."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_20000_pixel_square_image_is_refused_before_decoding():
    t = time.perf_counter()
    with pytest.raises(DecodeError, match="too large: 20000x20000"):
        load_image(png_header_only(20000, 20000), 64)
    assert time.perf_counter() - t < 1.0  # refused from the header, no 1.2 GB allocation


def test_class_names_with_shell_metacharacters(tmp_path):
    names = ["a;b $(rm -rf x)", "quote's \"dq\"", "back`tick`|pipe&"]
    for split in ("train", "valid"):
        for n in names:
            d = tmp_path / split / n
            d.mkdir(parents=True)
            (d / "1.jpg").write_bytes(b"x")
    assert scan_layout(str(tmp_path)).classes == sorted(names)


def registered_state(run_dir):
    """The RecipeState in the checkpoint Ray Train has registered as the latest (what a resumed run
    starts from), read from its checkpoint manager's snapshot; None when there is none yet. The
    newest folder on disk may not be it: one being written, or one a dead worker group left."""
    import torch

    from raycat.core.recipe import RecipeState

    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        name = snap["latest_checkpoint_result"]["checkpoint_dir_name"]
        return RecipeState.from_dict(torch.load(run_dir / name / "recipe_state.pt", weights_only=True))
    except Exception:  # noqa: BLE001 - not there yet, or being written right now
        return None


@pytest.mark.integration
def test_a_killed_worker_is_replaced_and_a_killed_driver_is_resumed_by_the_same_command(ray_local, tmp_path,
                                                                                        capsys, hold):
    """One training run, two faults. A Train worker is SIGKILLed: Ray Train replaces the worker group
    and the run goes on from the latest checkpoint. Then the driver is SIGKILLed: the same command
    resumes from the latest checkpoint and says so, and the epochs done before are not trained
    again. history.csv ends with every epoch exactly once."""
    import subprocess
    import sys

    from raycat.cli import main
    from raycat.datasets import make_shapes_dataset

    data = make_shapes_dataset(str(tmp_path / "data"), classes=("circle", "square"), n_train=40, n_valid=8, seed=1,
                               easy=True, clutter=False)
    out = tmp_path / "out"
    args = ["train", data, "--out", str(out), "--arch", "resnet18", "--weights", "none", "--size", "32",
            "--batch-size", "8", "--workers", "2", "--precompute-epochs", "1", "--head-cycles", "2",
            "--unfrozen-cycles", "2", "--cycle-mult", "1", "--patience", "9", "--tta", "0", "--tracking", "tensorboard",
            "--lr", "0.01", "--no-until-overfit"]
    # (a rate given: no lr_find sweeps, whose curves this test does not look at; every epoch of the
    # schedule is read below, so no stage ends early)
    # The driver joins this session's Ray, as a job submitted to a cluster would.
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "raycat", *args], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = out / "checkpoints" / "train"

    def registered(n: int):  # Ray Train has registered the checkpoint of n epochs (the group holds there)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            s = registered_state(run_dir)
            if s is not None and len(s.history) >= n:
                return s
            time.sleep(0.2)
        return None

    # Decided before the run starts (conftest's hold, raycat/shell/faults.py): the group holds after the
    # checkpoints of epochs 1 and 2, so each fault lands mid-run whatever the speed of an epoch.
    assert [m["count"] for m in hold.wait(1, 300)] == [1]
    assert registered(1) is not None, "the run did not get going"  # the precompute epoch is done
    workers = [p for p in descendants(os.getpid()) if "RayTrainWorker" in cmdline(p)]
    assert len(workers) >= 2
    os.kill(max(workers), signal.SIGKILL)  # the newest: this run's
    # The new group goes on from epoch 1's checkpoint and holds after epoch 2's.
    assert sorted(m["count"] for m in hold.wait(2, 300)) == [1, 2], "the run did not go on after its worker died"
    assert registered(2) is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    hold.release()
    before = registered_state(run_dir)
    assert before is not None and len(before.history) == 2, "the driver was not killed mid-run"
    assert not (out / "history.csv").exists()

    capsys.readouterr()
    assert main(args) == 0
    assert "resuming the unfinished run" in capsys.readouterr().out
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("precompute", "1"), ("head", "1"), ("head", "2"),
                                                        ("unfrozen", "1"), ("unfrozen", "2")]
    # the same epochs, not a second training of them
    for old, new in zip(before.history, rows[:len(before.history)], strict=True):
        assert float(new["seconds"]) == pytest.approx(old["seconds"], abs=1e-6)
        assert float(new["train_loss"]) == pytest.approx(old["train_loss"], abs=1e-9)

    # TensorBoard's steps are the epochs' indices in the run. The resumed command's tracker gets the
    # whole series: the checkpoint's epochs again (the killed driver may have died after Ray Train
    # registered an epoch and before its row reached the tracker), then the epochs it trained.
    from test_tracking import scalars

    steps = [s for s, _ in scalars(str(out / "tensorboard"))["valid_loss"]]
    assert steps[-5:] == list(range(5)), steps

    # Finished: the next run with this OUT will be a new one (test_resume.py covers that step).
    assert json.load(open(run_dir / "raycat_run.json"))["finished"] is True
