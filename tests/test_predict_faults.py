"""Integration: `raycat predict` meets faults and hostile input, and accounts for every image.

Store outages are real (a TCP forwarder in front of the S3 server resets and refuses connections,
tests/tcp_proxy.py), started at an exact request of the job; a scoring actor is SIGKILLed."""

import csv
import json
import os
import re
import shutil
import signal
import threading

import boto3
import pyarrow.dataset as pads
import pytest
from images import awkward_good_files, bad_files, encode
from PIL import Image
from results import write_random_model as write_model
from test_reliability import png_header_only

from raycat.cli import main
from raycat.edge import storage


def predictions(uri):
    fs, path = storage.filesystem(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()


def skipped(out):
    with open(os.path.join(out, "skipped.csv")) as f:
        return list(csv.DictReader(f))


def copies_of_valid(trained_run, dest, reps):
    """The trained run's valid images, `reps` copies each, labelled by folder; returns the count."""
    src = os.path.join(trained_run["data"], "valid")
    n = 0
    for c in os.listdir(src):
        os.makedirs(os.path.join(dest, c), exist_ok=True)
        for rep in range(reps):
            for f in os.listdir(os.path.join(src, c)):
                shutil.copy(os.path.join(src, c, f), os.path.join(dest, c, f"{rep}_{f}"))
                n += 1
    return n


def s3_keys(proxy, bucket, prefix):
    s3 = boto3.client("s3", endpoint_url=proxy.upstream_url)
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


@pytest.mark.integration
def test_predict_rides_out_a_store_outage_during_its_writes(trained_run, s3_outage, bucket, tmp_path):
    n = copies_of_valid(trained_run, str(tmp_path / "images"), 2)
    out = f"s3://{bucket}/outage/blink"
    # The store goes away for 4 s at the first Parquet part a scoring actor writes.
    s3_outage.down_at(f"/{bucket}/outage/blink/.raycat-predict/parts/".encode(), seconds=4)
    refused = s3_outage.refused
    assert main(["predict", trained_run["out"], str(tmp_path / "images"), "--out", out, "--tta", "0"]) == 0
    assert s3_outage.refused > refused  # the job really met the outage
    p = predictions(f"{out}/predictions")
    assert len(p) == n and p["path"].is_unique
    assert json.loads(storage.read_text(f"{out}/metrics.json"))["n_images"] == n


@pytest.mark.integration
def test_predict_fails_cleanly_when_the_store_stays_down(trained_run, s3_outage, bucket, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.2, 0.4))  # the same retries, a shorter wait
    copies_of_valid(trained_run, str(tmp_path / "images"), 1)
    out = f"s3://{bucket}/outage/down"
    # The store dies at the first Parquet part a scoring actor writes, and stays down.
    s3_outage.down_at(f"/{bucket}/outage/down/.raycat-predict/parts/".encode())
    assert main(["predict", trained_run["out"], str(tmp_path / "images"), "--out", out, "--tta", "0"]) == 1
    err = capsys.readouterr().err
    # named: the step and the URI
    assert re.search(rf"StorageError: write {out}/\.raycat-predict/parts/part-[\w-]+\.parquet", err), err
    assert "Traceback" not in err
    s3_outage.up()
    finals = [k for k in s3_keys(s3_outage, bucket, "outage/down/")
              if ".raycat-predict" not in k and not k.endswith("/")]
    assert finals == []  # nothing under a final name; the next run goes on from the parts written


@pytest.mark.integration
def test_a_killed_predict_actor_is_replaced_and_every_image_is_scored_once(trained_run, tmp_path, hold,
                                                                          monkeypatch):
    """Two actors, each held before its second shard (a point named before the run starts:
    conftest's hold); one is SIGKILLed there, a shard in hand: its shards go to the other, and
    every image is scored exactly once."""
    from raycat.shell import listing

    monkeypatch.setattr(listing, "SHARD_SIZE", 8)  # (the driver runs here) 72 images, 9 shards
    n = copies_of_valid(trained_run, str(tmp_path / "images"), 6)
    out = tmp_path / "out"
    killed = []

    def kill_an_actor_mid_run():
        try:
            held = hold.wait(2, 120)
            os.kill(held[0]["pid"], signal.SIGKILL)
            killed.append(held[0]["pid"])
        finally:
            hold.release()

    t = threading.Thread(target=kill_an_actor_mid_run, daemon=True)
    t.start()
    assert main(["predict", trained_run["out"], str(tmp_path / "images"), "--out", str(out), "--tta", "4",
                 "--workers", "2", "--batch-size", "8"]) == 0
    t.join(timeout=5)
    assert killed, "no scoring actor was killed"
    p = predictions(str(out / "predictions"))
    assert len(p) == n and p["path"].is_unique  # every image exactly once
    assert json.load(open(out / "metrics.json"))["n_images"] == n


