"""Integration: file bytes on Ray Data from a local folder and the same folder on the S3 server,
and `check_files` finding every unreadable one."""

import os

import pytest
from images import bad_files

from raycat.datasets import make_shapes_dataset
from raycat.edge import storage
from raycat.edge.layout import scan_layout
from raycat.shell import pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    make_shapes_dataset(root, n_train=8, n_valid=4, seed=1)
    for name, data in bad_files().items():
        with open(os.path.join(root, "train", "circle", name), "wb") as f:
            f.write(data)
    return root


def test_local_and_s3_stream_the_same_bytes_and_find_the_same_bad_files(ray_local, bucket, shapes):
    uri = f"s3://{bucket}/shapes"
    storage.upload_tree(shapes, uri)
    local, remote = scan_layout(shapes), scan_layout(uri)
    assert local.classes == remote.classes
    assert local.train.labels == remote.train.labels and len(local.valid) == len(remote.valid)

    def rows(lay, seed):
        ds = pipeline.files_dataset(lay.train.paths, lay.train.labels, shuffle_seed=seed)
        return [(os.path.basename(r["path"]), r["label"], r["data"], r["error"]) for r in ds.iter_rows()]

    a, b = rows(local, 0), rows(remote, 0)
    assert sorted(a) == sorted(b) and len(a) == len(local.train)
    assert all(err == "" for *_, err in a)
    assert [r[0] for r in a] != sorted(r[0] for r in a)  # the seeded shuffle mixes the classes
    bad_a = pipeline.check_files(local.train.paths, local.train.labels, 32)
    bad_b = pipeline.check_files(remote.train.paths, remote.train.labels, 32)
    assert [os.path.basename(p) for p, _ in bad_a] == [os.path.basename(p) for p, _ in bad_b] == sorted(bad_files())
    assert all(reason for _, reason in bad_a)


def test_a_file_that_vanishes_is_a_row_with_an_error_not_a_failure(ray_local, tmp_path):
    good = make_shapes_dataset(str(tmp_path / "d"), classes=("circle", "square"), n_train=2, n_valid=1, seed=0)
    lay = scan_layout(good)
    paths = lay.train.paths + [str(tmp_path / "gone.jpg")]
    got = {os.path.basename(r["path"]): r["error"] for r in pipeline.files_dataset(paths, [0] * len(paths)).iter_rows()}
    assert got["gone.jpg"].startswith("unreadable:") and sum(e == "" for e in got.values()) == len(lay.train)
