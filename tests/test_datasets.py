import hashlib

import numpy as np
from PIL import Image

from raycat.datasets import make_shapes_dataset
from raycat.edge.layout import scan_layout


def _digest(paths):
    return hashlib.sha256(b"".join(open(p, "rb").read() for p in paths)).hexdigest()


def test_generator_writes_the_layout_deterministically(tmp_path):
    a = make_shapes_dataset(str(tmp_path / "a"), n_train=5, n_valid=3, n_test=4, seed=3)
    b = make_shapes_dataset(str(tmp_path / "b"), n_train=5, n_valid=3, n_test=4, seed=3)
    la, lb = scan_layout(a), scan_layout(b)
    assert len(la.classes) >= 3 and la.classes == lb.classes
    assert la.train.counts(len(la.classes)) == [5] * len(la.classes)
    assert la.valid.counts(len(la.classes)) == [3] * len(la.classes)
    assert len(la.test) == 4
    assert _digest(la.train.paths) == _digest(lb.train.paths)


def test_images_vary_in_size_colour_and_background(tmp_path):
    lay = scan_layout(make_shapes_dataset(str(tmp_path), n_train=12, n_valid=1, seed=0))
    imgs = [Image.open(p).convert("RGB") for p in lay.train.paths]
    assert len({im.size for im in imgs}) > 5
    means = np.array([np.asarray(im).reshape(-1, 3).mean(0) for im in imgs])
    assert means.std(axis=0).min() > 10  # backgrounds differ in every channel
