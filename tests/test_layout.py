import os

import pytest
from images import encode, gradient_rgb

from raycat.layout import LayoutError, is_image_name, scan_layout

JPG = encode(gradient_rgb(), "JPEG")


def make(root, files):
    for rel in files:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(JPG)
    return str(root)


def test_classes_sorted_and_labels_follow_them(tmp_path):
    root = make(tmp_path, ["train/dog/1.jpg", "train/cat/1.jpg", "train/cat/2.PNG", "valid/dog/1.jpg",
                           "valid/cat/1.jpg", "train/cat/notes.txt", "test/a.jpg", "test/sub/b.jpeg"])
    lay = scan_layout(root)
    assert lay.classes == ["cat", "dog"]
    assert [os.path.basename(p) for p in lay.train.paths] == ["1.jpg", "2.PNG", "1.jpg"]
    assert lay.train.labels == [0, 0, 1] and lay.valid.labels == [0, 1]
    assert len(lay.test) == 2 and lay.train.counts(2) == [2, 1]


@pytest.mark.parametrize("files,message", [
    (["valid/a/1.jpg", "valid/b/1.jpg"], r"no train/ folder"),
    (["train/a/1.jpg", "train/b/1.jpg"], r"no valid/ folder"),
    (["train/a/1.jpg", "train/b/1.jpg", "valid/a/1.jpg", "valid/c/1.jpg"],
     r"different classes \(only in train/: b; only in valid/: c\)"),
    (["train/a/1.jpg", "valid/a/1.jpg"], r"only one class \(a\)"),
    (["train/a/1.jpg", "train/b/1.jpg", "valid/a/1.jpg", "valid/b/x.txt"], r"valid/b: empty class folder"),
    (["train/a/x.txt", "valid/a/y.txt"], r"no images found"),
])
def test_layout_errors_name_the_problem(tmp_path, files, message):
    root = make(tmp_path, files)
    with pytest.raises(LayoutError, match=message):
        scan_layout(root)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(LayoutError, match="nowhere: no such folder"):
        scan_layout(str(tmp_path / "nowhere"))


def test_image_extensions_any_case():
    assert all(is_image_name(n) for n in ["a.jpg", "a.JPEG", "a.Png", "a.bmp", "a.gif", "a.webp", "a.TIF", "a.tiff"])
    assert not any(is_image_name(n) for n in ["a.txt", "jpg", "a.jpg.bak"])


def test_class_names_with_spaces_and_unicode(tmp_path):
    root = make(tmp_path, ["train/golden retriever/1.jpg", "train/chat noir é/1.jpg",
                           "valid/golden retriever/1.jpg", "valid/chat noir é/1.jpg"])
    assert scan_layout(root).classes == ["chat noir é", "golden retriever"]


def test_symlink_loop_does_not_hang(tmp_path):
    root = make(tmp_path, ["train/a/1.jpg", "train/b/1.jpg", "valid/a/1.jpg", "valid/b/1.jpg"])
    os.symlink(os.path.join(root, "train"), os.path.join(root, "train", "a", "loop"))
    lay = scan_layout(root)
    assert lay.train.counts(2)[1] == 1


def test_a_relative_root_reads_like_an_absolute_one(tmp_path, monkeypatch):
    """The demo's default OUT is relative (raycat-demo/): its dataset must scan, and predict must
    label its images (a relative root once left every class folder looking empty)."""
    from test_listing import listed

    make(tmp_path / "d", ["train/cat/1.jpg", "train/dog/1.jpg", "valid/cat/1.jpg", "valid/dog/1.jpg"])
    monkeypatch.chdir(tmp_path)
    lay = scan_layout("d")
    assert lay.classes == ["cat", "dog"] and lay.train.labels == [0, 1]
    assert [y for _, y in listed("d/valid", ["cat", "dog"])] == [0, 1]
    assert [y for _, y in listed("./d/valid/", ["cat", "dog"])] == [0, 1]
