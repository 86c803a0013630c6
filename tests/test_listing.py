"""What predict scores: folders, prefixes and manifests cut into shards, with labels; a flat folder
or prefix cut into ranges listed in parallel, with no stat per file."""

import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raycat.edge import storage
from raycat.shell import listing


def listed(images, classes):
    """(path, label) of every image, as the listing tasks would produce them, in shard order."""
    source, units = listing.plan_listing(images, classes)
    rows = []
    for unit in units:
        for row in listing.list_unit(unit, source):
            _, paths, labels, _ = listing.shard_of(row)
            rows += list(zip(paths, labels, strict=True))
    return rows


def touch(root, *rels):
    for rel in rels:
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(b"x")


def test_labelled_folders_must_match_the_model(tmp_path):
    touch(tmp_path, "cat/1.jpg", "dog/2.jpg", "horse/3.jpg")
    with pytest.raises(listing.ListingError, match="labelled folders horse are not among the model's classes"):
        listing.plan_listing(str(tmp_path), ["cat", "dog"])
    touch(tmp_path, "loose.jpg")  # not a labelled layout any more: unknown folders are unlabelled
    got = [(os.path.basename(p), y) for p, y in listed(str(tmp_path), ["cat", "dog"])]
    assert sorted(got) == [("1.jpg", 0), ("2.jpg", 1), ("3.jpg", -1), ("loose.jpg", -1)]


def test_a_labelled_tree_labels_by_its_top_folder_at_any_depth(tmp_path):
    touch(tmp_path, "cat/a/1.jpg", "cat/2.png", "dog/x/y/3.jpg", "dog/notes.txt")
    got = sorted((os.path.relpath(p, tmp_path), y) for p, y in listed(str(tmp_path), ["cat", "dog"]))
    assert got == [("cat/2.png", 0), ("cat/a/1.jpg", 0), ("dog/x/y/3.jpg", 1)]


def test_shards_have_stable_ids_and_hold_at_most_shard_size(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "SHARD_SIZE", 3)
    touch(tmp_path, *[f"a/{i}.jpg" for i in range(7)], *[f"b/{i}.jpg" for i in range(2)])
    source, units = listing.plan_listing(str(tmp_path), ["x"])
    shards = [listing.shard_of(r) for u in units for r in listing.list_unit(u, source)]
    assert [(s, len(p)) for s, p, _, _ in shards] == [("00000-000000", 3), ("00000-000001", 3),
                                                      ("00000-000002", 1), ("00001-000000", 2)]
    again = [listing.shard_of(r)[:2] for u in units for r in listing.list_unit(u, source)]
    assert again == [s[:2] for s in shards]


def test_nothing_to_score_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(listing.ListingError, match="no images found"):
        listing.plan_listing(str(tmp_path / "empty"), ["cat"])
    with pytest.raises(listing.ListingError, match="no such folder"):
        listing.plan_listing(str(tmp_path / "missing"), ["cat"])


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_manifest_is_streamed_into_shards_and_bad_rows_are_reported(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(listing, "SHARD_SIZE", 2)
    touch(tmp_path, "imgs/1.jpg", "imgs/2.jpg", "imgs/3.jpg")
    table = pa.table({"path": ["imgs/1.jpg", str(tmp_path / "imgs/2.jpg"), "imgs/3.jpg", "imgs/4.jpg"],
                      "label": ["cat", "dog", "emu", ""]})
    manifest = str(tmp_path / f"m.{kind}")
    if kind == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, manifest)
    else:
        pq.write_table(table, manifest)
    assert listing.is_manifest(manifest)
    source, units = listing.plan_listing(manifest, ["cat", "dog"])
    shards = [listing.shard_of(r) for r in listing.list_unit(units[0], source)]
    rows = [(os.path.basename(p), y) for _, ps, ys, _ in shards for p, y in zip(ps, ys, strict=True)]
    assert rows == [("1.jpg", 0), ("2.jpg", 1), ("4.jpg", -1)]  # relative paths resolve beside the manifest
    bad = [b for *_, bs in shards for b in bs]
    assert len(bad) == 1 and bad[0][0].endswith("3.jpg") and "unknown label 'emu'" in bad[0][1]
    assert all(s.startswith("m-") for s, *_ in shards)


def test_a_manifest_without_a_path_column_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\na.jpg,cat\n")
    source, units = listing.plan_listing(str(manifest), ["cat"])
    with pytest.raises(listing.ListingError, match="needs a `path` column"):
        list(listing.list_unit(units[0], source))
    assert storage.exists(str(manifest))


def test_a_symlink_loop_is_walked_once_across_parallel_listings(tmp_path):
    touch(tmp_path, "cat/1.jpg", "dog/2.jpg")
    os.symlink(tmp_path, tmp_path / "cat" / "loop")  # back to the top: the dog unit lists dog/
    got = sorted(os.path.relpath(p, tmp_path) for p, _ in listed(str(tmp_path), ["cat", "dog"]))
    assert got == ["cat/1.jpg", "dog/2.jpg"]


