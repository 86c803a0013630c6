import os

import pytest

from raycat.edge import storage


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = str(tmp_path / "sub" / "x.txt")
    storage.write_text(target, "one")
    storage.write_text(target, "two")
    assert storage.read_text(target) == "two"
    assert os.listdir(tmp_path / "sub") == ["x.txt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = str(tmp_path / "x.bin")
    storage.write_bytes(target, b"old")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # the write fails after some bytes went to disk
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(target, b"new contents")
    assert storage.read_bytes(target) == b"old"
    assert sorted(os.listdir(tmp_path)) == ["x.bin"]


def test_list_files_recursive_sorted_and_hidden_skipped(tmp_path):
    for rel in ["b/2.jpg", "a/1.jpg", ".hidden/3.jpg", "a/.DS_Store"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    got = [os.path.relpath(p, tmp_path) for p in storage.list_files(str(tmp_path))]
    assert got == ["a/1.jpg", "b/2.jpg"]


def test_publish_tree_replaces_a_folder_whole(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "new.txt").write_text("n")
    out = tmp_path / "out" / "predictions"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("o")
    storage.publish_tree(str(stage), str(out))
    assert sorted(os.listdir(out)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path / "out")) == ["predictions"]


@pytest.mark.integration
def test_s3_clients_are_made_once_a_process_and_anew_for_new_settings(s3_server, monkeypatch):
    fs, _ = storage.filesystem("s3://some-bucket/a")
    assert storage.filesystem("s3://other-bucket/b")[0] is fs  # one client, its connections reused
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert storage.filesystem("s3://some-bucket/a")[0] is not fs


@pytest.mark.integration
def test_an_s3_listing_rides_out_a_short_outage_and_a_missing_bucket_fails_naming_it(s3_outage, bucket):
    folder = f"s3://{bucket}/blink-listing"
    for rel in ("b.jpg", "a.jpg", "sub/c.jpg"):
        storage.write_text(f"{folder}/{rel}", "x")
    s3_outage.down(seconds=2)
    assert list(storage.scan_dir(folder)) == [("a.jpg", False), ("b.jpg", False), ("sub", True)]
    assert s3_outage.refused > 0  # the listing really met the outage
    assert list(storage.scan_files(folder, after="a.jpg")) == ["b.jpg"]
    with pytest.raises(storage.StorageError, match="list s3://raycat-no-such-bucket/x: NoSuchBucket"):
        list(storage.scan_dir("s3://raycat-no-such-bucket/x"))


def test_an_s3_page_is_stored_as_html_so_a_presigned_url_opens_it(s3_server, bucket):
    """report.html opened from a presigned URL: the browser shows it only with its Content-Type."""
    import boto3

    storage.write_text(f"s3://{bucket}/typed/report.html", "<!doctype html><title>x</title>")
    storage.write_bytes(f"s3://{bucket}/typed/plot.png", b"\x89PNG\r\n\x1a\n")
    s3 = boto3.client("s3")
    assert s3.head_object(Bucket=bucket, Key="typed/report.html")["ContentType"].startswith("text/html")
    assert s3.head_object(Bucket=bucket, Key="typed/plot.png")["ContentType"] == "image/png"
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "typed/report.html"})
    import urllib.request

    with urllib.request.urlopen(url) as r:
        assert r.headers["Content-Type"].startswith("text/html") and b"<title>x</title>" in r.read()
