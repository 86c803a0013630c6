"""OUT that can't be written, or whose disk is (nearly) full: a clear error naming OUT, exit 2,
before any Ray or training time; a write that runs out of disk mid-way keeps the old file."""

import errno
import os
import subprocess

import pytest
from results import write_random_model as write_model

from raycat.cli import main
from raycat.datasets import make_shapes_dataset
from raycat.edge import storage


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    data = make_shapes_dataset(str(root / "data"), classes=("circle", "square"), n_train=2, n_valid=1, seed=0)
    write_model(str(root / "m"), ["circle", "square"], 32)
    return {"data": data, "model": str(root / "m"), "images": os.path.join(data, "valid")}


def commands(inputs, out):
    return {
        "train": ["train", inputs["data"], "--out", out, "--arch", "resnet18", "--weights", "none"],
        "lr-find": ["lr-find", inputs["data"], "--out", out, "--arch", "resnet18", "--weights", "none"],
        "predict": ["predict", inputs["model"], inputs["images"], "--out", out],
        "tune": ["tune", inputs["data"], "--out", out, "--arch", "resnet18", "--weights", "none", "--samples", "2"],
    }


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MB tmpfs: a real filesystem that fills up (needs root, as in CI and the dev container)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {r.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("command", ["train", "lr-find", "predict", "tune"])
def test_an_out_that_cannot_be_a_folder_is_refused_naming_it(inputs, tmp_path, capsys, command):
    (tmp_path / "a_file").write_text("not a folder")
    out = str(tmp_path / "a_file" / "out")
    assert main(commands(inputs, out)[command]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: not writable" in err and "Traceback" not in err


def test_an_s3_out_in_a_missing_bucket_is_refused_at_once(inputs, s3_server, capsys):
    assert main(commands(inputs, "s3://no-such-bucket/out")["train"]) == 2
    err = capsys.readouterr().err
    assert "--out s3://no-such-bucket/out: not writable" in err and "NO_SUCH_BUCKET" in err


@pytest.mark.parametrize("command", ["train", "predict", "tune"])
def test_an_out_without_room_is_refused_before_any_work(inputs, tiny_disk, capsys, command):
    out = str(tiny_disk / "out")
    assert main(commands(inputs, out)[command]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}:" in err and "MB free" in err
    assert not os.path.exists(os.path.join(out, "checkpoints"))


def test_a_write_that_runs_out_of_disk_keeps_the_old_file(tiny_disk):
    uri = str(tiny_disk / "metrics.json")
    storage.write_bytes(uri, b"the old, whole file")
    with pytest.raises(OSError) as e:
        storage.write_bytes(uri, os.urandom(6 << 20))
    assert e.value.errno == errno.ENOSPC
    assert open(uri, "rb").read() == b"the old, whole file"
    assert os.listdir(tiny_disk) == ["metrics.json"]  # no temporary file left behind