# ---- a flat folder or prefix: ranges of names, listed in parallel, no stat per file ---------------

def small_units(monkeypatch, shard_size, unit_shards, page_keys=None):
    """Shards and units (S3's and local ones) of a few images, so a few hundred files make many
    units (raising=False: the same test runs against a listing without these knobs, and fails on
    what it checks)."""
    monkeypatch.setattr(listing, "SHARD_SIZE", shard_size)
    monkeypatch.setattr(listing, "UNIT_SHARDS", unit_shards, raising=False)
    monkeypatch.setattr(listing, "LOCAL_RANGE_SHARDS", unit_shards, raising=False)
    if page_keys:
        monkeypatch.setattr(storage, "S3_PAGE_KEYS", page_keys, raising=False)


def shards_by_unit(images, classes=("x",)):
    """(units, [(shard id, paths)] in unit order) as the listing tasks would produce them."""
    source, units = listing.plan_listing(images, list(classes))
    return units, [listing.shard_of(r)[:2] for u in units for r in listing.list_unit(u, source)]


def count_stats(monkeypatch, root: str) -> list:
    """Every stat the listing makes from here on: a get_file_info of a path (not a FileSelector's
    listing) on any filesystem storage hands out, which is a stat (a HEAD on S3), and os.stat (what
    os.path.isfile and isdir call) of a path under `root`. A spy around the real objects: every call
    still happens."""
    calls, real_filesystem, real_stat = [], storage.filesystem, os.stat

    class Spy:
        def __init__(self, fs):
            self._fs = fs

        def get_file_info(self, what):
            if not isinstance(what, pafs.FileSelector):
                calls.append(what)
            return self._fs.get_file_info(what)

        def __getattr__(self, name):
            return getattr(self._fs, name)

    def filesystem(uri):
        fs, path = real_filesystem(uri)
        return Spy(fs), path

    def stat(path, *args, **kwargs):
        if str(path).startswith(root):
            calls.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(storage, "filesystem", filesystem)
    monkeypatch.setattr(os, "stat", stat)
    return calls


def test_a_flat_folder_is_cut_into_ranges_that_list_every_image_once_with_stable_ids(tmp_path, monkeypatch):
    small_units(monkeypatch, shard_size=16, unit_shards=4)  # 64 images a unit
    images = [f"img{i:05d}.jpg" for i in range(1000)]
    touch(tmp_path, *images, "notes.txt", ".hidden.jpg", *[f"sub/{i}.png" for i in range(5)])
    units, shards = shards_by_unit(str(tmp_path))
    ranges = [u for u in units if u["kind"] == "files"]
    assert [u["kind"] for u in units] == ["dir"] + ["files"] * 8  # the subfolder, then 8 ranges (the most)
    paths = [p for _, ps in shards for p in ps]
    assert sorted(paths) == sorted([str(tmp_path / n) for n in images] + [str(tmp_path / f"sub/{i}.png")
                                                                          for i in range(5)])
    assert len(set(paths)) == len(paths)  # every image once
    flat = [p for s, ps in shards if not s.startswith("00000-") for p in ps]
    assert flat == sorted(flat)  # ranges in order: the flat images as one sorted run
    assert len({s for s, _ in shards}) == len(shards) and all(len(ps) <= 16 for _, ps in shards)
    sizes = [sum(len(ps) for s, ps in shards if s.startswith(f"{u['unit']:05d}-")) for u in ranges]
    assert sum(sizes) == 1000 and max(sizes) < 2.5 * min(sizes)  # bounds from a sample: sizes alike
    assert shards_by_unit(str(tmp_path)) == (units, shards)  # the same ids, the same paths

    real = storage.scan_dir
    monkeypatch.setattr(storage, "scan_dir", lambda uri: reversed(list(real(uri))))  # another listing order
    assert shards_by_unit(str(tmp_path)) == (units, shards)


def test_listing_a_folder_stats_no_file(tmp_path, monkeypatch):
    small_units(monkeypatch, shard_size=16, unit_shards=4)
    touch(tmp_path, *[f"{i:04d}.jpg" for i in range(600)], *[f"cat/{i:04d}.jpg" for i in range(200)], "a.txt")
    calls = count_stats(monkeypatch, str(tmp_path))
    _, shards = shards_by_unit(str(tmp_path), ["cat"])
    assert sum(len(ps) for _, ps in shards) == 800
    assert len(calls) <= 3, calls[:10]  # IMAGES itself is looked at; its 801 files never are