@pytest.mark.integration
def test_one_image_in_ten_corrupt_every_bad_file_listed_once(trained_run, tmp_path):
    """300 images, 30 of them unreadable in every way the decoder knows, spread over the classes,
    with every odd-but-readable kind (1x1 too) and a symlink loop in the tree."""
    images = tmp_path / "images"
    n_good = copies_of_valid(trained_run, str(images), 6)
    awkward = awkward_good_files()
    kinds = {**bad_files(), "huge_header.png": png_header_only(20000, 20000)}
    classes = sorted(os.listdir(images))
    bad = []
    for i in range(30):
        name, data = list(kinds.items())[i % len(kinds)]
        path = images / classes[i % len(classes)] / f"bad{i}_{name}"
        path.write_bytes(data)
        bad.append(str(path))
    awkward["one_pixel.png"] = encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")
    for i, (name, data) in enumerate(awkward.items()):  # odd but readable: must be scored, not skipped
        (images / classes[i % len(classes)] / f"odd_{name}").write_bytes(data)
    n_good += len(awkward)
    os.symlink(images, images / classes[0] / "loop")  # a symlink loop: walked once, not forever
    out = tmp_path / "out"
    assert n_good + len(bad) >= 250
    assert main(["predict", trained_run["out"], str(images), "--out", str(out), "--tta", "2"]) == 0
    rows = skipped(out)
    assert sorted(r["path"] for r in rows) == sorted(bad)  # each bad file, once
    assert all(r["reason"] for r in rows)
    p = predictions(str(out / "predictions"))
    assert len(p) == n_good and p["path"].is_unique
    m = json.load(open(out / "metrics.json"))
    assert m["n_images"] == n_good and m["n_skipped"] == len(bad)  # predicted + skipped = every file


HOSTILE = ["..x", "-rf", "~", "$(touch pwned)", "a;b|c&d", "sp ace", "ünï", "%2e%2e", "*"]


@pytest.mark.integration
def test_class_names_never_write_outside_out(ray_local, tmp_path, monkeypatch):
    """A model whose classes are legal but hostile folder names: predict writes only under OUT, runs
    no shell, and keeps the names intact. A tampered model card with path-like names is refused."""
    from raycat.datasets import make_shapes_dataset

    monkeypatch.chdir(tmp_path)
    write_model(str(tmp_path / "m"), sorted(HOSTILE), 32)
    data = make_shapes_dataset(str(tmp_path / "shapes"), classes=("circle",), n_train=1, n_valid=1,
                               seed=0)
    src = os.path.join(data, "train", "circle")
    for c in HOSTILE:
        os.makedirs(tmp_path / "images" / c)
        for f in os.listdir(src):
            shutil.copy(os.path.join(src, f), tmp_path / "images" / c / f)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "images"), "--out", str(out), "--tta", "0"]) == 0
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(out in p.parents or p == out for p in new)
    assert not os.path.exists(tmp_path / "pwned") and not os.path.exists("pwned")
    with open(out / "confusion_matrix.csv") as f:
        assert [r[0] for r in csv.reader(f)][1:] == sorted(HOSTILE)

    card = json.load(open(tmp_path / "m" / "model" / "model.json"))
    for evil in (["../../escape", "b"], ["a", "a"], ["..", "b"], ["a/b", "c"], []):
        json.dump({**card, "classes": evil}, open(tmp_path / "m" / "model" / "model.json", "w"))
        assert main(["predict", str(tmp_path / "m"), str(tmp_path / "images"), "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists() and not (tmp_path.parent / "escape").exists()
