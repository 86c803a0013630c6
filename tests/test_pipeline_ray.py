"""Integration: the Ray Data pipeline over a local folder and the same folder on the S3 server."""

import os

import pytest
import torch
from images import bad_files

from raycat import pipeline, storage
from raycat.augment import AugmentSpec
from raycat.datasets import make_shapes_dataset
from raycat.layout import scan_layout

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    make_shapes_dataset(root, n_train=8, n_valid=4, seed=1)
    for name, data in bad_files().items():
        with open(os.path.join(root, "train", "circle", name), "wb") as f:
            f.write(data)
    return root


def test_local_and_s3_give_the_same_labels_and_counts(ray_local, bucket, shapes):
    uri = f"s3://{bucket}/shapes"
    storage.upload_tree(shapes, uri)
    local, remote = scan_layout(shapes), scan_layout(uri)
    assert local.classes == remote.classes
    assert local.train.labels == remote.train.labels and len(local.valid) == len(remote.valid)

    a = pipeline.cache_images(local.train.paths, local.train.labels, 32)
    b = pipeline.cache_images(remote.train.paths, remote.train.labels, 32)
    n_bad = len(bad_files())
    assert a.count == b.count == len(local.train) - n_bad
    assert [os.path.basename(p) for p, _ in a.skipped] == [os.path.basename(p) for p, _ in b.skipped]
    assert len(a.skipped) == n_bad and all(reason for _, reason in a.skipped)
    labels_a = sorted(r["label"] for r in a.dataset.select_columns(["label"]).take_all())
    labels_b = sorted(r["label"] for r in b.dataset.select_columns(["label"]).take_all())
    assert labels_a == labels_b


def test_batches_are_normalised_float_tensors_and_augmentation_changes_each_epoch(ray_local, shapes):
    lay = scan_layout(shapes)
    cached = pipeline.cache_images(lay.valid.paths, lay.valid.labels, 32)
    aug = cached.augmented(AugmentSpec("side_on", max_zoom=1.3))
    epochs = []
    for _ in range(2):
        batches = list(aug.iter_torch_batches(batch_size=8, collate_fn=pipeline.collate_normalized))
        x = torch.cat([b["image"] for b in batches])
        assert x.shape == (len(lay.valid), 3, 32, 32) and x.dtype == torch.float32
        assert -3 < x.mean().item() < 3 and 0.3 < x.std().item() < 3  # ImageNet-normalised range
        epochs.append(x)
    assert not torch.allclose(epochs[0], epochs[1])  # fresh draws every pass
    plain = torch.cat([b["image"] for b in cached.plain().iter_torch_batches(
        batch_size=8, collate_fn=pipeline.collate_normalized)])
    again = torch.cat([b["image"] for b in cached.plain().iter_torch_batches(
        batch_size=8, collate_fn=pipeline.collate_normalized)])
    assert plain.dtype == torch.float32 and plain.shape == (len(lay.valid), 3, 32, 32)
    assert torch.equal(plain, again)  # the validation view is deterministic
