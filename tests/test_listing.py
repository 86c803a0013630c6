"""What predict scores: folders, prefixes and manifests cut into shards, with labels (no Ray)."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raycat import listing, storage


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


def test_shards_an_earlier_run_scored_are_left_out_by_the_listing(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "SHARD_SIZE", 2)
    touch(tmp_path, *[f"a/{i}.jpg" for i in range(5)])
    source, units = listing.plan_listing(str(tmp_path), ["x"])
    rows = list(listing.list_unit(units[0], source, skip=frozenset({"00000-000001"})))
    assert [r["shard"] for r in rows] == ["00000-000000", "00000-000002"]