@pytest.mark.integration
def test_a_flat_s3_prefix_is_cut_into_ranges_each_listing_only_its_own_pages(s3_server, bucket, monkeypatch):
    import boto3

    small_units(monkeypatch, shard_size=8, unit_shards=2, page_keys=7)  # 16 images a unit, 7 keys a page
    prefix = f"flat-{uuid.uuid4().hex[:8]}"
    images = [f"{i:04d}.jpg" for i in range(300)]
    names = [*images, "notes.txt", ".hidden.jpg", "0100.jpg.txt", "sub/a.jpg", "sub/b.jpg", ""]  # "": a marker
    s3 = boto3.client("s3")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: s3.put_object(Bucket=bucket, Key=f"{prefix}/{n}", Body=b"x"), names))
    root = f"s3://{bucket}/{prefix}"

    stats = count_stats(monkeypatch, root)
    calls: list[str] = []
    client = storage._s3_client() if hasattr(storage, "_s3_client") else None
    count = lambda model, **kwargs: calls.append(model.name)  # noqa: E731 - boto3's own event hook
    if client:
        client.meta.events.register("before-call.s3", count)
    try:
        source, units = listing.plan_listing(root, ["x"])
        planned = len(calls)
        shards = [listing.shard_of(r)[:2] for u in units for r in listing.list_unit(u, source)]
    finally:
        if client:
            client.meta.events.unregister("before-call.s3", count)

    ranges = [u for u in units if u["kind"] == "files"]
    assert len(ranges) == math.ceil(300 / 16) and [u["kind"] for u in units][0] == "dir"
    paths = [p for _, ps in shards for p in ps]
    assert sorted(paths) == sorted([f"{root}/{n}" for n in images] + [f"{root}/sub/a.jpg", f"{root}/sub/b.jpg"])
    assert len(set(paths)) == len(paths) and len({s for s, _ in shards}) == len(shards)
    assert shards_by_unit(root) == (units, shards)  # stable ids and paths
    assert len(stats) <= 3, stats[:10]  # no HEAD per key
    assert set(calls) == {"ListObjectsV2"}
    # Each range lists from its own bound and stops at the next: its own pages, never the prefix again.
    assert len(calls) - planned == sum(math.ceil(u["entries"] / 7) for u in ranges)
    assert planned == math.ceil((len(images) + 3 + 1) / 7)  # the driver's one pass: the images, 3 other files, sub/


def test_streamed_shards_are_the_units_shards_listed_in_parallel(tmp_path, monkeypatch):
    """The driver's listing threads, as predict runs them, give the shards the units give one by
    one (in any order), holding only a few at a time; an error listing a unit reaches the caller.
    (Shards of the real size; the driver cuts local ranges of 1,024 images, not 131,072.)"""
    monkeypatch.setattr(listing, "LOCAL_RANGE_SHARDS", 2, raising=False)
    touch(tmp_path, *[f"{i:05d}.jpg" for i in range(3000)], *[f"dog/{i}.jpg" for i in range(10)])
    source, units = listing.plan_listing(str(tmp_path), ["dog"])
    assert [u["kind"] for u in units] == ["dir", "files", "files", "files"]
    got = sorted(listing.shard_of(r)[:3] for r in listing.stream_shards(units, source, ahead=2))
    want = sorted(listing.shard_of(r)[:3] for u in units for r in listing.list_unit(u, source))
    assert got == want and sum(len(p) for _, p, _ in got) == 3010 and len(got) > len(units)
    assert {y for _, _, ys in got for y in ys} == {0, -1}  # dog/ labelled, the flat images not

    def broken(row, source):
        raise listing.ListingError("a unit that can't be listed")

    monkeypatch.setattr(listing, "list_unit", broken)
    with pytest.raises(listing.ListingError, match="can't be listed"):
        list(listing.stream_shards(units, source))


def test_a_local_folder_is_listed_by_two_threads_at_most_object_storage_by_eight():
    """A local listing is fast and needs few; S3's waits on requests, so more run side by side."""
    from raycat.shell.listing import listing_threads

    assert [listing_threads(n, "/data/images") for n in (1, 2, 10)] == [1, 2, 2]
    assert [listing_threads(n, "s3://b/images") for n in (1, 5, 10)] == [1, 5, 8]


def test_a_consumer_that_fails_mid_listing_leaves_nothing_that_holds_the_process_at_exit(tmp_path):
    """A run that fails while shards are still being listed (a scoring actor lost for good, Ctrl-C)
    must end with its status: the listing threads stop once their consumer is gone, even when the
    generator is never closed (a traceback keeps it alive to the end). They used to wait on the
    full queue for ever, and Python's exit joined them."""
    import subprocess
    import sys
    import textwrap

    touch(tmp_path, *[f"c{k}/{i:05d}.jpg" for k in range(4) for i in range(2000)])
    script = textwrap.dedent(f"""
        import sys
        from raycat.shell import listing
        source, units = listing.plan_listing({str(tmp_path)!r}, ["c0", "c1", "c2", "c3"])
        rows = listing.stream_shards(units, source, ahead=1)
        next(rows)
        KEEP = [rows]  # never closed: alive until the interpreter ends
        sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
